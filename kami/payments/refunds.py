"""Refund records: what was asked of which channel, and what became of it.

A refund row is written (status `requested`) before the channel is called, so a crash or a
time-out leaves a record whose outcome the worker finds out by asking again with the same
refund number. Money counts as committed from that moment: a second refund can never push the
total past what the buyer paid, whatever the channels answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from kami.kernel.ids import new_token
from kami.payments.models import Refund


class RefundState(StrEnum):
    REQUESTED = "requested"  # written, channel not (known to be) asked yet: outcome unknown
    PROCESSING = "processing"  # the channel took it; money not back yet
    SUCCEEDED = "succeeded"
    FAILED = "failed"


OPEN_STATES = (RefundState.REQUESTED, RefundState.PROCESSING)
COMMITTED_STATES = (RefundState.REQUESTED, RefundState.PROCESSING, RefundState.SUCCEEDED)


@dataclass(frozen=True, slots=True)
class RefundView:
    id: int
    refund_no: str
    order_id: int
    order_no: str
    gateway: str
    request_key: str
    request_hash: str
    amount_minor: int
    currency: str
    reason: str
    status: RefundState
    origin: str
    keys: str
    positions: list[int] | None
    channel_refund_id: str | None
    detail: str | None
    requested_by: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    settled_at: datetime | None


def _view(r: Refund) -> RefundView:
    return RefundView(
        id=r.id,
        refund_no=r.refund_no,
        order_id=r.order_id,
        order_no=r.order_no,
        gateway=r.gateway,
        request_key=r.request_key,
        request_hash=r.request_hash,
        amount_minor=r.amount_minor,
        currency=r.currency,
        reason=r.reason,
        status=RefundState(r.status),
        origin=r.origin,
        keys=r.keys,
        positions=[int(p) for p in r.positions] if r.positions is not None else None,
        channel_refund_id=r.channel_refund_id,
        detail=r.detail,
        requested_by=r.requested_by,
        attempts=r.attempts,
        created_at=r.created_at,
        updated_at=r.updated_at,
        settled_at=r.settled_at,
    )


def new_refund_no() -> str:
    # Alipay's out_request_no allows 64, WeChat's out_refund_no 64, epay's 32: stay well inside.
    return "RF" + new_token(12).upper().replace("-", "X").replace("_", "Y")


def create_refund(
    session: Session,
    *,
    order_id: int,
    order_no: str,
    gateway: str,
    request_key: str,
    request_hash: str,
    amount_minor: int,
    currency: str,
    reason: str,
    keys: str,
    positions: Sequence[int] | None,
    now: datetime,
    status: RefundState = RefundState.REQUESTED,
    origin: str = "kami",
    requested_by: str | None = None,
    channel_refund_id: str | None = None,
    refund_no: str | None = None,
) -> RefundView:
    row = Refund(
        refund_no=refund_no or new_refund_no(),
        order_id=order_id,
        order_no=order_no,
        gateway=gateway,
        request_key=request_key,
        request_hash=request_hash,
        amount_minor=amount_minor,
        currency=currency,
        reason=reason,
        status=status,
        origin=origin,
        keys=keys,
        positions=list(positions) if positions is not None else None,
        channel_refund_id=channel_refund_id,
        requested_by=requested_by,
        attempts=0,
        created_at=now,
        updated_at=now,
        settled_at=now if status in (RefundState.SUCCEEDED, RefundState.FAILED) else None,
    )
    session.add(row)
    session.flush()
    return _view(row)


def find_refund(session: Session, refund_no: str) -> RefundView | None:
    row = session.execute(select(Refund).where(Refund.refund_no == refund_no)).scalar_one_or_none()
    return _view(row) if row else None


def find_by_request(session: Session, order_id: int, request_key: str) -> RefundView | None:
    row = session.execute(
        select(Refund).where(Refund.order_id == order_id, Refund.request_key == request_key)
    ).scalar_one_or_none()
    return _view(row) if row else None


def find_by_channel_id(session: Session, gateway: str, channel_refund_id: str) -> RefundView | None:
    row = session.execute(
        select(Refund).where(
            Refund.gateway == gateway, Refund.channel_refund_id == channel_refund_id
        )
    ).scalar_one_or_none()
    return _view(row) if row else None


def list_refunds(session: Session, order_id: int) -> list[RefundView]:
    rows = session.execute(
        select(Refund).where(Refund.order_id == order_id).order_by(Refund.id)
    ).scalars()
    return [_view(r) for r in rows]


def refunded_total(session: Session, order_id: int, states: Sequence[RefundState]) -> int:
    total = session.execute(
        select(func.coalesce(func.sum(Refund.amount_minor), 0)).where(
            Refund.order_id == order_id, Refund.status.in_([s.value for s in states])
        )
    ).scalar_one()
    return int(total)


def settle_refund(
    session: Session,
    refund_id: int,
    *,
    expected: Sequence[RefundState],
    status: RefundState,
    now: datetime,
    channel_refund_id: str | None = None,
    detail: str | None = None,
    raw: str | None = None,
    attempted: bool = False,
) -> bool:
    """Move a refund from one of `expected` to `status`; False if it was no longer there
    (a concurrent notification or query settled it first)."""
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if status in (RefundState.SUCCEEDED, RefundState.FAILED):
        values["settled_at"] = now
    if channel_refund_id:
        values["channel_refund_id"] = channel_refund_id[:255]
    if detail is not None:
        values["detail"] = detail[:2000]
    if raw is not None:
        values["raw"] = raw[: 64 * 1024]
    if attempted:
        values["attempts"] = Refund.attempts + 1
    result = session.execute(
        update(Refund)
        .where(Refund.id == refund_id, Refund.status.in_([s.value for s in expected]))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def due_refunds(session: Session, before: datetime, limit: int = 100) -> list[str]:
    """Refunds whose outcome is still open and that nobody looked at since `before`."""
    rows = session.execute(
        select(Refund.refund_no)
        .where(
            Refund.status.in_([s.value for s in OPEN_STATES]),
            Refund.updated_at < before,
            Refund.origin == "kami",
        )
        .order_by(Refund.updated_at)
        .limit(limit)
    )
    return list(rows.scalars())
