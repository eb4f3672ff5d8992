"""reservations, flash sales, buyer caps

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 20:44:00.746882
"""
from alembic import op
import sqlalchemy as sa
import kami.kernel.db


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('catalog_flash_sale',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sku_id', sa.Integer(), nullable=False),
    sa.Column('starts_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('ends_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('price_minor', sa.Integer(), nullable=False),
    sa.Column('per_buyer_limit', sa.Integer(), nullable=False),
    sa.Column('quota', sa.Integer(), nullable=False),
    sa.Column('taken', sa.Integer(), nullable=False),
    sa.Column('reservation_minutes', sa.Integer(), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sku_id'], ['catalog_sku.id'], name=op.f('fk_catalog_flash_sale_sku_id_catalog_sku')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_flash_sale')),
    sa.UniqueConstraint('sku_id', name=op.f('uq_catalog_flash_sale_sku_id'))
    )
    with op.batch_alter_table('orders_order', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('channel', sa.String(length=32), nullable=False, server_default='shop'))
        batch_op.add_column(sa.Column('flash_sale_id', sa.Integer(), nullable=True))
        batch_op.create_index('ix_orders_order_sku_device', ['sku_id', 'device_id'], unique=False)
        batch_op.create_index('ix_orders_order_sku_email', ['sku_id', 'email'], unique=False)
        batch_op.create_index('ix_orders_order_sku_ip', ['sku_id', 'buyer_ip'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('orders_order', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_order_sku_ip')
        batch_op.drop_index('ix_orders_order_sku_email')
        batch_op.drop_index('ix_orders_order_sku_device')
        batch_op.drop_column('flash_sale_id')
        batch_op.drop_column('channel')
        batch_op.drop_column('device_id')

    op.drop_table('catalog_flash_sale')
