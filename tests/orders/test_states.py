"""The order state machine, over every pair of statuses."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import text

from kami import fulfilment, orders
from kami.orders import OrderStatus as S
from tests.conftest import add_keys, make_sku, place

ALLOWED = {
    (S.PENDING, S.PAID),
    (S.PENDING, S.EXPIRED),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.FAILED),
    (S.EXPIRED, S.PAID),
    (S.CANCELLED, S.PAID),
    (S.PAID, S.DELIVERED),
    (S.PAID, S.AWAITING_STOCK),
    (S.PAID, S.REFUNDED),
    (S.PAID, S.FAILED),
    (S.AWAITING_STOCK, S.DELIVERED),
    (S.AWAITING_STOCK, S.REFUNDED),
    (S.AWAITING_STOCK, S.FAILED),
    (S.DELIVERED, S.REFUNDED),
    (S.DELIVERED, S.PARTIALLY_REFUNDED),
    (S.PARTIALLY_REFUNDED, S.REFUNDED),
    (S.FAILED, S.REFUNDED),
    (S.FAILED, S.PARTIALLY_REFUNDED),
}


def test_transition_table_is_exactly_the_designed_one() -> None:
    for a, b in itertools.product(S, S):
        assert orders.can_move(a, b) == ((a, b) in ALLOWED), (a, b)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S, S)))
def test_guarded_move_in_the_database(shop: fulfilment.Shop, current: S, target: S) -> None:
    sku = make_sku(shop, f"S-{current.value}-{target.value}"[:60])
    add_keys(shop, sku, ["K"])
    o = place(shop, sku.code).order
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET status = :st WHERE id = :id"),
            {"st": current.value, "id": o.id},
        )
        moved = orders.move(s, o.id, target)
    assert moved == ((current, target) in ALLOWED)
    with shop.db.read() as s:
        assert orders.get_order(s, o.order_no).status == (target if moved else current)


def test_count_by_status(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop)
    add_keys(shop, sku, ["K-1", "K-2"])
    place(shop, sku.code, email="a@example.com")
    place(shop, sku.code, email="b@example.com")
    with shop.db.read() as s:
        assert orders.count_by_status(s) == {"pending": 2}
