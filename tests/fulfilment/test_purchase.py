"""A buyer's whole path through the HTTP API: order, pay, see masked items, reveal."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import text

from kami import fulfilment, orders
from kami.kernel.clock import utcnow
from tests.conftest import add_keys, make_sku, sandbox_body, sign

ORDER = {"sku": "SKU-1", "quantity": 2, "email": "buyer@example.com", "gateway": "sandbox"}


def _pay(client: TestClient, order_no: str, amount: int, trade_no: str | None = None) -> None:
    body = sandbox_body(order_no, amount, trade_no=trade_no)
    r = client.post(
        "/api/v1/payments/sandbox/notify", content=body, headers={"X-Sandbox-Signature": sign(body)}
    )
    assert r.status_code == 200, r.text


def test_purchase_delivers_and_reveals(client: TestClient, shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, price=1250)
    add_keys(shop, sku, ["AAAA-BBBB-CCCC-0001", "AAAA-BBBB-CCCC-0002", "AAAA-BBBB-CCCC-0003"])

    r = client.post("/api/v1/orders", json=ORDER)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["status"] == "pending"
    assert created["amount_minor"] == 2500 and created["currency"] == "CNY"
    assert created["payment"]["url"].endswith(f"/pay/sandbox/{created['order_no']}")
    assert len(created["access_token"]) >= 43  # 256 bits in base64url
    auth = {"Authorization": f"Bearer {created['access_token']}"}

    pending = client.get(f"/api/v1/orders/{created['order_no']}", headers=auth).json()
    assert pending["status"] == "pending" and pending["items"] == []

    _pay(client, created["order_no"], 2500)
    order = client.get(f"/api/v1/orders/{created['order_no']}", headers=auth).json()
    assert order["status"] == "delivered"
    assert [i["masked"] for i in order["items"]] == ["AAAA-****-****-0001", "AAAA-****-****-0002"]

    r = client.post(
        f"/api/v1/orders/{created['order_no']}/reveal", headers={**auth, "User-Agent": "t/1"}
    )
    assert r.status_code == 200
    assert [i["card"] for i in r.json()["items"]] == ["AAAA-BBBB-CCCC-0001", "AAAA-BBBB-CCCC-0002"]
    assert r.headers["cache-control"] == "no-store"
    detail = fulfilment.admin_detail(shop, created["order_no"])
    assert len(detail.reveals) == 1 and detail.reveals[0].user_agent == "t/1"
    assert [e.event for e in detail.timeline][:2] == ["created", "notification_accepted"]


def test_order_access_needs_the_token(client: TestClient, shop: fulfilment.Shop) -> None:
    sku = make_sku(shop)
    add_keys(shop, sku, ["K-1", "K-2", "K-3"])
    created = client.post("/api/v1/orders", json=ORDER).json()
    no = created["order_no"]
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": created["access_token"]},
    ):
        r = client.get(f"/api/v1/orders/{no}", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "/problems/invalid-order-token"
        assert client.post(f"/api/v1/orders/{no}/reveal", headers=headers).status_code == 401
    # Another order's token does not open this one.
    other = client.post("/api/v1/orders", json={**ORDER, "quantity": 1}).json()
    r = client.get(
        f"/api/v1/orders/{no}", headers={"Authorization": f"Bearer {other['access_token']}"}
    )
    assert r.status_code == 401


def test_reveal_before_payment_is_refused(client: TestClient, shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop), ["K-1", "K-2"])
    created = client.post("/api/v1/orders", json=ORDER).json()
    r = client.post(
        f"/api/v1/orders/{created['order_no']}/reveal",
        headers={"Authorization": f"Bearer {created['access_token']}"},
    )
    assert r.status_code == 409 and r.json()["type"] == "/problems/not-delivered"


def test_idempotency_key(client: TestClient, shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop), ["K-1", "K-2", "K-3"])
    first = client.post("/api/v1/orders", json=ORDER, headers={"Idempotency-Key": "abc"})
    again = client.post("/api/v1/orders", json=ORDER, headers={"Idempotency-Key": "abc"})
    assert first.status_code == again.status_code == 201
    assert first.json()["order_no"] == again.json()["order_no"]
    assert first.json()["access_token"] == again.json()["access_token"]
    other = client.post(
        "/api/v1/orders", json={**ORDER, "quantity": 1}, headers={"Idempotency-Key": "abc"}
    )
    assert other.status_code == 409
    assert other.json()["type"] == "/problems/idempotency-key-reused"
    with shop.db.read() as s:
        assert len(orders.list_orders(s)) == 1


def test_order_validation_problems(client: TestClient, shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop, max_quantity=3), ["K-1"])
    cases = [
        ({**ORDER, "sku": "NOPE"}, 404, "/problems/not-found"),
        ({**ORDER, "quantity": 4}, 422, "/problems/quantity-out-of-range"),
        ({**ORDER, "quantity": 2}, 409, "/problems/sold-out"),
        ({**ORDER, "gateway": "paypal"}, 422, "/problems/unknown-gateway"),
        ({**ORDER, "email": "not-an-email"}, 422, "/problems/invalid-input"),
        ({**ORDER, "extra": 1}, 422, "/problems/invalid-input"),
    ]
    for body, status, kind in cases:
        r = client.post("/api/v1/orders", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["type"] == kind, (body, r.json())
    bad = client.post("/api/v1/orders", json={**ORDER, "email": "x"}).json()
    assert bad["where"] == "email"


def test_unpaid_orders_expire(client: TestClient, shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop), ["K-1", "K-2"])
    created = client.post("/api/v1/orders", json=ORDER).json()
    assert fulfilment.expire_orders(shop) == 0
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET expires_at = :t"), {"t": utcnow() - timedelta(seconds=1)}
        )
    assert fulfilment.expire_orders(shop) == 1
    with shop.db.read() as s:
        assert orders.get_order(s, created["order_no"]).status == "expired"
    # Money that still arrives is honoured: a late payment is delivered, not lost.
    _pay(client, created["order_no"], created["amount_minor"])
    with shop.db.read() as s:
        assert orders.get_order(s, created["order_no"]).status == "delivered"


def test_sandbox_pay_page(client: TestClient, shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop), ["K-1", "K-2"])
    created = client.post("/api/v1/orders", json=ORDER).json()
    page = client.get(f"/pay/sandbox/{created['order_no']}")
    assert page.status_code == 200 and "25.00" not in page.text and created["order_no"] in page.text
    assert client.post(f"/pay/sandbox/{created['order_no']}").json()["verdict"] == "accepted"
    with shop.db.read() as s:
        assert orders.get_order(s, created["order_no"]).status == "delivered"
