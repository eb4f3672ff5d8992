"""orders: buyers' e-mail addresses in one spelling (trimmed, lower case)

Orders now keep the address as the buyer's caps, flash-sale limits and the order look-up compare
it; earlier orders are brought to the same form.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25 05:10:00
"""
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE orders_order SET email = lower(trim(email)) WHERE email <> lower(trim(email))"
    )


def downgrade() -> None:
    pass  # the original spellings are not kept; lower case reaches the same mailboxes
