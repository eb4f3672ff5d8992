"""Recording what was delivered and who looked at it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from kami.delivery.models import Item, Reveal


@dataclass(frozen=True, slots=True)
class RevealView:
    revealed_at: datetime
    ip: str | None
    user_agent: str | None


def record_items(session: Session, order_id: int, key_ids: Sequence[int], now: datetime) -> None:
    session.execute(
        insert(Item),
        [
            {"order_id": order_id, "position": n, "key_id": k, "delivered_at": now}
            for n, k in enumerate(key_ids, start=1)
        ],
    )


def item_key_ids(session: Session, order_id: int) -> list[int]:
    """The keys the order holds now (revoked items left out), in delivery order."""
    rows = session.execute(
        select(Item.key_id)
        .where(Item.order_id == order_id, Item.revoked_at.is_(None))
        .order_by(Item.position)
    )
    return list(rows.scalars())


def live_items(session: Session, order_id: int) -> list[tuple[int, int]]:
    """(position, key_id) of the order's items that are not revoked."""
    rows = session.execute(
        select(Item.position, Item.key_id)
        .where(Item.order_id == order_id, Item.revoked_at.is_(None))
        .order_by(Item.position)
    )
    return [(p, k) for p, k in rows.tuples()]


def revoke_items(
    session: Session, order_id: int, positions: Sequence[int], reason: str, now: datetime
) -> list[int]:
    """Take these items back from the order (after a refund); returns their key ids."""
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
        .returning(Item.key_id)
        .execution_options(synchronize_session=False)
    )
    return sorted(rows.scalars())


def record_reveal(
    session: Session, order_id: int, now: datetime, ip: str | None, user_agent: str | None
) -> None:
    session.add(
        Reveal(
            order_id=order_id, revealed_at=now, ip=ip, user_agent=(user_agent or "")[:512] or None
        )
    )


def list_reveals(session: Session, order_id: int) -> list[RevealView]:
    rows = session.execute(
        select(Reveal).where(Reveal.order_id == order_id).order_by(Reveal.id)
    ).scalars()
    return [RevealView(r.revealed_at, r.ip, r.user_agent) for r in rows]
