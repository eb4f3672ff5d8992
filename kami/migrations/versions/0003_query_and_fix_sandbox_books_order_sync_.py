"""query and fix: sandbox books, order sync time

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 21:14:10.735919
"""
from alembic import op
import sqlalchemy as sa
import kami.kernel.db


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('payments_sandbox_trade',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_no', sa.String(length=64), nullable=False),
    sa.Column('trade_no', sa.String(length=64), nullable=False),
    sa.Column('amount_minor', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('paid_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payments_sandbox_trade')),
    sa.UniqueConstraint('order_no', name=op.f('uq_payments_sandbox_trade_order_no')),
    sa.UniqueConstraint('trade_no', name=op.f('uq_payments_sandbox_trade_trade_no'))
    )
    with op.batch_alter_table('orders_order', schema=None) as batch_op:
        batch_op.add_column(sa.Column('synced_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('orders_order', schema=None) as batch_op:
        batch_op.drop_column('synced_at')

    op.drop_table('payments_sandbox_trade')
