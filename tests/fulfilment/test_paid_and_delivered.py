"""A card-key order paid from its reservation is paid and delivered by one update of its row
(`delivering.pay_card_keys`, `orders.pay_and_deliver_each`), alone or in a group; when the
reservation has lapsed the delivery is taken back in the same transaction and the order goes
the long way: fresh keys, or awaiting stock with no delivery time. Both databases; the updates
are counted by a trigger on the orders table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text

from kami import fulfilment, orders
from kami.kernel.clock import utcnow
from tests.conftest import BACKEND, add_keys, make_sku, place, raw_notification, sandbox_body

_SQLITE = (
    "CREATE TABLE order_updates (order_id INTEGER)",
    "CREATE TRIGGER order_updated AFTER UPDATE ON orders_order "
    "BEGIN INSERT INTO order_updates VALUES (NEW.id); END",
)
_POSTGRESQL = (
    "CREATE TABLE order_updates (order_id INTEGER)",
    "CREATE FUNCTION order_updated() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN INSERT INTO order_updates VALUES (NEW.id); RETURN NEW; END $$",
    "CREATE TRIGGER order_updated AFTER UPDATE ON orders_order "
    "FOR EACH ROW EXECUTE FUNCTION order_updated()",
)


@pytest.fixture
def counted(shop: fulfilment.Shop) -> Iterator[None]:
    """From now on every update of an order's row is counted (`_updates`)."""
    with shop.db.write() as s:
        for sql in _SQLITE if BACKEND == "sqlite" else _POSTGRESQL:
            s.execute(text(sql))
    yield
    # PostgreSQL keeps one database for the whole session (and the schema test would see them).
    if BACKEND == "postgresql":
        with shop.db.write() as s:
            s.execute(text("DROP TRIGGER order_updated ON orders_order"))
            s.execute(text("DROP FUNCTION order_updated()"))
            s.execute(text("DROP TABLE order_updates"))


def _updates(shop: fulfilment.Shop) -> dict[int, int]:
    with shop.db.read() as s:
        rows = s.execute(text("SELECT order_id, count(*) FROM order_updates GROUP BY order_id"))
        return {int(order_id): int(n) for order_id, n in rows.tuples()}


def _pay(shop: fulfilment.Shop, order: orders.OrderView) -> fulfilment.Outcome:
    raw = raw_notification(sandbox_body(order.order_no, order.amount_minor))
    return fulfilment.handle_notification(shop, raw)


def _order(shop: fulfilment.Shop, order_no: str) -> orders.OrderView:
    with shop.db.read() as s:
        return orders.get_order(s, order_no)


def _delivered_keys(shop: fulfilment.Shop, order_id: int) -> list[str]:
    """The status of the key each of the order's delivery items holds, in order ("None" for an
    item without a key)."""
    with shop.db.read() as s:
        rows = s.execute(
            text(
                "SELECT k.status FROM delivery_item i LEFT JOIN vault_key k ON k.id = i.key_id "
                "WHERE i.order_id = :o ORDER BY i.position"
            ),
            {"o": order_id},
        )
        return [str(status) for (status,) in rows.tuples()]


def test_a_card_key_payment_updates_its_order_once(shop: fulfilment.Shop, counted: None) -> None:
    sku = make_sku(shop, "ONCE", price=100)
    add_keys(shop, sku, ["K-1", "K-2"])
    placed = place(shop, "ONCE", 2).order
    assert _updates(shop) == {}
    out = _pay(shop, placed)
    assert (out.verdict, out.reason, out.delivered) == ("accepted", None, True)
    assert _updates(shop) == {placed.id: 1}
    paid = _order(shop, placed.order_no)
    assert paid.status == "delivered" and paid.trade_no == f"T{placed.order_no}"
    assert paid.paid_at is not None and paid.paid_at == paid.delivered_at
    assert _delivered_keys(shop, placed.id) == ["sold", "sold"]
    # A second trade for the paid order: kept for a refund, the order left alone.
    again = fulfilment.handle_notification(
        shop,
        raw_notification(sandbox_body(placed.order_no, placed.amount_minor, trade_no="T-OTHER")),
    )
    assert (again.verdict, again.reason) == ("accepted", "duplicate-payment")
    assert _updates(shop) == {placed.id: 1}
    assert _order(shop, placed.order_no).trade_no == f"T{placed.order_no}"


def test_payments_applied_together_update_each_order_once(
    shop: fulfilment.Shop, counted: None
) -> None:
    sku = make_sku(shop, "GROUP", price=100)
    add_keys(shop, sku, ["K-1", "K-2", "K-3"])
    placed = [place(shop, "GROUP", 1, email=f"{n}@example.com").order for n in "abc"]
    raws = [raw_notification(sandbox_body(o.order_no, o.amount_minor)) for o in placed]
    outcomes = fulfilment.handle_notifications_together(shop, raws)
    assert [o is not None and o.delivered for o in outcomes] == [True] * 3
    assert _updates(shop) == {o.id: 1 for o in placed}
    for o in placed:
        paid = _order(shop, o.order_no)
        assert paid.status == "delivered" and paid.paid_at == paid.delivered_at


def test_a_lapsed_reservation_takes_the_delivery_back_then_fresh_keys_or_the_wait(
    shop: fulfilment.Shop, counted: None
) -> None:
    sku = make_sku(shop, "LAPSED", price=100)
    add_keys(shop, sku, ["K-1"])
    waits = place(shop, "LAPSED", 1, email="a@example.com").order
    with shop.db.write() as s:  # its key void meanwhile: nothing reserved to sell
        s.execute(text("UPDATE vault_key SET status = 'void'"))
    out = _pay(shop, waits)
    assert (out.verdict, out.reason, out.delivered) == ("accepted", None, False)
    # Paid and delivered, the delivery taken back, then moved to wait: three updates.
    assert _updates(shop) == {waits.id: 3}
    order = _order(shop, waits.order_no)
    assert order.status == "awaiting_stock"
    assert order.paid_at is not None and order.delivered_at is None
    assert order.trade_no == f"T{waits.order_no}"
    assert _delivered_keys(shop, waits.id) == []  # no items
    # The same with a key on sale: the reservation gone, a fresh key is sold and delivered.
    add_keys(shop, sku, ["K-2"])  # serves the waiting order: it was paid first
    assert _order(shop, waits.order_no).status == "delivered"
    add_keys(shop, sku, ["K-3"])
    fresh = place(shop, "LAPSED", 1, email="c@example.com").order
    with shop.db.write() as s:  # its reservation released, as a lapse does
        s.execute(
            text("UPDATE vault_key SET status = 'available', order_id = NULL WHERE order_id = :o"),
            {"o": fresh.id},
        )
    out = _pay(shop, fresh)
    assert (out.verdict, out.delivered) == ("accepted", True)
    order = _order(shop, fresh.order_no)
    assert order.status == "delivered" and order.paid_at == order.delivered_at
    assert _delivered_keys(shop, fresh.id) == ["sold"]


def test_an_order_paid_after_it_expired_goes_the_long_way(
    shop: fulfilment.Shop, counted: None
) -> None:
    """Read as expired, it has no reservation (released with the status): paid, then delivered
    from fresh keys, two updates as before decision 0026, none of them taken back."""
    sku = make_sku(shop, "LATE", price=100)
    add_keys(shop, sku, ["K-1"])
    late = place(shop, "LATE", 1).order
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET expires_at = :t WHERE id = :o"),
            {"t": utcnow() - timedelta(seconds=1), "o": late.id},
        )
    assert fulfilment.expire_orders(shop) == 1
    before = _updates(shop)[late.id]
    out = _pay(shop, late)
    assert (out.verdict, out.reason, out.delivered) == ("accepted", None, True)
    assert _updates(shop)[late.id] - before == 2
    order = _order(shop, late.order_no)
    assert order.status == "delivered" and order.paid_at == order.delivered_at
    assert order.trade_no == f"T{late.order_no}"


def test_only_the_delivery_just_made_is_taken_back(shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop, "MINE", price=100), ["K-1"])
    placed = place(shop, "MINE", 1).order
    _pay(shop, placed)
    paid = _order(shop, placed.order_no)
    assert paid.status == "delivered" and paid.delivered_at is not None
    for trade, at in (
        ("T-OTHER", paid.delivered_at),  # another trade's
        (paid.trade_no or "", paid.delivered_at + timedelta(microseconds=1)),  # another moment's
    ):
        with pytest.raises(RuntimeError, match="was not delivered by"), shop.db.write() as s:
            orders.not_delivered_yet(s, placed.id, trade, at)
    assert _order(shop, placed.order_no).status == "delivered"
    with shop.db.write() as s:  # its own trade and moment: taken back
        orders.not_delivered_yet(s, placed.id, paid.trade_no or "", paid.delivered_at)
    taken_back = _order(shop, placed.order_no)
    assert taken_back.status == "paid" and taken_back.delivered_at is None
