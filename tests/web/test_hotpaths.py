"""The purchase's three requests answered in front of FastAPI's router (kami.web.hotpaths): the
same answers as FastAPI gives, and anything out of the ordinary handed on to FastAPI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from kami import bootstrap, fulfilment
from kami.web.app import create_app
from kami.web.hotpaths import HotPaths
from tests.conftest import add_keys, make_sku, run_async, sandbox_body, sign

ORDER = {"sku": "SKU-1", "quantity": 1, "email": "buyer@example.com", "gateway": "sandbox"}
# What must not differ between the two answers; the date differs by the clock only.
HEADERS = ("content-type", "location", "cache-control", "retry-after", "www-authenticate")


@pytest.fixture
def both(container: bootstrap.Container) -> Iterator[tuple[TestClient, TestClient]]:
    """The shop as it runs, and the same shop with FastAPI answering everything."""
    plain = create_app(container, worker=False)
    plain.user_middleware = [m for m in plain.user_middleware if m.cls is not HotPaths]
    with (
        TestClient(create_app(container, worker=False)) as fast,
        TestClient(plain) as slow,
    ):
        yield fast, slow


def _same(fast: httpx.Response, slow: httpx.Response, *, exact: bool = True) -> None:
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    for name in HEADERS:
        mine, theirs = fast.headers.get(name), slow.headers.get(name)
        if name == "location" and not exact and mine and theirs:  # the new order's own number
            mine, theirs = mine.rsplit("/", 1)[0], theirs.rsplit("/", 1)[0]
        assert mine == theirs, name
    if exact:
        assert fast.content == slow.content
    else:  # a new order each: same fields, other numbers
        assert fast.json().keys() == slow.json().keys()


def _order(client: TestClient, **changes: Any) -> httpx.Response:
    return client.post("/api/v1/orders", json={**ORDER, **changes})


def test_orders_are_answered_as_fastapi_answers_them(
    both: tuple[TestClient, TestClient], shop: fulfilment.Shop
) -> None:
    fast, slow = both
    add_keys(shop, make_sku(shop), [f"K-{n}" for n in range(20)])
    _same(_order(fast, email="a@example.com"), _order(slow, email="b@example.com"), exact=False)
    json_type = {"content-type": "application/json"}
    cases: list[tuple[bytes, dict[str, str]]] = [
        (b'{"sku": "SKU-1"', json_type),  # not JSON
        (b"", json_type),
        (json.dumps({**ORDER, "quantity": 0}).encode(), json_type),
        (json.dumps({**ORDER, "extra": 1}).encode(), json_type),
        (json.dumps({**ORDER, "email": "a\\u0000b@example.com"}).encode(), json_type),
        (json.dumps(ORDER).encode(), {"content-type": "text/plain"}),
        (json.dumps(ORDER).encode(), {}),
        (json.dumps(ORDER).encode(), {**json_type, "idempotency-key": "k" * 129}),
        (json.dumps({**ORDER, "sku": "NOPE"}).encode(), json_type),
        (json.dumps({**ORDER, "gateway": "nope"}).encode(), json_type),
        (json.dumps({**ORDER, "quantity": 11}).encode(), json_type),
    ]
    for body, headers in cases:
        mine = fast.post("/api/v1/orders", content=body, headers=headers)
        theirs = slow.post("/api/v1/orders", content=body, headers=headers)
        _same(mine, theirs, exact=mine.status_code != 201)  # FastAPI takes JSON of any type
    replayed = {"idempotency-key": "same-key"}
    first = fast.post("/api/v1/orders", json=ORDER, headers=replayed)
    _same(first, fast.post("/api/v1/orders", json=ORDER, headers=replayed))
    _same(first, slow.post("/api/v1/orders", json=ORDER, headers=replayed))


def test_payments_and_reveals_are_answered_as_fastapi_answers_them(
    both: tuple[TestClient, TestClient], shop: fulfilment.Shop
) -> None:
    fast, slow = both
    add_keys(shop, make_sku(shop), [f"K-{n}" for n in range(20)])
    a, b = _order(fast, email="a@example.com").json(), _order(slow, email="b@example.com").json()

    def pay(client: TestClient, order: dict[str, Any], **kw: Any) -> httpx.Response:
        body = sandbox_body(order["order_no"], order["amount_minor"], **kw)
        return client.post(
            "/api/v1/payments/sandbox/notify",
            content=body,
            headers={"X-Sandbox-Signature": sign(body)},
        )

    def reveal(client: TestClient, order: dict[str, Any], token: str | None = None) -> Any:
        bearer = {"Authorization": f"Bearer {token or order['access_token']}"}
        return client.post(f"/api/v1/orders/{order['order_no']}/reveal", headers=bearer)

    _same(reveal(fast, a), reveal(fast, a))  # not delivered yet
    _same(reveal(fast, a, "wrong"), reveal(slow, b, "wrong"))
    _same(pay(fast, a), pay(slow, b))
    _same(pay(fast, a), pay(slow, b))  # the duplicate is acknowledged too
    _same(pay(fast, a, trade_no="T-other", currency="USD"), pay(slow, b, currency="USD"))
    for body, headers in [
        (b"{}", {"X-Sandbox-Signature": "00"}),
        (b"not json", {"X-Sandbox-Signature": sign(b"not json")}),
    ]:
        _same(
            fast.post("/api/v1/payments/sandbox/notify", content=body, headers=headers),
            slow.post("/api/v1/payments/sandbox/notify", content=body, headers=headers),
        )
    for path in ("/api/v1/payments/no-such/notify", "/api/v1/payments/b%20d/notify"):
        _same(fast.post(path, content=b"x"), slow.post(path, content=b"x"))
        _same(fast.get(path + "?a=1"), slow.get(path + "?a=1"))
    got_a, got_b = reveal(fast, a), reveal(slow, b)
    _same(got_a, got_b, exact=False)
    assert got_a.json()["items"][0]["card"] != got_b.json()["items"][0]["card"]
    # Answered by the fast path, the security headers are there all the same.
    assert "default-src 'self'" in got_a.headers["content-security-policy"]


class _FastAPIStandIn:
    """Stands where FastAPI's router is: records what it was handed, answers 299."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _send_through(
    app: FastAPI, hot: HotPaths, path: str, body: bytes, headers: dict[str, str]
) -> int:
    chunks = [body[:7], body[7:]]  # in two messages, as a client may send it

    async def main() -> int:
        scope: Scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 5000),
            "app": app,
            "state": {},
        }
        status: list[int] = []

        async def receive() -> Message:
            chunk = chunks.pop(0) if chunks else b""
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await hot(scope, receive, send)
        return status[0]

    return run_async(main)


def test_the_plain_case_is_answered_in_front_and_the_rest_handed_on_unread(
    container: bootstrap.Container, shop: fulfilment.Shop
) -> None:
    add_keys(shop, make_sku(shop), ["K-1"])
    app = create_app(container, worker=False)
    behind = _FastAPIStandIn()
    hot = HotPaths(behind)
    json_type = {"content-type": "application/json"}
    plain = json.dumps(ORDER).encode()
    assert _send_through(app, hot, "/api/v1/orders", plain, json_type) == 201
    assert behind.bodies == []
    odd = json.dumps({**ORDER, "quantity": "many"}).encode()
    assert _send_through(app, hot, "/api/v1/orders", odd, json_type) == 299
    too_big = json.dumps({**ORDER, "buyer_input": {"note": "x" * 70_000}}).encode()
    assert _send_through(app, hot, "/api/v1/orders", too_big, json_type) == 299
    assert behind.bodies == [odd, too_big]  # every byte, once
    assert _send_through(app, hot, "/api/v1/other", plain, json_type) == 299
