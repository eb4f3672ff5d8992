"""orders: the buyer-cap indexes end in status

The caps count a buyer's *pending* orders of a SKU by e-mail, address and device. Indexed on
(sku_id, column) alone, each count read every order that address ever placed for the SKU, so a
checkout from a busy address (a carrier NAT, the benchmark's one client) grew slower with every
order. With status last in the index the count reads the pending ones only; the flash-sale
per-buyer sum, which filters on status too, uses the same indexes.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 16:20:00
"""
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

COLUMNS = {"email": "email", "ip": "buyer_ip", "device": "device_id"}


def upgrade() -> None:
    for name, column in COLUMNS.items():
        op.drop_index(f"ix_orders_order_sku_{name}", table_name="orders_order")
        op.create_index(
            f"ix_orders_order_sku_{name}_status", "orders_order", ["sku_id", column, "status"]
        )


def downgrade() -> None:
    for name, column in COLUMNS.items():
        op.drop_index(f"ix_orders_order_sku_{name}_status", table_name="orders_order")
        op.create_index(f"ix_orders_order_sku_{name}", "orders_order", ["sku_id", column])
