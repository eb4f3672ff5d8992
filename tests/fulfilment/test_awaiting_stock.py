"""Invariant 4: a paid order with no stock waits durably and completes by itself."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from kami import fulfilment, orders
from kami.fulfilment import delivering
from kami.kernel import outbox
from kami.kernel.clock import utcnow
from tests.conftest import add_keys, make_sku, place, raw_notification, sandbox_body


def _status(shop: fulfilment.Shop, order_no: str) -> str:
    with shop.db.read() as s:
        return orders.get_order(s, order_no).status


def _expire_all(shop: fulfilment.Shop) -> int:
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET expires_at = :t WHERE status = 'pending'"),
            {"t": utcnow() - timedelta(seconds=1)},
        )
    return fulfilment.expire_orders(shop)


def test_late_payments_wait_for_stock_and_the_oldest_is_served_first(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, price=100)
    add_keys(shop, sku, [f"K-{n}" for n in range(6)])
    # Three orders reserve all six keys, then lapse unpaid: their keys go back on sale.
    a, b, d = (place(shop, sku.code, 2, email=f"{n}@example.com").order for n in "abd")
    assert _expire_all(shop) == 3
    # Two newer orders reserve four of them; their reservations must survive everything below.
    e, f = (place(shop, sku.code, 2, email=f"{n}@example.com").order for n in "ef")
    # The lapsed orders are paid late, in the order d, a, b: money is never ignored.
    for o in (d, a, b):
        out = fulfilment.handle_notification(shop, raw_notification(sandbox_body(o.order_no, 200)))
        assert out.verdict == "accepted"
    assert _status(shop, d.order_no) == "delivered"  # took the two unreserved keys
    assert _status(shop, a.order_no) == "awaiting_stock"
    assert _status(shop, b.order_no) == "awaiting_stock"

    assert add_keys(shop, sku, ["K-6"]).imported == 1  # one key: a needs two, nothing half-sold
    assert _status(shop, a.order_no) == "awaiting_stock"
    add_keys(shop, sku, ["K-7"])  # two now: a, paid before b, goes first
    assert _status(shop, a.order_no) == "delivered"
    assert _status(shop, b.order_no) == "awaiting_stock"
    add_keys(shop, sku, ["K-8", "K-9"])
    assert _status(shop, b.order_no) == "delivered"
    for o in (e, f):
        assert _status(shop, o.order_no) == "pending"
        fulfilment.handle_notification(shop, raw_notification(sandbox_body(o.order_no, 200)))
        assert _status(shop, o.order_no) == "delivered"
    with shop.db.read() as s:
        kinds = [j.payload["event"] for j in outbox.list_jobs(s, ref=a.order_no)]
        sold = s.execute(text("SELECT count(*) FROM vault_key WHERE status='sold'")).scalar_one()
    assert sorted(kinds) == ["awaiting_stock", "delivered"]
    assert sold == 10


def test_sweep_serves_orders_without_an_import(shop: fulfilment.Shop) -> None:
    """Keys that came back another way (e.g. a released lock) are picked up by the worker sweep."""
    sku = make_sku(shop, price=100)
    add_keys(shop, sku, ["K-0"])
    o = place(shop, sku.code, 1).order
    with shop.db.write() as s:
        s.execute(text("UPDATE vault_key SET status='void'"))
    fulfilment.handle_notification(shop, raw_notification(sandbox_body(o.order_no, 100)))
    assert _status(shop, o.order_no) == "awaiting_stock"
    assert fulfilment.serve_awaiting_stock(shop) == 0
    with shop.db.write() as s:
        s.execute(text("UPDATE vault_key SET status='available'"))
    assert fulfilment.serve_awaiting_stock(shop) == 1
    assert _status(shop, o.order_no) == "delivered"


def test_redeliver(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, price=100)
    add_keys(shop, sku, ["K-0"])
    o = place(shop, sku.code, 1).order
    fulfilment.handle_notification(shop, raw_notification(sandbox_body(o.order_no, 100)))
    assert fulfilment.redeliver(shop, o.order_no)["action"] == "mail_queued"
    with shop.db.read() as s:
        assert len(outbox.list_jobs(s, ref=o.order_no)) == 2


def test_an_import_reports_its_keys_when_serving_the_waiting_orders_fails(
    shop: fulfilment.Shop, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The keys are committed before the waiting orders are served: a failure then (a lock
    that timed out) leaves them to the worker's sweep and the import still reports its keys."""
    sku = make_sku(shop, price=100)
    add_keys(shop, sku, ["K-0"])
    o = place(shop, sku.code, 1).order
    with shop.db.write() as s:  # its key is taken out of stock before it is paid
        s.execute(text("UPDATE vault_key SET status='void'"))
    fulfilment.handle_notification(shop, raw_notification(sandbox_body(o.order_no, 100)))
    assert _status(shop, o.order_no) == "awaiting_stock"

    def locked(*_args: object, **_kwargs: object) -> int:
        raise OperationalError("serve", {}, Exception("database is locked"))

    monkeypatch.setattr(delivering, "serve_awaiting_stock", locked)
    assert add_keys(shop, sku, ["K-LATE"]).imported == 1
    assert "not served now (OperationalError)" in caplog.text
    assert "database is locked" not in caplog.text  # the type only (invariant 5)
    assert _status(shop, o.order_no) == "awaiting_stock"
    monkeypatch.undo()
    assert fulfilment.serve_awaiting_stock(shop) == 1  # the sweep
    assert _status(shop, o.order_no) == "delivered"
