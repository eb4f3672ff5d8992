"""Orders keep the buyer's address in one spelling; migration 0012 brings earlier orders to it."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from kami import fulfilment, orders
from kami.config import Settings
from kami.kernel.engine import normalise_url
from tests.conftest import add_keys, make_sku, place, random_keys


def _alembic(settings: Settings) -> Config:
    from importlib import resources

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("kami") / "migrations"))
    cfg.attributes["database_url"] = normalise_url(settings.database_url)
    return cfg


def test_an_order_keeps_the_address_trimmed_and_in_lower_case(shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop, "E-1"), random_keys(1))
    order = place(shop, "E-1", email="  Buyer.Name@Example.COM ").order
    assert order.email == "buyer.name@example.com"
    with shop.db.read() as s:
        assert orders.list_orders(s, email="buyer.name@example.com")[0].order_no == order.order_no


def test_migration_0012_brings_earlier_orders_to_one_spelling(
    shop: fulfilment.Shop, settings: Settings
) -> None:
    add_keys(shop, make_sku(shop, "E-2"), random_keys(1))
    order = place(shop, "E-2", email="old@example.com").order
    with shop.db.write() as s:  # as an order placed before this release may hold it
        s.execute(
            text("UPDATE orders_order SET email = ' Old@Example.com' WHERE id = :i"),
            {"i": order.id},
        )
    shop.db.dispose()  # SQLite: let the migration have the database to itself
    cfg = _alembic(settings)
    command.downgrade(cfg, "0011")
    command.upgrade(cfg, "head")
    with shop.db.read() as s:
        email = s.execute(
            text("SELECT email FROM orders_order WHERE id = :i"), {"i": order.id}
        ).scalar_one()
    assert email == "old@example.com"
