"""Recording what was delivered and who looked at it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select
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
    rows = session.execute(
        select(Item.key_id).where(Item.order_id == order_id).order_by(Item.position)
    )
    return list(rows.scalars())


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
