"""Recording notifications and applying payments at most once (invariants 2 and 3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from kami.kernel.clock import utcnow
from kami.kernel.prepared import Prepared
from kami.kernel.prepared_insert import PreparedInsert
from kami.payments.gateways.base import PaymentNotice, RawNotification, RefundNotice
from kami.payments.models import Inbox, Notification

MAX_BODY = 64 * 1024


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class NotificationView:
    id: int
    gateway: str
    received_at: datetime
    remote_addr: str | None
    method: str
    headers: dict[str, Any]
    query: dict[str, Any]
    body: str
    order_no: str | None
    trade_no: str | None
    verdict: str
    reason: str | None
    detail: str | None


_NOTIFICATION = PreparedInsert(
    Notification.__table__,
    [
        "gateway",
        "received_at",
        "remote_addr",
        "method",
        "headers",
        "query",
        "body",
        "order_no",
        "trade_no",
        "verdict",
        "reason",
        "detail",
    ],
)
_INBOX = PreparedInsert(
    Inbox.__table__,
    ["gateway", "trade_no", "order_id", "amount_minor", "currency", "applied_at"],
    Inbox.__table__.c.id,
    skip_conflicts_on=["gateway", "trade_no"],
)
_INBOX_ORDER = Prepared(
    select(Inbox.__table__.c.order_id).where(
        Inbox.__table__.c.gateway == bindparam("gateway"),
        Inbox.__table__.c.trade_no == bindparam("trade_no"),
    )
)


def record_notification(
    session: Session,
    raw: RawNotification,
    verdict: Verdict,
    *,
    notice: PaymentNotice | RefundNotice | None = None,
    order_no: str | None = None,
    reason: str | None = None,
    detail: str | None = None,
    received_at: datetime | None = None,
) -> None:
    """Keep the raw notification whatever became of it; the body is capped, never dropped."""
    # PostgreSQL text cannot hold NUL: it is stored as U+FFFD, like bytes that are not UTF-8.
    body = raw.body[:MAX_BODY].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    # Nobody reads its answer: on PostgreSQL it goes with the transaction's COMMIT.
    _NOTIFICATION.run_later(
        session,
        gateway=raw.gateway,
        received_at=received_at or utcnow(),
        remote_addr=raw.remote_addr,
        method=raw.method,
        headers=dict(raw.headers),
        query=dict(raw.query),
        body=body,
        order_no=(notice.order_no if notice else order_no),
        trade_no=notice.trade_no if notice else None,
        verdict=verdict,
        reason=reason,
        detail=(detail or "")[:2000] or None,
    )


def record_inbox(session: Session, notice: PaymentNotice, order_id: int) -> int | None:
    """Insert the inbox row; None if it was new, else the order id the trade was applied to.

    `ON CONFLICT DO NOTHING` makes a concurrent duplicate wait for the first writer and then see
    its row (PostgreSQL), or find it after the first commit (SQLite serialises writers), instead
    of failing with an error.
    """
    inserted = _INBOX.run(session, **_inbox_row(notice, order_id, utcnow()))
    if inserted.first() is not None:
        return None
    found = _INBOX_ORDER.run(session, {"gateway": notice.gateway, "trade_no": notice.trade_no})
    return int(found.scalar_one())


def record_inbox_each(session: Session, paid: Sequence[tuple[PaymentNotice, int]]) -> list[bool]:
    """`record_inbox` for each (notice, order id) of `paid`, in one round trip on PostgreSQL;
    whether each row was new. A trade found already recorded is only reported (False): the
    caller that cannot go on with it rolls back and applies the notices one by one."""
    applied_at = utcnow()
    inserted = _INBOX.run_each(
        session, [_inbox_row(notice, order_id, applied_at) for notice, order_id in paid]
    )
    return [rows.first() is not None for rows in inserted]


def _inbox_row(notice: PaymentNotice, order_id: int, applied_at: datetime) -> dict[str, object]:
    return {
        "gateway": notice.gateway,
        "trade_no": notice.trade_no,
        "order_id": order_id,
        "amount_minor": notice.amount_minor,
        "currency": notice.currency,
        "applied_at": applied_at,
    }


def _view(n: Notification) -> NotificationView:
    return NotificationView(
        id=n.id,
        gateway=n.gateway,
        received_at=n.received_at,
        remote_addr=n.remote_addr,
        method=n.method,
        headers=dict(n.headers),
        query=dict(n.query),
        body=n.body,
        order_no=n.order_no,
        trade_no=n.trade_no,
        verdict=n.verdict,
        reason=n.reason,
        detail=n.detail,
    )


def list_notifications(
    session: Session, *, order_no: str | None = None, verdict: str | None = None, limit: int = 100
) -> list[NotificationView]:
    stmt = select(Notification).order_by(Notification.id.desc()).limit(limit)
    if order_no:
        stmt = stmt.where(Notification.order_no == order_no)
    if verdict:
        stmt = stmt.where(Notification.verdict == verdict)
    return [_view(n) for n in session.execute(stmt).scalars()]
