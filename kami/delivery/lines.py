"""Delivery lines: the parts of a paid order and where each one stands, with its events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from kami.delivery.models import Line, LineEvent


class LineStatus(StrEnum):
    WAITING = "waiting"  # keys to be loaded (card-key component out of stock)
    PENDING = "pending"  # an attempt is due at due_at (webhook, supplier, operator)
    PROCESSING = "processing"  # asked, answer not known yet (supplier processing, time-out)
    DELIVERED = "delivered"
    FAILED = "failed"  # given up: its share is refunded


OPEN = (LineStatus.WAITING, LineStatus.PENDING, LineStatus.PROCESSING)
FINAL = (LineStatus.DELIVERED, LineStatus.FAILED)


@dataclass(frozen=True, slots=True)
class LineSpec:
    sku_id: int
    sku_code: str
    kind: str
    quantity: int
    share_minor: int


@dataclass(frozen=True, slots=True)
class LineView:
    id: int
    order_id: int
    position: int
    sku_id: int
    sku_code: str
    kind: str
    quantity: int
    share_minor: int
    status: LineStatus
    attempts: int
    due_at: datetime | None
    detail: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class LineEventView:
    line_id: int
    position: int
    at: datetime
    event: str
    detail: str | None


def _view(r: Line) -> LineView:
    return LineView(
        id=r.id,
        order_id=r.order_id,
        position=r.position,
        sku_id=r.sku_id,
        sku_code=r.sku_code,
        kind=r.kind,
        quantity=r.quantity,
        share_minor=r.share_minor,
        status=LineStatus(r.status),
        attempts=r.attempts,
        due_at=r.due_at,
        detail=r.detail,
        created_at=r.created_at,
        finished_at=r.finished_at,
    )


def create_lines(
    session: Session, order_id: int, specs: Sequence[LineSpec], now: datetime
) -> list[LineView]:
    rows = [
        Line(
            order_id=order_id,
            position=n,
            sku_id=spec.sku_id,
            sku_code=spec.sku_code,
            kind=spec.kind,
            quantity=spec.quantity,
            share_minor=spec.share_minor,
            status=LineStatus.PENDING,
            attempts=0,
            due_at=now,
            created_at=now,
            updated_at=now,
        )
        for n, spec in enumerate(specs, start=1)
    ]
    session.add_all(rows)
    session.flush()
    return [_view(r) for r in rows]


def get_line(session: Session, line_id: int, *, for_update: bool = False) -> LineView | None:
    stmt = select(Line).where(Line.id == line_id)
    if for_update and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = session.execute(stmt).scalar_one_or_none()
    return _view(row) if row else None


def order_lines(session: Session, order_id: int) -> list[LineView]:
    rows = session.execute(select(Line).where(Line.order_id == order_id).order_by(Line.position))
    return [_view(r) for r in rows.scalars()]


def move_line(
    session: Session,
    line_id: int,
    expected: Sequence[LineStatus],
    status: LineStatus,
    now: datetime,
    *,
    detail: str | None = None,
    due_at: datetime | None = None,
    attempted: bool = False,
) -> bool:
    """Guarded change of a line's status; False when another worker moved it first."""
    values: dict[str, Any] = {"status": status, "updated_at": now, "due_at": due_at}
    if detail is not None:
        values["detail"] = detail[:2000]
    if status in FINAL:
        values["finished_at"] = now
    if attempted:
        values["attempts"] = Line.attempts + 1
    result = session.execute(
        update(Line)
        .where(Line.id == line_id, Line.status.in_([s.value for s in expected]))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def due_lines(
    session: Session, now: datetime, kinds: Sequence[str], limit: int = 100
) -> list[LineView]:
    """Lines of these kinds whose next attempt is due."""
    rows = session.execute(
        select(Line)
        .where(
            Line.status.in_([LineStatus.PENDING.value, LineStatus.PROCESSING.value]),
            Line.kind.in_(list(kinds)),
            Line.due_at <= now,
        )
        .order_by(Line.due_at)
        .limit(limit)
    )
    return [_view(r) for r in rows.scalars()]


def waiting_lines(session: Session, limit: int = 500) -> list[LineView]:
    rows = session.execute(
        select(Line).where(Line.status == LineStatus.WAITING.value).order_by(Line.id).limit(limit)
    )
    return [_view(r) for r in rows.scalars()]


def lines_with_status(
    session: Session, status: LineStatus, kinds: Sequence[str], limit: int = 200
) -> list[LineView]:
    rows = session.execute(
        select(Line)
        .where(Line.status == status.value, Line.kind.in_(list(kinds)))
        .order_by(Line.id)
        .limit(limit)
    )
    return [_view(r) for r in rows.scalars()]


def add_event(
    session: Session,
    line: LineView,
    event: str,
    now: datetime,
    detail: str | None = None,
) -> None:
    session.execute(
        insert(LineEvent).values(
            line_id=line.id,
            order_id=line.order_id,
            at=now,
            event=event[:48],
            detail=(detail or "")[:2000] or None,
        )
    )


def line_events(session: Session, order_id: int) -> list[LineEventView]:
    rows = session.execute(
        select(LineEvent, Line.position)
        .join(Line, Line.id == LineEvent.line_id)
        .where(LineEvent.order_id == order_id)
        .order_by(LineEvent.id)
    )
    return [LineEventView(e.line_id, pos, e.at, e.event, e.detail) for e, pos in rows.tuples()]
