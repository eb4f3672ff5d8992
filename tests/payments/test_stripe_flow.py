"""Stripe end to end through the shop, on both databases: the SDK signs, a loopback API answers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import text

from kami import bootstrap, fulfilment, orders, payments
from kami.config import Settings, StripeConfig
from kami.web.app import create_app
from tests.conftest import add_keys, make_sku
from tests.payments.test_stripe import (
    API_KEY,
    SECRET,
    FakeStripe,
    event,
    serve_fake,
    session,
    signed,
)

# Stripe's own example session id is 66 characters: longer than a 64-character column.
LONG_ID = "cs_test_" + "a1" * 31


@pytest.fixture
def stripe_api() -> Iterator[tuple[str, type[FakeStripe]]]:
    with serve_fake() as served:
        yield served


@pytest.fixture
def stripe_shop(
    settings: Settings, stripe_api: tuple[str, type[FakeStripe]]
) -> Iterator[tuple[TestClient, fulfilment.Shop]]:
    config = StripeConfig(
        secret_key=SecretStr(API_KEY), webhook_secret=SecretStr(SECRET), api_base=stripe_api[0]
    )
    container = bootstrap.build(settings.model_copy(update={"stripe": config}))
    try:
        with TestClient(create_app(container, worker=False)) as client:
            yield client, container.shop
    finally:
        container.close()


def _order(client: TestClient, email: str) -> dict[str, Any]:
    r = client.post(
        "/api/v1/orders", json={"sku": "USD-1", "quantity": 1, "email": email, "gateway": "stripe"}
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _webhook(client: TestClient, body: str, header: str | None = None) -> Any:
    return client.post(
        "/api/v1/payments/stripe/notify",
        content=body.encode(),
        headers={"Stripe-Signature": header or signed(body), "Content-Type": "application/json"},
    )


def _status(shop: fulfilment.Shop, order_no: str) -> str:
    with shop.db.read() as s:
        return orders.get_order(s, order_no).status


def test_checkout_webhook_and_rejections(stripe_shop: tuple[TestClient, fulfilment.Shop]) -> None:
    client, shop = stripe_shop
    add_keys(shop, make_sku(shop, "USD-1", price=1990, currency="USD"), ["S-1", "S-2", "S-3"])
    a = _order(client, "a@example.com")
    assert a["payment"]["url"].startswith("https://pay.test/")
    paid = event(id=LONG_ID, client_reference_id=a["order_no"], amount_total=1990, currency="usd")
    assert _webhook(client, paid).status_code == 200
    assert _status(shop, a["order_no"]) == "delivered"
    assert _webhook(client, paid).status_code == 200  # Stripe's duplicate: acknowledged, no-op

    b = _order(client, "b@example.com")
    cheap = event(id="cs_test_b", client_reference_id=b["order_no"], amount_total=1, currency="usd")
    r = _webhook(client, cheap)
    assert r.status_code == 400 and r.json()["type"] == "/problems/amount-mismatch"
    future = event(
        id="cs_test_b", client_reference_id=b["order_no"], amount_total=1990, currency="usd"
    )
    r = _webhook(client, future, signed(future, timestamp=int(time.time()) + 3600))
    assert r.status_code == 400 and r.json()["type"] == "/problems/stale-timestamp"
    other_key = event(
        id="cs_test_b", client_reference_id=b["order_no"], amount_total=1990, currency="usd"
    )
    r = _webhook(client, other_key, signed(other_key, secret="whsec_not_the_endpoint_secret_000"))
    assert r.status_code == 400 and r.json()["type"] == "/problems/bad-signature"
    # Not paid yet (a delayed payment method): acknowledged so Stripe stops, nothing delivered.
    unpaid = event(
        id="cs_test_b",
        client_reference_id=b["order_no"],
        amount_total=1990,
        currency="usd",
        payment_status="unpaid",
    )
    assert _webhook(client, unpaid).status_code == 200
    assert _status(shop, b["order_no"]) == "pending"
    with shop.db.read() as s:
        # Forged or stale ones are kept too, without an order number: an unverified body is
        # not trusted even for that.
        reasons = sorted(str(n.reason) for n in payments.list_notifications(s) if n.reason)
        sold = s.execute(text("SELECT count(*) FROM vault_key WHERE status='sold'")).scalar_one()
    assert reasons == ["amount-mismatch", "bad-signature", "not-paid-status", "stale-timestamp"]
    assert sold == 1


def test_lost_webhook_is_found_by_query(
    stripe_shop: tuple[TestClient, fulfilment.Shop], stripe_api: tuple[str, type[FakeStripe]]
) -> None:
    client, shop = stripe_shop
    add_keys(shop, make_sku(shop, "USD-1", price=1990, currency="USD"), ["S-1"])
    o = _order(client, "lost@example.com")
    stripe_api[1].sessions.append(
        session(id=LONG_ID, client_reference_id=o["order_no"], amount_total=1990, currency="usd")
    )
    result = fulfilment.sync_order(shop, o["order_no"])
    assert result.found and result.status == "delivered"


def test_50_concurrent_duplicate_webhooks_deliver_once(
    stripe_shop: tuple[TestClient, fulfilment.Shop],
) -> None:
    _client, shop = stripe_shop
    add_keys(shop, make_sku(shop, "USD-1", price=1990, currency="USD"), ["S-1", "S-2", "S-3"])
    placed = fulfilment.place_order(
        shop, orders.OrderIn(sku="USD-1", quantity=2, email="d@example.com", gateway="stripe")
    )
    body = event(
        id=LONG_ID, client_reference_id=placed.order.order_no, amount_total=3980, currency="usd"
    )
    header = signed(body)
    note = payments.RawNotification(
        gateway="stripe",
        method="POST",
        headers={"stripe-signature": header},
        query={},
        body=body.encode(),
    )
    start = threading.Barrier(50, timeout=30)

    def send(_: int) -> str:
        start.wait()
        return fulfilment.handle_notification(shop, note).verdict

    with ThreadPoolExecutor(50) as pool:
        verdicts = list(pool.map(send, range(50)))
    assert verdicts.count("accepted") == 1 and verdicts.count("duplicate") == 49
    with shop.db.read() as s:
        assert s.execute(text("SELECT count(*) FROM delivery_item")).scalar_one() == 2
        assert (
            s.execute(text("SELECT count(*) FROM vault_key WHERE status='sold'")).scalar_one() == 2
        )


def _paid(
    client: TestClient, shop: fulfilment.Shop, api: type[FakeStripe], email: str = "r@example.com"
) -> str:
    add_keys(shop, make_sku(shop, "USD-1", price=1990, currency="USD"), ["S-1", "S-2"])
    o = _order(client, email)
    paid = session(
        id=LONG_ID,
        client_reference_id=o["order_no"],
        amount_total=1990,
        currency="usd",
        payment_intent="pi_3Refund",
    )
    api.sessions.append(paid)
    body = event(**paid)
    assert _webhook(client, body).status_code == 200
    assert _status(shop, o["order_no"]) == "delivered"
    return str(o["order_no"])


def test_refund_round_trip_and_retry_refunds_once(
    stripe_shop: tuple[TestClient, fulfilment.Shop], stripe_api: tuple[str, type[FakeStripe]]
) -> None:
    client, shop = stripe_shop
    api = stripe_api[1]
    order_no = _paid(client, shop, api)
    part = fulfilment.request_refund(
        shop, order_no, amount_minor=500, reason="late", request_key="p1"
    )
    assert part.status == "succeeded" and part.order_status == "partially_refunded"
    (refund,) = api.refunds
    assert refund["amount"] == 500 and refund["payment_intent"] == "pi_3Refund"
    assert refund["metadata"]["kami_refund_no"] == part.refund_no
    posted = [r for r in api.requests if r["method"] == "POST" and r["path"] == "/v1/refunds"]
    assert posted[0]["headers"]["Idempotency-Key"] == f"kami-refund-{part.refund_no}"
    # The same request again: found by its key in Kami, nothing sent to Stripe.
    again = fulfilment.request_refund(
        shop, order_no, amount_minor=500, reason="late", request_key="p1"
    )
    assert again.refund_no == part.refund_no and len(api.refunds) == 1
    # Someone refunded 1000 in Stripe's dashboard and the event has not arrived yet: Stripe
    # refuses the rest as too much, a definite failure in Stripe's words; nothing is committed.
    api.refunds.append(
        {"id": "re_dash", "amount": 1000, "payment_intent": "pi_3Refund", "metadata": {}}
    )
    refused = fulfilment.request_refund(
        shop, order_no, amount_minor=None, reason="all", request_key="p2"
    )
    assert refused.status == "failed" and refused.order_status == "partially_refunded"
    assert refused.refund.detail and "greater than unrefunded amount" in refused.refund.detail
    rest = fulfilment.request_refund(
        shop, order_no, amount_minor=490, reason="rest", request_key="p3"
    )
    assert rest.status == "succeeded" and len(api.refunds) == 3


def test_lost_answer_is_recovered_from_stripe_not_refunded_twice(
    stripe_shop: tuple[TestClient, fulfilment.Shop], stripe_api: tuple[str, type[FakeStripe]]
) -> None:
    client, shop = stripe_shop
    api = stripe_api[1]
    order_no = _paid(client, shop, api)
    api.fail_with = 500  # Stripe is down: nothing happens there, the outcome is unknown here
    out = fulfilment.request_refund(shop, order_no, amount_minor=None, reason="x", request_key="k")
    assert out.status == "requested" and api.refunds == []
    api.fail_with = None
    # Stripe took it after all (e.g. the answer was lost): the sweep finds it by its metadata.
    api.refunds.append(
        {
            "id": "re_lost",
            "object": "refund",
            "amount": 1990,
            "currency": "usd",
            "payment_intent": "pi_3Refund",
            "status": "succeeded",
            "metadata": {"kami_refund_no": out.refund_no},
        }
    )
    from datetime import timedelta

    assert fulfilment.sync_refunds_due(shop, after=timedelta(0)) == 1
    assert len(api.refunds) == 1 and _status(shop, order_no) == "refunded"


def test_refund_events(
    stripe_shop: tuple[TestClient, fulfilment.Shop], stripe_api: tuple[str, type[FakeStripe]]
) -> None:
    client, shop = stripe_shop
    api = stripe_api[1]
    api.refund_status = "pending"
    order_no = _paid(client, shop, api)
    out = fulfilment.request_refund(shop, order_no, amount_minor=990, reason="x", request_key="k")
    assert out.status == "processing" and _status(shop, order_no) == "delivered"
    refund = dict(api.refunds[0], status="succeeded")

    def refund_event(kind: str, obj: dict[str, Any]) -> str:
        envelope = {"id": "evt_r", "object": "event", "type": kind, "data": {"object": obj}}
        return json.dumps(envelope)

    body = refund_event("charge.refund.updated", refund)
    r = _webhook(client, body)
    assert r.status_code == 200, r.text
    assert _status(shop, order_no) == "partially_refunded"
    assert _webhook(client, body).status_code == 200  # a duplicate changes nothing
    # A refund made in Stripe's dashboard: no Kami refund number, found through the order.
    console = {
        "id": "re_dashboard",
        "object": "refund",
        "amount": 1000,
        "currency": "usd",
        "payment_intent": "pi_3Refund",
        "status": "succeeded",
        "metadata": {},
    }
    charge = {
        "id": "ch_1",
        "object": "charge",
        "payment_intent": "pi_3Refund",
        "metadata": {"kami_order_no": order_no},
        "refunds": {"object": "list", "data": [console]},
    }
    assert _webhook(client, refund_event("charge.refunded", charge)).status_code == 200
    assert _status(shop, order_no) == "refunded"
    refunds = fulfilment.list_order_refunds(shop, order_no)
    assert [(r.origin, r.amount_minor, r.status.value) for r in refunds] == [
        ("kami", 990, "succeeded"),
        ("channel", 1000, "succeeded"),
    ]
    # More back than was paid is refused, with its reason recorded.
    over = dict(console, id="re_over", amount=5)
    r = _webhook(
        client,
        refund_event("charge.refund.updated", over | {"metadata": {"kami_order_no": order_no}}),
    )
    assert r.status_code == 400 and r.json()["type"] == "/problems/refund-exceeds-payment"
    # A tampered refund event is refused before anything is read.
    r = _webhook(client, body.replace("990", "999"), signed(body))
    assert r.status_code == 400 and r.json()["type"] == "/problems/bad-signature"
