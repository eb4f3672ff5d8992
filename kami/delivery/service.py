"""Recording what was delivered and who looked at it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from kami.delivery.models import Item, Reveal
from kami.kernel.prepared import Prepared
from kami.kernel.prepared_insert import PreparedInsert


@dataclass(frozen=True, slots=True)
class RevealView:
    revealed_at: datetime
    ip: str | None
    user_agent: str | None


_ITEM = PreparedInsert(
    Item.__table__,
    ["order_id", "position", "key_id", "shared", "line_id", "delivered_at", "valid_until"],
)
_REVEAL = PreparedInsert(Reveal.__table__, ["order_id", "revealed_at", "ip", "user_agent"])


def record_items(
    session: Session,
    order_id: int,
    key_ids: Sequence[int],
    now: datetime,
    *,
    start: int = 1,
    shared: bool = False,
    line_id: int | None = None,
    valid_until: datetime | None = None,
) -> None:
    """Keys delivered to the order, numbered from `start` in the order given. Goods with a
    validity period carry `valid_until` (delivered_at + the order's validity_days)."""
    if not key_ids:
        return
    # Nobody reads its answer: on PostgreSQL it goes with the transaction's next statement.
    _ITEM.run_many_later(
        session,
        [
            {
                "order_id": order_id,
                "position": n,
                "key_id": k,
                "shared": shared,
                "line_id": line_id,
                "delivered_at": now,
                "valid_until": valid_until,
            }
            for n, k in enumerate(key_ids, start=start)
        ],
    )


def record_licenses(
    session: Session,
    order_id: int,
    license_ids: Sequence[int],
    now: datetime,
    *,
    start: int,
    line_id: int | None = None,
    valid_until: datetime | None = None,
) -> None:
    session.execute(
        insert(Item),
        [
            {
                "order_id": order_id,
                "position": n,
                "license_id": lic,
                "line_id": line_id,
                "delivered_at": now,
                "valid_until": valid_until,
            }
            for n, lic in enumerate(license_ids, start=start)
        ],
    )


def next_position(session: Session, order_id: int) -> int:
    last = session.execute(
        select(func.max(Item.position)).where(Item.order_id == order_id)
    ).scalar_one()
    return int(last or 0) + 1


@dataclass(frozen=True, slots=True)
class LiveItem:
    position: int
    key_id: int | None
    license_id: int | None
    shared: bool
    valid_until: datetime | None = None


_I = Item.__table__
_LIVE = Prepared(
    select(_I.c.position, _I.c.key_id, _I.c.license_id, _I.c.shared, _I.c.valid_until)
    .where(_I.c.order_id == bindparam("order_id"), _I.c.revoked_at.is_(None))
    .order_by(_I.c.position)
)


def live_items(session: Session, order_id: int) -> list[LiveItem]:
    """The order's items that are not revoked, in delivery order."""
    rows = _LIVE.run(session, {"order_id": order_id})
    return [LiveItem(p, k, lic, bool(sh), vu) for p, k, lic, sh, vu in rows]


def count_shared(session: Session, key_id: int) -> int:
    """How many live items a reusable key stands in (units of it sold)."""
    return int(
        session.execute(
            select(func.count()).where(
                Item.key_id == key_id, Item.shared.is_(True), Item.revoked_at.is_(None)
            )
        ).scalar_one()
    )


def revoke_items(
    session: Session, order_id: int, positions: Sequence[int], reason: str, now: datetime
) -> list[LiveItem]:
    """Take these items back from the order (after a refund); returns what they held."""
    if not positions:
        return []
    rows = session.execute(
        update(Item)
        .where(
            Item.order_id == order_id,
            Item.position.in_(list(positions)),
            Item.revoked_at.is_(None),
        )
        .values(revoked_at=now, revoked_reason=reason[:200])
        .returning(Item.position, Item.key_id, Item.license_id, Item.shared)
        .execution_options(synchronize_session=False)
    )
    return sorted(
        (LiveItem(p, k, lic, bool(sh)) for p, k, lic, sh in rows.tuples()),
        key=lambda i: i.position,
    )


def record_reveal(
    session: Session, order_id: int, now: datetime, ip: str | None, user_agent: str | None
) -> None:
    _REVEAL.run(
        session,
        order_id=order_id,
        revealed_at=now,
        ip=ip,
        user_agent=(user_agent or "")[:512] or None,
    )


def list_reveals(session: Session, order_id: int) -> list[RevealView]:
    rows = session.execute(
        select(Reveal).where(Reveal.order_id == order_id).order_by(Reveal.id)
    ).scalars()
    return [RevealView(r.revealed_at, r.ip, r.user_agent) for r in rows]


# -- one item, as the after-sales flow needs it ------------------------------------------------
@dataclass(frozen=True, slots=True)
class ItemView:
    order_id: int
    position: int
    key_id: int | None
    license_id: int | None
    shared: bool
    line_id: int | None
    delivered_at: datetime
    revoked_at: datetime | None
    valid_until: datetime | None


def get_item(session: Session, order_id: int, position: int) -> ItemView | None:
    row = session.execute(
        select(Item).where(Item.order_id == order_id, Item.position == position)
    ).scalar_one_or_none()
    if row is None:
        return None
    return ItemView(
        row.order_id,
        row.position,
        row.key_id,
        row.license_id,
        bool(row.shared),
        row.line_id,
        row.delivered_at,
        row.revoked_at,
        row.valid_until,
    )


# -- validity reminders ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReminderDue:
    order_id: int
    positions: list[int]
    valid_until: datetime  # the earliest end among them
    live: bool  # False: all of them revoked or already ended, nothing to remind of


def take_reminders_due(
    session: Session, until: datetime, now: datetime, *, orders_limit: int = 200
) -> list[ReminderDue]:
    """Mark the items ending by `until` as reminded and return them grouped by order.

    The guarded UPDATE (`reminded_at IS NULL`) is the claim: a concurrent sweep updates other
    rows or none, so each item is handed out once; the caller enqueues the mail in the same
    transaction, so marking and mailing commit together. Revoked and already-ended items are
    marked too (and reported with live=False) so the sweep never reads them again.
    """
    due = (
        (Item.reminded_at.is_(None)) & (Item.valid_until.is_not(None)) & (Item.valid_until <= until)
    )
    order_ids = list(
        session.execute(
            select(Item.order_id)
            .where(due)
            .group_by(Item.order_id)
            .order_by(func.min(Item.valid_until))
            .limit(orders_limit)
        ).scalars()
    )
    if not order_ids:
        return []
    rows = session.execute(
        update(Item)
        .where(due, Item.order_id.in_(order_ids))
        .values(reminded_at=now)
        .returning(Item.order_id, Item.position, Item.valid_until, Item.revoked_at)
        .execution_options(synchronize_session=False)
    ).tuples()
    grouped: dict[int, list[tuple[int, datetime]]] = {}
    for order_id, position, valid_until, revoked_at in rows:
        if valid_until is None:  # pragma: no cover - excluded by the WHERE clause
            continue
        if revoked_at is None and valid_until > now:
            grouped.setdefault(order_id, []).append((position, valid_until))
        else:
            grouped.setdefault(order_id, [])
    out = []
    for order_id in sorted(grouped):
        live = sorted(grouped[order_id])
        out.append(
            ReminderDue(
                order_id,
                [p for p, _ in live],
                min((v for _, v in live), default=now),
                bool(live),
            )
        )
    return out
