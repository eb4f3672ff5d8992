"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 20:30:07.883445
"""
from alembic import op
import sqlalchemy as sa
import kami.kernel.db


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts_admin',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts_admin')),
    sa.UniqueConstraint('username', name=op.f('uq_accounts_admin_username'))
    )
    op.create_table('catalog_category',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['catalog_category.id'], name=op.f('fk_catalog_category_parent_id_catalog_category'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_category')),
    sa.UniqueConstraint('slug', name=op.f('uq_catalog_category_slug'))
    )
    with op.batch_alter_table('catalog_category', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_catalog_category_parent_id'), ['parent_id'], unique=False)

    op.create_table('delivery_item',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('delivered_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_item')),
    sa.UniqueConstraint('key_id', name=op.f('uq_delivery_item_key_id')),
    sa.UniqueConstraint('order_id', 'position', name=op.f('uq_delivery_item_order_id_position'))
    )
    op.create_table('delivery_reveal',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('revealed_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=512), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_reveal'))
    )
    with op.batch_alter_table('delivery_reveal', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_reveal_order_id'), ['order_id'], unique=False)

    op.create_table('kernel_outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('ref', sa.String(length=64), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('run_after', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('locked_until', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kernel_outbox'))
    )
    with op.batch_alter_table('kernel_outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_kernel_outbox_ref'), ['ref'], unique=False)
        batch_op.create_index(batch_op.f('ix_kernel_outbox_run_after'), ['run_after'], unique=False)
        batch_op.create_index(batch_op.f('ix_kernel_outbox_status'), ['status'], unique=False)

    op.create_table('payments_inbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('gateway', sa.String(length=32), nullable=False),
    sa.Column('trade_no', sa.String(length=64), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('amount_minor', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('applied_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments_inbox')),
    sa.UniqueConstraint('gateway', 'trade_no', name=op.f('uq_payments_inbox_gateway_trade_no'))
    )
    with op.batch_alter_table('payments_inbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payments_inbox_order_id'), ['order_id'], unique=False)

    op.create_table('payments_notification',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('gateway', sa.String(length=32), nullable=False),
    sa.Column('received_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('remote_addr', sa.String(length=64), nullable=True),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('headers', sa.JSON(), nullable=False),
    sa.Column('query', sa.JSON(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('order_no', sa.String(length=64), nullable=True),
    sa.Column('trade_no', sa.String(length=64), nullable=True),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments_notification'))
    )
    with op.batch_alter_table('payments_notification', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_payments_notification_order_no'), ['order_no'], unique=False)
        batch_op.create_index(batch_op.f('ix_payments_notification_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_payments_notification_verdict'), ['verdict'], unique=False)

    op.create_table('vault_data_key',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=True),
    sa.Column('master_version', sa.Integer(), nullable=False),
    sa.Column('wrapped', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('rotated_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vault_data_key')),
    sa.UniqueConstraint('name', name=op.f('uq_vault_data_key_name'))
    )
    with op.batch_alter_table('vault_data_key', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vault_data_key_master_version'), ['master_version'], unique=False)

    op.create_table('accounts_token',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('admin_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['admin_id'], ['accounts_admin.id'], name=op.f('fk_accounts_token_admin_id_accounts_admin')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounts_token')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_accounts_token_token_hash'))
    )
    with op.batch_alter_table('accounts_token', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_accounts_token_admin_id'), ['admin_id'], unique=False)

    op.create_table('catalog_product',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('category_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('benefits', sa.JSON(), nullable=False),
    sa.Column('validity_days', sa.Integer(), nullable=True),
    sa.Column('redemption', sa.Text(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['category_id'], ['catalog_category.id'], name=op.f('fk_catalog_product_category_id_catalog_category'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_product')),
    sa.UniqueConstraint('slug', name=op.f('uq_catalog_product_slug'))
    )
    with op.batch_alter_table('catalog_product', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_catalog_product_category_id'), ['category_id'], unique=False)

    op.create_table('catalog_sku',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('price_minor', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('delivery_kind', sa.String(length=32), nullable=False),
    sa.Column('min_quantity', sa.Integer(), nullable=False),
    sa.Column('max_quantity', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('stock_display', sa.String(length=16), nullable=False),
    sa.Column('low_stock_threshold', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['product_id'], ['catalog_product.id'], name=op.f('fk_catalog_sku_product_id_catalog_product'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_sku')),
    sa.UniqueConstraint('code', name=op.f('uq_catalog_sku_code'))
    )
    with op.batch_alter_table('catalog_sku', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_catalog_sku_product_id'), ['product_id'], unique=False)

    op.create_table('orders_order',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_no', sa.String(length=32), nullable=False),
    sa.Column('sku_id', sa.Integer(), nullable=False),
    sa.Column('sku_code', sa.String(length=64), nullable=False),
    sa.Column('title', sa.String(length=420), nullable=False),
    sa.Column('redemption', sa.Text(), nullable=False),
    sa.Column('validity_days', sa.Integer(), nullable=True),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('unit_price_minor', sa.Integer(), nullable=False),
    sa.Column('amount_minor', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('gateway', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('trade_no', sa.String(length=64), nullable=True),
    sa.Column('idempotency_key', sa.String(length=128), nullable=True),
    sa.Column('request_hash', sa.LargeBinary(length=32), nullable=True),
    sa.Column('buyer_ip', sa.String(length=64), nullable=True),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('paid_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('delivered_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['sku_id'], ['catalog_sku.id'], name=op.f('fk_orders_order_sku_id_catalog_sku')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_order')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_orders_order_idempotency_key')),
    sa.UniqueConstraint('order_no', name=op.f('uq_orders_order_order_no'))
    )
    with op.batch_alter_table('orders_order', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orders_order_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_order_email'), ['email'], unique=False)
        batch_op.create_index('ix_orders_order_sku_status_paid', ['sku_id', 'status', 'paid_at'], unique=False)
        batch_op.create_index('ix_orders_order_status_expires', ['status', 'expires_at'], unique=False)

    op.create_table('vault_batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('public_id', sa.String(length=32), nullable=False),
    sa.Column('sku_id', sa.Integer(), nullable=False),
    sa.Column('data_key_id', sa.Integer(), nullable=False),
    sa.Column('supplier', sa.String(length=200), nullable=False),
    sa.Column('unit_cost_minor', sa.Integer(), nullable=True),
    sa.Column('cost_currency', sa.String(length=3), nullable=True),
    sa.Column('expires_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('source_name', sa.String(length=255), nullable=False),
    sa.Column('imported', sa.Integer(), nullable=False),
    sa.Column('duplicates_in_file', sa.Integer(), nullable=False),
    sa.Column('duplicates_in_stock', sa.Integer(), nullable=False),
    sa.Column('invalid', sa.Integer(), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['data_key_id'], ['vault_data_key.id'], name=op.f('fk_vault_batch_data_key_id_vault_data_key')),
    sa.ForeignKeyConstraint(['sku_id'], ['catalog_sku.id'], name=op.f('fk_vault_batch_sku_id_catalog_sku')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vault_batch')),
    sa.UniqueConstraint('public_id', name=op.f('uq_vault_batch_public_id'))
    )
    with op.batch_alter_table('vault_batch', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vault_batch_sku_id'), ['sku_id'], unique=False)

    op.create_table('vault_key',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sku_id', sa.Integer(), nullable=False),
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('data_key_id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.LargeBinary(length=32), nullable=False),
    sa.Column('ciphertext', sa.LargeBinary(), nullable=False),
    sa.Column('masked', sa.String(length=600), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('expires_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=True),
    sa.Column('sold_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['vault_batch.id'], name=op.f('fk_vault_key_batch_id_vault_batch')),
    sa.ForeignKeyConstraint(['data_key_id'], ['vault_data_key.id'], name=op.f('fk_vault_key_data_key_id_vault_data_key')),
    sa.ForeignKeyConstraint(['sku_id'], ['catalog_sku.id'], name=op.f('fk_vault_key_sku_id_catalog_sku')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vault_key')),
    sa.UniqueConstraint('sku_id', 'fingerprint', name=op.f('uq_vault_key_sku_id_fingerprint'))
    )
    with op.batch_alter_table('vault_key', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_vault_key_batch_id'), ['batch_id'], unique=False)
        batch_op.create_index('ix_vault_key_claim', ['sku_id', 'status', 'expires_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_vault_key_order_id'), ['order_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('vault_key', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vault_key_order_id'))
        batch_op.drop_index('ix_vault_key_claim')
        batch_op.drop_index(batch_op.f('ix_vault_key_batch_id'))

    op.drop_table('vault_key')
    with op.batch_alter_table('vault_batch', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vault_batch_sku_id'))

    op.drop_table('vault_batch')
    with op.batch_alter_table('orders_order', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_order_status_expires')
        batch_op.drop_index('ix_orders_order_sku_status_paid')
        batch_op.drop_index(batch_op.f('ix_orders_order_email'))
        batch_op.drop_index(batch_op.f('ix_orders_order_created_at'))

    op.drop_table('orders_order')
    with op.batch_alter_table('catalog_sku', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_catalog_sku_product_id'))

    op.drop_table('catalog_sku')
    with op.batch_alter_table('catalog_product', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_catalog_product_category_id'))

    op.drop_table('catalog_product')
    with op.batch_alter_table('accounts_token', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_accounts_token_admin_id'))

    op.drop_table('accounts_token')
    with op.batch_alter_table('vault_data_key', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_vault_data_key_master_version'))

    op.drop_table('vault_data_key')
    with op.batch_alter_table('payments_notification', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payments_notification_verdict'))
        batch_op.drop_index(batch_op.f('ix_payments_notification_received_at'))
        batch_op.drop_index(batch_op.f('ix_payments_notification_order_no'))

    op.drop_table('payments_notification')
    with op.batch_alter_table('payments_inbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payments_inbox_order_id'))

    op.drop_table('payments_inbox')
    with op.batch_alter_table('kernel_outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_kernel_outbox_status'))
        batch_op.drop_index(batch_op.f('ix_kernel_outbox_run_after'))
        batch_op.drop_index(batch_op.f('ix_kernel_outbox_ref'))

    op.drop_table('kernel_outbox')
    with op.batch_alter_table('delivery_reveal', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_reveal_order_id'))

    op.drop_table('delivery_reveal')
    op.drop_table('delivery_item')
    with op.batch_alter_table('catalog_category', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_catalog_category_parent_id'))

    op.drop_table('catalog_category')
    op.drop_table('accounts_admin')
