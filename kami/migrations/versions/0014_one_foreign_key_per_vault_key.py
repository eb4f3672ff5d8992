"""vault: one foreign key per key (to its batch, with the batch's SKU and data key)

A key had three foreign keys (SKU, batch, data key), which PostgreSQL checks with one query
each per inserted row: a third of the server's time in a million-key import. The key now refers
to its batch by (id, sku_id, data_key_id), which the batch holds uniquely, and the batch's own
foreign keys hold the SKU and the data key: one check per row, and a key can no longer disagree
with its batch about either. The index on order_id leaves out keys without an order, which is
every key an import adds.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 19:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

HAS_ORDER = sa.text("order_id IS NOT NULL")
OLD_FKS = (
    ("fk_vault_key_sku_id_catalog_sku", "catalog_sku", ["sku_id"]),
    ("fk_vault_key_batch_id_vault_batch", "vault_batch", ["batch_id"]),
    ("fk_vault_key_data_key_id_vault_data_key", "vault_data_key", ["data_key_id"]),
)


def upgrade() -> None:
    with op.batch_alter_table("vault_batch") as batch_op:
        batch_op.create_unique_constraint(
            "uq_vault_batch_id_sku_id_data_key_id", ["id", "sku_id", "data_key_id"]
        )
    with op.batch_alter_table("vault_key") as batch_op:
        for name, _table, _columns in OLD_FKS:
            batch_op.drop_constraint(name, type_="foreignkey")
        batch_op.create_foreign_key(
            "fk_vault_key_batch_id_vault_batch",
            "vault_batch",
            ["batch_id", "sku_id", "data_key_id"],
            ["id", "sku_id", "data_key_id"],
        )
        batch_op.drop_index("ix_vault_key_order_id")
        batch_op.create_index(
            "ix_vault_key_order_id",
            ["order_id"],
            sqlite_where=HAS_ORDER,
            postgresql_where=HAS_ORDER,
        )


def downgrade() -> None:
    with op.batch_alter_table("vault_key") as batch_op:
        batch_op.drop_index("ix_vault_key_order_id")
        batch_op.create_index("ix_vault_key_order_id", ["order_id"])
        batch_op.drop_constraint("fk_vault_key_batch_id_vault_batch", type_="foreignkey")
        for name, table, columns in OLD_FKS:
            batch_op.create_foreign_key(name, table, columns, ["id"])
    with op.batch_alter_table("vault_batch") as batch_op:
        batch_op.drop_constraint("uq_vault_batch_id_sku_id_data_key_id", type_="unique")
