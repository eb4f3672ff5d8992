"""vault: the claim's index holds the available keys only

`ix_vault_key_claim` on (sku_id, status, expires_at, id) held every key. Taking a key moved its
entry from the SKU's available range to its reserved or sold range: one entry deleted and one
added, on two different pages, in each claim, reservation, sale and release. The claim, the
stock check and the storefront's counts only ever read the available range.

`ix_vault_key_available` on (sku_id, expires_at, id) WHERE status = 'available' holds just that
range: taking a key deletes its entry and adds none, releasing one adds it back, and the index is
as small as the stock on sale. The statements that walk it write the condition as the same
literal (a bound parameter cannot be proven to match it). See docs/decisions/0027.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 21:30:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

AVAILABLE = sa.text("status = 'available'")


def upgrade() -> None:
    op.create_index(
        "ix_vault_key_available",
        "vault_key",
        ["sku_id", "expires_at", "id"],
        sqlite_where=AVAILABLE,
        postgresql_where=AVAILABLE,
    )
    op.drop_index("ix_vault_key_claim", table_name="vault_key")


def downgrade() -> None:
    op.create_index(
        "ix_vault_key_claim", "vault_key", ["sku_id", "status", "expires_at", "id"]
    )
    op.drop_index("ix_vault_key_available", table_name="vault_key")
