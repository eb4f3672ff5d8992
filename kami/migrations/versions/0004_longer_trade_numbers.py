"""longer trade numbers

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 22:12:13.980255
"""
from alembic import op
import sqlalchemy as sa
import kami.kernel.db


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders_order', schema=None) as batch_op:
        batch_op.alter_column('trade_no',
               existing_type=sa.VARCHAR(length=64),
               type_=sa.String(length=255),
               existing_nullable=True)

    with op.batch_alter_table('payments_inbox', schema=None) as batch_op:
        batch_op.alter_column('trade_no',
               existing_type=sa.VARCHAR(length=64),
               type_=sa.String(length=255),
               existing_nullable=False)

    with op.batch_alter_table('payments_notification', schema=None) as batch_op:
        batch_op.alter_column('trade_no',
               existing_type=sa.VARCHAR(length=64),
               type_=sa.String(length=255),
               existing_nullable=True)



def downgrade() -> None:
    with op.batch_alter_table('payments_notification', schema=None) as batch_op:
        batch_op.alter_column('trade_no',
               existing_type=sa.String(length=255),
               type_=sa.VARCHAR(length=64),
               existing_nullable=True)

    with op.batch_alter_table('payments_inbox', schema=None) as batch_op:
        batch_op.alter_column('trade_no',
               existing_type=sa.String(length=255),
               type_=sa.VARCHAR(length=64),
               existing_nullable=False)

    with op.batch_alter_table('orders_order', schema=None) as batch_op:
        batch_op.alter_column('trade_no',
               existing_type=sa.String(length=255),
               type_=sa.VARCHAR(length=64),
               existing_nullable=True)

