"""catalog: a SKU runs one flash sale after another, each with its own quota

A SKU had one flash-sale row, unique on `sku_id`, whose `taken` counted every unit ever held in
it: a seller who set next week's window on the same SKU, with the same quota, opened a sale that
was sold out before it began. Now a window set after the current sale ended starts a new row;
the ended one is kept with `superseded_at` set, for the orders placed in it. At most one row per
SKU is current (`superseded_at IS NULL`), which a partial unique index keeps and the checkout's
join reads. Existing rows are all current.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-08 00:20:00
"""
import sqlalchemy as sa
from alembic import op

import kami.kernel.db

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

CURRENT = sa.text("superseded_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table('catalog_flash_sale', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('superseded_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True)
        )
        batch_op.drop_constraint('uq_catalog_flash_sale_sku_id', type_='unique')
    op.create_index(
        'uq_catalog_flash_sale_current',
        'catalog_flash_sale',
        ['sku_id'],
        unique=True,
        sqlite_where=CURRENT,
        postgresql_where=CURRENT,
    )


def downgrade() -> None:
    # Only the current sale of each SKU can stay: the superseded ones go (their orders keep
    # their flash_sale_id, which names no row any more, as an order of a deleted SKU would).
    op.execute("DELETE FROM catalog_flash_sale WHERE superseded_at IS NOT NULL")
    op.drop_index('uq_catalog_flash_sale_current', table_name='catalog_flash_sale')
    with op.batch_alter_table('catalog_flash_sale', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_catalog_flash_sale_sku_id', ['sku_id'])
        batch_op.drop_column('superseded_at')
