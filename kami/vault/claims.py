"""Claiming keys for an order: one guarded statement, never read-then-write (invariant 1).

`UPDATE … FROM (<earliest-expiring available ids>) WHERE status = 'available' RETURNING id`
takes keys only if they are still available at the moment of the write. On PostgreSQL the inner
select uses `FOR UPDATE SKIP LOCKED`, so concurrent claimers take different rows instead of
queueing behind one another; on SQLite writers are serialised by `BEGIN IMMEDIATE`. The unique
`delivery_item.key_id` constraint stands behind it. All or none: a short claim is put back.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kami.vault.models import Key
from kami.vault.states import KeyStatus


def claim_keys(
    session: Session, sku_id: int, order_id: int, quantity: int, now: datetime
) -> list[int]:
    """Mark `quantity` keys sold to `order_id`; returns their ids, or [] if stock is short."""
    if quantity <= 0:
        return []
    pick = (
        select(Key.id)
        .where(Key.sku_id == sku_id, Key.status == KeyStatus.AVAILABLE, Key.expires_at > now)
        .order_by(Key.expires_at, Key.id)
        .limit(quantity)
    )
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    # A MATERIALIZED CTE, not `id IN (subquery)` nor a derived table: PostgreSQL may rescan
    # those once per outer row, and a rescanned LIMIT … SKIP LOCKED skips the rows this very
    # statement just updated and returns further ones (seen: three keys claimed for a quantity
    # of two). A materialized CTE is evaluated exactly once.
    picked = pick.cte("picked").prefix_with("MATERIALIZED")
    stmt = (
        update(Key)
        .where(Key.id == picked.c.id, Key.status == KeyStatus.AVAILABLE)
        .values(status=KeyStatus.SOLD, order_id=order_id, sold_at=now)
        .returning(Key.id)
        .execution_options(synchronize_session=False)
    )
    ids = list(session.execute(stmt).scalars())
    if len(ids) < quantity:
        if ids:
            session.execute(
                update(Key)
                .where(Key.id.in_(ids), Key.order_id == order_id)
                .values(status=KeyStatus.AVAILABLE, order_id=None, sold_at=None)
                .execution_options(synchronize_session=False)
            )
        return []
    return sorted(ids)


def has_stock(session: Session, sku_id: int, quantity: int, now: datetime) -> bool:
    """Whether `quantity` keys are sellable now; reads at most `quantity` index entries."""
    rows = session.execute(
        select(Key.id)
        .where(Key.sku_id == sku_id, Key.status == KeyStatus.AVAILABLE, Key.expires_at > now)
        .limit(quantity)
    ).all()
    return len(rows) >= quantity
