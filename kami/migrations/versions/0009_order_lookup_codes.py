"""orders: one-time codes for order look-up by e-mail

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 23:40:00
"""
from alembic import op
import sqlalchemy as sa
import kami.kernel.db


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('orders_lookup_code',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket', sa.String(length=64), nullable=False),
    sa.Column('email_fp', sa.LargeBinary(length=32), nullable=False),
    sa.Column('code_fp', sa.LargeBinary(length=32), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('guesses', sa.Integer(), nullable=False),
    sa.Column('created_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('used_at', kami.kernel.db.UtcDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_lookup_code')),
    sa.UniqueConstraint('ticket', name=op.f('uq_orders_lookup_code_ticket'))
    )
    with op.batch_alter_table('orders_lookup_code', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orders_lookup_code_email_fp'), ['email_fp'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_lookup_code_ip'), ['ip'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('orders_lookup_code', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orders_lookup_code_ip'))
        batch_op.drop_index(batch_op.f('ix_orders_lookup_code_email_fp'))
    op.drop_table('orders_lookup_code')
