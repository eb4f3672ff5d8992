"""Invariant 4: a paid order with no stock waits durably and completes by itself."""

from __future__ import annotations

from sqlalchemy import text

from kami import fulfilment, orders
from kami.kernel import outbox
from tests.conftest import add_keys, make_sku, place, raw_notification, sandbox_body


def _status(shop: fulfilment.Shop, order_no: str) -> str:
    with shop.db.read() as s:
        return orders.get_order(s, order_no).status


def test_short_stock_waits_then_oldest_payment_is_served_first(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, price=100)
    add_keys(shop, sku, ["K-0", "K-1", "K-2"])
    # Three orders are placed while stock lasts, then paid in the order c, a, b.
    a = place(shop, sku.code, 2).order
    b = place(shop, sku.code, 2).order
    c = place(shop, sku.code, 2).order
    for o in (c, a, b):
        out = fulfilment.handle_notification(shop, raw_notification(sandbox_body(o.order_no, 200)))
        assert out.verdict == "accepted"
    assert _status(shop, c.order_no) == "delivered"
    # One key left: a needs two, so nothing is half-claimed and the key stays available.
    assert _status(shop, a.order_no) == "awaiting_stock"
    assert _status(shop, b.order_no) == "awaiting_stock"
    with shop.db.read() as s:
        left = s.execute(
            text("SELECT count(*) FROM vault_key WHERE status='available'")
        ).scalar_one()
    assert left == 1

    report = add_keys(shop, sku, ["K-3"])  # 2 available now: enough for a (paid before b)
    assert report.imported == 1
    assert _status(shop, a.order_no) == "delivered"
    assert _status(shop, b.order_no) == "awaiting_stock"
    add_keys(shop, sku, ["K-4", "K-5"])
    assert _status(shop, b.order_no) == "delivered"
    with shop.db.read() as s:
        kinds = [j.payload["event"] for j in outbox.list_jobs(s, ref=a.order_no)]
    assert sorted(kinds) == ["awaiting_stock", "delivered"]


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
