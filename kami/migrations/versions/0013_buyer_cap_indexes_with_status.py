"""orders: the per-address cap counts from an index of pending orders

The caps count a buyer's *pending* orders of a SKU by e-mail, device and address. Indexed on
(sku_id, buyer_ip) alone, the address count read every order that address ever placed for the
SKU, so a checkout from a busy address (a carrier NAT, the benchmark's one client) grew slower
with every order. The address index now holds pending orders only: it is as small as the orders
waiting for payment, and paying an order takes it out once. (E-mail and device keep their
indexes on (sku_id, column): one buyer's own orders are few, and the flash sale's per-buyer sum
counts paid ones too.)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 16:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.drop_index("ix_orders_order_sku_ip", table_name="orders_order")
    op.create_index(
        "ix_orders_order_sku_ip_pending",
        "orders_order",
        ["sku_id", "buyer_ip"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_orders_order_sku_ip_pending", table_name="orders_order")
    op.create_index("ix_orders_order_sku_ip", "orders_order", ["sku_id", "buyer_ip"])
