"""Orders inserted together (`orders.create_orders`, a flash sale's group) are stored as one
inserted alone would be, whichever row of the statement they are."""

from __future__ import annotations

from datetime import timedelta
from importlib import resources

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from kami import catalog, fulfilment, orders
from kami.kernel.clock import utcnow
from kami.orders.models import Order
from kami.orders.schemas import OrderIn
from tests.conftest import BACKEND, make_sku

TTL = timedelta(minutes=15)


def _priced(sku: catalog.SkuView, buyer_input: dict[str, str] | None = None) -> orders.Priced:
    return orders.Priced(
        sku_id=sku.id,
        sku_code=sku.code,
        title="t",
        redemption="",
        validity_days=None,
        unit_price_minor=1000,
        currency="CNY",
        buyer_input=buyer_input,
    )


def _three_orders(priced: orders.Priced) -> list[orders.NewOrder]:
    """Three new orders: statements of 2 and 1 rows, so a row after the first in one of them."""
    return [
        orders.NewOrder(
            OrderIn(sku=priced.sku_code, email=f"b{n}@example.com", gateway="sandbox"),
            priced,
            buyer_ip="192.0.2.1",
            device_id=None,
        )
        for n in range(3)
    ]


@pytest.mark.parametrize("buyer_input", [None, {"account": "player-7"}])
def test_every_row_of_a_group_insert_is_stored_like_an_order_inserted_alone(
    shop: fulfilment.Shop, buyer_input: dict[str, str] | None
) -> None:
    """Regression: in a multi-row INSERT only the first row's values took their columns' types.
    The rows after it reached the driver as they were: on SQLite a datetime as the driver's own
    text ('…+00:00', unlike the column's other values), and buyer input, a dict, was refused by
    both drivers."""
    sku = make_sku(shop)
    now = utcnow().replace(microsecond=125008)
    priced = _priced(sku, buyer_input)
    with shop.db.write() as s:
        placed = orders.create_orders(s, _three_orders(priced), now=now, ttl=TTL)
        alone, _ = orders.create_order(
            s,
            OrderIn(sku=sku.code, email="alone@example.com", gateway="sandbox"),
            priced,
            now=now,
            ttl=TTL,
            idempotency_key=None,
            buyer_ip="192.0.2.1",
        )
    ids = [o.id for o in placed]
    with shop.db.read() as s:
        # Every column as the database holds it, as text: only what tells the orders apart may
        # differ from the order placed alone.
        columns = [c.name for c in Order.__table__.columns]
        stored = [
            dict(zip(columns, row, strict=True))
            for row in s.execute(
                text(
                    "SELECT "
                    + ", ".join(f"CAST({c} AS TEXT)" for c in columns)
                    + " FROM orders_order ORDER BY id"
                )
            ).all()
        ]
        read = [orders.get_order(s, o.order_no) for o in placed]
    assert [int(row["id"]) for row in stored] == [*ids, alone.id]
    apart = {"id", "order_no", "email"}
    alone_row = {k: v for k, v in stored[-1].items() if k not in apart}
    for row in stored[:-1]:
        assert {k: v for k, v in row.items() if k not in apart} == alone_row
    for order in read:
        assert order.created_at == now
        assert order.expires_at == now + TTL
        assert order.buyer_input == buyer_input


@pytest.mark.skipif(BACKEND != "sqlite", reason="PostgreSQL stored these times correctly")
def test_migration_0016_rewrites_the_times_a_group_insert_stored(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop)
    with shop.db.write() as s:
        orders.create_orders(s, _three_orders(_priced(sku)), now=utcnow(), ttl=TTL)
        # As the insert before the fix stored the rows after a statement's first.
        s.execute(
            text(
                "UPDATE orders_order SET created_at = '2026-12-07 12:04:03.125008+00:00', "
                "expires_at = '2026-12-07 12:19:03+00:00' WHERE id = 2"
            )
        )
        s.execute(
            text(
                "UPDATE orders_order SET created_at = '2026-12-07 12:04:03.125008', "
                "expires_at = '2026-12-07 12:19:03.000000' WHERE id = 3"
            )
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("kami") / "migrations"))
    cfg.attributes["database_url"] = shop.db.engine.url.render_as_string(hide_password=False)
    command.downgrade(cfg, "0015")
    command.upgrade(cfg, "head")
    with shop.db.read() as s:
        rows = s.execute(
            text("SELECT created_at, expires_at FROM orders_order WHERE id IN (2, 3)")
        ).all()
    assert [tuple(r) for r in rows] == [
        ("2026-12-07 12:04:03.125008", "2026-12-07 12:19:03.000000"),
    ] * 2
