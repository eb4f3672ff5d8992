"""orders: the times of orders placed in a flash sale's group, in the column's own format (SQLite)

An INSERT of several orders at once (`orders.create_orders`, a flash sale's group, decision
0020) gave its binds their columns' types in the first row only. On SQLite the rows after it
stored `created_at` and `expires_at` as sqlite3 writes an aware datetime
(`2026-12-07 12:04:03.125008+00:00`, or without the fraction when it is zero) where every
other value of the column reads `2026-12-07 12:04:03.125008`. They read back as the same
instant, but compare and sort as text against the rest: at the same second, one of them sorts
after a value that is later. The insert is fixed; this rewrites the values it stored. PostgreSQL
stored them correctly and is left alone.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 12:00:00
"""
from alembic import op


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

_COLUMNS = ("created_at", "expires_at")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for column in _COLUMNS:
        # With a fraction: drop the offset. Without one (a zero fraction): write it, as the
        # column's other values have it.
        op.execute(
            f"UPDATE orders_order SET {column} = substr({column}, 1, 26) "
            f"WHERE {column} LIKE '____-__-__ __:__:__.______+00:00'"
        )
        op.execute(
            f"UPDATE orders_order SET {column} = substr({column}, 1, 19) || '.000000' "
            f"WHERE {column} LIKE '____-__-__ __:__:__+00:00'"
        )


def downgrade() -> None:
    pass  # nothing to undo: the values mean the same instants in either spelling
