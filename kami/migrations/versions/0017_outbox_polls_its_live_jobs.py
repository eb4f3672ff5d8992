"""outbox: the worker's poll reads the live jobs through an index of its own

The worker leased due jobs with `(status = 'pending' AND run_after <= now) OR (status =
'running' AND locked_until < now)`, served by the index on status alone. Every change of a job's
status leaves an entry behind in that index until the table is vacuumed, and a bitmap scan on
PostgreSQL never marks them dead, so each poll read them all again: on the purchase benchmark
2,611 entries a poll on average (786 polls, 5,000 jobs) to lease a few. A backlog of jobs
waiting for a retry was read whole on every poll too.

Now a lease moves `run_after` to the lease's end, so "due" is one condition for both kinds,
`status IN ('pending', 'running') AND run_after <= now`, and a partial index on `run_after` of
the live jobs serves it in due order: a poll reads what it leases. Jobs leased when this runs get
their lease's end as `run_after`, so none of them is taken again before it lapses. The plain
index on `run_after`, which only the poll used, goes.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 19:00:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

LIVE = sa.text("status IN ('pending', 'running')")


def upgrade() -> None:
    op.execute(
        "UPDATE kernel_outbox SET run_after = locked_until "
        "WHERE status = 'running' AND locked_until IS NOT NULL"
    )
    op.drop_index("ix_kernel_outbox_run_after", table_name="kernel_outbox")
    op.create_index(
        "ix_kernel_outbox_due",
        "kernel_outbox",
        ["run_after"],
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )


def downgrade() -> None:
    op.drop_index("ix_kernel_outbox_due", table_name="kernel_outbox")
    op.create_index("ix_kernel_outbox_run_after", "kernel_outbox", ["run_after"])
