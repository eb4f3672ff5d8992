"""Card keys bought from a supplier when a SKU runs low, on both databases: purchases stop at
the day's budget, the keys arrive through the import path so an order awaiting stock is served
first, and a purchase still processing is collected by the sweep, never bought twice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from kami import bootstrap, catalog, fulfilment, vault
from kami.kernel.clock import utcnow
from kami.kernel.errors import InvalidInput
from kami.suppliers import Fate, SimConfig, Simulator
from kami.worker.runner import run_once
from tests.conftest import add_keys, place, raw_notification, sandbox_body
from tests.fulfilment.test_goods import goods_sku, revealed, status
from tests.fulfilment.test_recharge import connect

CARD, UNIT = "20000002", 99  # the simulator's 游戏点卡 1元 卡密, 0.99 each


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=3, processing_ms=600_000)) as s:
        yield s


def procured_sku(
    shop: fulfilment.Shop, code: str, supplier: str = "gen", **settings: int
) -> catalog.SkuView:
    plan: dict[str, Any] = {
        "supplier": supplier,
        "product_id": CARD,
        "threshold": 100,
        "batch_size": 4,
        "daily_budget_minor": 10 * UNIT,
        "unit_cost_minor": UNIT,
    }
    plan.update(settings)
    return goods_sku(shop, code, "card_key", config={"procurement": plan})


def in_stock(shop: fulfilment.Shop, sku: catalog.SkuView) -> int:
    with shop.db.read() as s:
        return vault.count_available(s, [sku.id]).get(sku.id, 0)


def test_purchases_stop_at_the_daily_budget(shop: fulfilment.Shop, sim: Simulator) -> None:
    connect(shop, sim)
    sku = procured_sku(shop, "GAMECARD")
    bought = [fulfilment.procure_sku(shop, "GAMECARD") for _ in range(4)]
    # 4 + 4 keys, then the 2 the rest of the budget (10 keys) buys, then nothing.
    assert [b.quantity for b in bought] == [4, 4, 2, 0]
    assert [b.status for b in bought[:3]] == ["succeeded"] * 3
    assert bought[3].reason == f"daily budget reached ({10 * UNIT} of {10 * UNIT})"
    assert in_stock(shop, sku) == 10
    assert sum(sim.charges_per_account().values()) == 10 * UNIT
    with shop.db.read() as s:  # batches named after the supplier, with the unit cost
        batches = s.execute(
            text("SELECT supplier, unit_cost_minor, imported FROM vault_batch WHERE sku_id = :i"),
            {"i": sku.id},
        ).all()
    assert sorted(tuple(b) for b in batches) == [
        ("gen", UNIT, 2),
        ("gen", UNIT, 4),
        ("gen", UNIT, 4),
    ]
    # Tomorrow the budget is new again.
    tomorrow = fulfilment.procure_sku(shop, "GAMECARD", now=utcnow() + timedelta(days=1))
    assert tomorrow.quantity == 4


def test_nothing_is_bought_while_stock_is_at_the_threshold(
    shop: fulfilment.Shop, sim: Simulator
) -> None:
    connect(shop, sim)
    sku = procured_sku(shop, "GAMECARD", threshold=3)
    add_keys(shop, sku, ["OWN-1", "OWN-2", "OWN-3"])
    assert fulfilment.procure_sku(shop, "GAMECARD").reason == "3 in stock (threshold 3)"
    assert sim.ledger()["orders"] == []


def test_bought_keys_serve_the_order_waiting_for_stock(
    container: bootstrap.Container, sim: Simulator
) -> None:
    shop = container.shop
    connect(shop, sim)
    sku = procured_sku(shop, "GAMECARD", threshold=1, batch_size=3)
    add_keys(shop, sku, ["OWN-1"])
    late = place(shop, "GAMECARD", email="late@example.com").order  # holds OWN-1 …
    with shop.db.write() as s:  # … and lapses unpaid
        s.execute(
            text("UPDATE orders_order SET expires_at = :t WHERE order_no = :n"),
            {"t": utcnow() - timedelta(seconds=1), "n": late.order_no},
        )
    fulfilment.expire_orders(shop)
    other = place(shop, "GAMECARD", email="other@example.com").order
    for order in (other, late):  # the lapsed order is paid after the key went to another
        fulfilment.handle_notification(
            shop, raw_notification(sandbox_body(order.order_no, order.amount_minor))
        )
    assert status(shop, late.order_no) == "awaiting_stock"
    run_once(container)  # the worker's sweep buys: stock 0 is below the threshold
    assert status(shop, late.order_no) == "delivered"
    (key,) = revealed(shop, late.order_no)
    assert key.startswith("SIM")
    assert in_stock(shop, sku) == 2  # three bought, one served


def test_a_purchase_in_flight_is_collected_and_never_bought_twice(
    shop: fulfilment.Shop, sim: Simulator
) -> None:
    connect(shop, sim)
    sku = procured_sku(shop, "GAMECARD", "fulu")
    with shop.db.read() as s:
        salt = shop.cipher.named_secret(s, fulfilment.ORDER_SALT)[:4].hex()
    number = f"P{salt}-{sku.id}-{utcnow():%Y%m%d}-1x4"
    sim.script(number, Fate(processing=True))
    first = fulfilment.procure_sku(shop, "GAMECARD")
    assert (first.customer_order_no, first.status) == (number, "processing")
    assert fulfilment.procure_sku(shop, "GAMECARD").reason == "a purchase is in flight"
    fulfilment.settle_open_purchases(shop)
    assert in_stock(shop, sku) == 0  # still processing at Fulu
    sim.settle(number)
    assert fulfilment.settle_open_purchases(shop) == 1  # Fulu's cards come with the query
    assert in_stock(shop, sku) == 4
    fulfilment.settle_open_purchases(shop)
    assert in_stock(shop, sku) == 4
    assert [o["customer_order_no"] for o in sim.ledger()["orders"]] == [number]


def test_procurement_settings_are_checked(shop: fulfilment.Shop) -> None:
    with pytest.raises(InvalidInput) as bad:
        procured_sku(shop, "GAMECARD", batch_size=0)
    assert bad.value.where == "delivery_config.procurement.batch_size"
