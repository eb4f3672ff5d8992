"""Invariant 3: a notification changes nothing until everything in it is verified."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from kami import fulfilment, orders, payments
from tests.conftest import add_keys, make_sku, place, raw_notification, sandbox_body, sign

URL = "/api/v1/payments/sandbox/notify"


def _post(client: TestClient, body: bytes, signature: str | None) -> tuple[int, dict[str, object]]:
    headers = {} if signature is None else {"X-Sandbox-Signature": signature}
    r = client.post(URL, content=body, headers=headers)
    return r.status_code, r.json()


def _sold(shop: fulfilment.Shop) -> int:
    with shop.db.read() as s:
        return int(
            s.execute(text("SELECT count(*) FROM vault_key WHERE status = 'sold'")).scalar_one()
        )


def _last_rejection(shop: fulfilment.Shop) -> payments.NotificationView:
    with shop.db.read() as s:
        rows = payments.list_notifications(s, verdict="rejected", limit=1)
    assert rows, "the rejected notification was not recorded"
    return rows[0]


def test_each_forgery_is_rejected_with_its_reason(
    client: TestClient, shop: fulfilment.Shop
) -> None:
    sku = make_sku(shop, price=990)
    add_keys(shop, sku, [f"K-{n}" for n in range(10)])
    a = place(shop, sku.code).order
    b = place(shop, sku.code).order
    good_a = sandbox_body(a.order_no, 990, trade_no="TA")

    cases: list[tuple[str, bytes, str | None, str]] = [
        ("forged signature", good_a, sign(good_a, "some-other-secret-123456"), "bad-signature"),
        ("missing signature", good_a, None, "bad-signature"),
        (
            "altered amount",
            sandbox_body(a.order_no, 1, trade_no="TA"),
            sign(good_a),
            "bad-signature",
        ),
        (
            "altered amount, re-signed",
            sandbox_body(a.order_no, 1, trade_no="TA"),
            "",
            "amount-mismatch",
        ),
        (
            "wrong currency",
            sandbox_body(a.order_no, 990, trade_no="TA", currency="USD"),
            "",
            "currency-mismatch",
        ),
        (
            "not paid",
            sandbox_body(a.order_no, 990, trade_no="TA", status="pending"),
            "",
            "not-paid-status",
        ),
        (
            "unknown order",
            sandbox_body("K000000NOSUCHORDER", 990, trade_no="TZ"),
            "",
            "unknown-order",
        ),
        (
            "other order's body, this signature",
            sandbox_body(b.order_no, 990, trade_no="TA"),
            sign(good_a),
            "bad-signature",
        ),
        ("not JSON", b"order_no=1", "", "malformed-notification"),
    ]
    for label, body, signature, reason in cases:
        status, problem = _post(client, body, sign(body) if signature == "" else signature)
        assert status == 400, label
        assert problem["type"] == f"/problems/{reason}", (label, problem)
        assert problem["detail"], label
        rejection = _last_rejection(shop)
        assert rejection.reason == reason, label
        assert rejection.body == body.decode(), label  # the raw notification is kept
        assert _sold(shop) == 0, label
    with shop.db.read() as s:
        assert orders.get_order(s, a.order_no).status == "pending"
        assert orders.get_order(s, b.order_no).status == "pending"


def test_valid_notification_replayed_for_another_order(
    client: TestClient, shop: fulfilment.Shop
) -> None:
    sku = make_sku(shop, price=500)
    add_keys(shop, sku, [f"K-{n}" for n in range(10)])
    a = place(shop, sku.code).order
    b = place(shop, sku.code).order
    body_a = sandbox_body(a.order_no, 500, trade_no="T-1")
    assert _post(client, body_a, sign(body_a))[0] == 200
    # The channel's trade T-1 paid for order A; a signed notification claiming it paid B too
    # (a replay with the order number swapped) must not deliver B.
    body_b = sandbox_body(b.order_no, 500, trade_no="T-1")
    status, problem = _post(client, body_b, sign(body_b))
    assert status == 400 and problem["type"] == "/problems/trade-no-reused"
    assert _last_rejection(shop).reason == "trade-no-reused"
    with shop.db.read() as s:
        assert orders.get_order(s, b.order_no).status == "pending"
        assert orders.get_order(s, a.order_no).status == "delivered"
    assert _sold(shop) == 1
    # The exact same notification again is a duplicate: acknowledged, nothing changes.
    assert _post(client, body_a, sign(body_a)) == (200, {"status": "ok"})
    assert _sold(shop) == 1


def test_second_distinct_payment_is_kept_for_refund(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, price=700)
    add_keys(shop, sku, ["K-1", "K-2"])
    o = place(shop, sku.code).order
    first = fulfilment.handle_notification(
        shop, raw_notification(sandbox_body(o.order_no, 700, trade_no="P1"))
    )
    second = fulfilment.handle_notification(
        shop, raw_notification(sandbox_body(o.order_no, 700, trade_no="P2"))
    )
    assert first.verdict == "accepted" and first.delivered
    assert (
        second.verdict == "accepted"
        and second.reason == "duplicate-payment"
        and not second.delivered
    )
    assert second.ack.status_code == 200
    assert _sold(shop) == 1
    with shop.db.read() as s:
        inbox = s.execute(text("SELECT count(*) FROM payments_inbox")).scalar_one()
    assert inbox == 2


def test_unknown_gateway_is_recorded(client: TestClient, shop: fulfilment.Shop) -> None:
    r = client.post("/api/v1/payments/nosuch/notify", content=b"x=1")
    assert r.status_code == 404 and r.json()["type"] == "/problems/unknown-gateway"
    assert _last_rejection(shop).reason == "unknown-gateway"


def test_rejections_are_visible_to_the_admin(client: TestClient, shop: fulfilment.Shop) -> None:
    from kami import accounts

    with shop.db.write() as s:
        admin = accounts.create_admin(s, "owner", "correct horse battery")
        token = accounts.issue_token(s, admin.id)
    body = sandbox_body("K1", 1)
    client.post(URL, content=body, headers={"X-Sandbox-Signature": "00"})
    listed = client.get(
        "/api/admin/notifications?verdict=rejected", headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert listed[0]["reason"] == "bad-signature" and listed[0]["body"] == body.decode()
    with shop.db.read() as s:
        from kami.payments.models import Notification

        assert s.execute(select(func.count()).select_from(Notification)).scalar_one() == 1


def test_where_the_paid_order_is_read(
    shop: fulfilment.Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite reads the order before the write transaction (a forgery never queues for the one
    writer); PostgreSQL reads it as the write transaction's first statement, with its BEGIN
    (decision 0021). Either way a mismatch is rejected and changes nothing."""
    sku = make_sku(shop, price=700)
    add_keys(shop, sku, ["K-1", "K-2"])
    o = place(shop, sku.code).order
    reads = 0
    real_read = shop.db.read

    @contextmanager
    def counted() -> Iterator[Session]:
        nonlocal reads
        reads += 1
        with real_read() as s:
            yield s

    monkeypatch.setattr(shop.db, "read", counted)
    wrong = fulfilment.handle_notification(
        shop, raw_notification(sandbox_body(o.order_no, 1, trade_no="P0"))
    )
    paid = fulfilment.handle_notification(
        shop, raw_notification(sandbox_body(o.order_no, 700, trade_no="P1"))
    )
    monkeypatch.undo()
    assert wrong.verdict == "rejected" and wrong.reason == "amount-mismatch"
    assert paid.verdict == "accepted" and paid.delivered
    assert reads == (2 if shop.db.dialect == "sqlite" else 0)
    assert _sold(shop) == 1
