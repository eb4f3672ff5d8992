"""After-sales reports: a buyer says a delivered item does not work; the seller's policy or
review decides what becomes of it. Write operations never commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from kami.delivery.models import Report
from kami.delivery.service import ItemView
from kami.kernel.ids import new_token


class ReportStatus(StrEnum):
    OPEN = "open"  # waiting for the seller's review
    REPLACED = "replaced"
    REFUNDED = "refunded"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class ReportView:
    report_no: str
    order_id: int
    position: int
    origin_position: int
    key_id: int | None
    license_id: int | None
    problem: str
    note: str | None
    status: ReportStatus
    review_reason: str | None
    resolution: str | None
    resolved_by: str | None
    resolution_note: str | None
    replacement_position: int | None
    refund_no: str | None
    refund_minor: int | None
    created_at: datetime
    resolved_at: datetime | None


def _report_view(r: Report) -> ReportView:
    return ReportView(
        r.report_no,
        r.order_id,
        r.position,
        r.origin_position,
        r.key_id,
        r.license_id,
        r.problem,
        r.note,
        ReportStatus(r.status),
        r.review_reason,
        r.resolution,
        r.resolved_by,
        r.resolution_note,
        r.replacement_position,
        r.refund_no,
        r.refund_minor,
        r.created_at,
        r.resolved_at,
    )


def origin_position(session: Session, order_id: int, position: int) -> int:
    """The position first delivered that this item (a replacement, perhaps) stands for."""
    origin = session.execute(
        select(Report.origin_position).where(
            Report.order_id == order_id, Report.replacement_position == position
        )
    ).scalar_one_or_none()
    return position if origin is None else int(origin)


def count_replacements(session: Session, order_id: int, origin: int) -> int:
    return int(
        session.execute(
            select(func.count()).where(
                Report.order_id == order_id,
                Report.origin_position == origin,
                Report.status == ReportStatus.REPLACED,
            )
        ).scalar_one()
    )


def open_report_of(session: Session, order_id: int, position: int) -> ReportView | None:
    row = session.execute(
        select(Report).where(
            Report.order_id == order_id,
            Report.position == position,
            Report.status == ReportStatus.OPEN,
        )
    ).scalar_one_or_none()
    return None if row is None else _report_view(row)


def create_report(
    session: Session,
    *,
    order_id: int,
    item: ItemView,
    origin: int,
    problem: str,
    note: str | None,
    review_reason: str | None,
    now: datetime,
) -> ReportView:
    """An open report; the partial unique index refuses a second open one for the item."""
    report = Report(
        report_no=new_token(12),
        order_id=order_id,
        position=item.position,
        origin_position=origin,
        key_id=item.key_id,
        license_id=item.license_id,
        problem=problem,
        note=note,
        status=ReportStatus.OPEN,
        review_reason=review_reason[:200] if review_reason else None,
        created_at=now,
    )
    session.add(report)
    session.flush()
    return _report_view(report)


def resolve_report(
    session: Session,
    report_no: str,
    status: ReportStatus,
    *,
    resolution: str,
    actor: str,
    now: datetime,
    note: str | None = None,
    replacement_position: int | None = None,
    refund_no: str | None = None,
    refund_minor: int | None = None,
) -> bool:
    """Close an open report; False if it was not open (resolved by someone else meanwhile)."""
    result = session.execute(
        update(Report)
        .where(Report.report_no == report_no, Report.status == ReportStatus.OPEN)
        .values(
            status=status,
            resolution=resolution,
            resolved_by=actor[:64],
            resolution_note=note,
            replacement_position=replacement_position,
            refund_no=refund_no,
            refund_minor=refund_minor,
            resolved_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def set_review_reason(session: Session, report_no: str, reason: str) -> None:
    session.execute(
        update(Report)
        .where(Report.report_no == report_no, Report.status == ReportStatus.OPEN)
        .values(review_reason=reason[:200])
        .execution_options(synchronize_session=False)
    )


def find_report(session: Session, report_no: str, *, for_update: bool = False) -> ReportView | None:
    stmt = select(Report).where(Report.report_no == report_no)
    if for_update:
        stmt = stmt.with_for_update()
    row = session.execute(stmt).scalar_one_or_none()
    return None if row is None else _report_view(row)


def list_reports(
    session: Session,
    *,
    status: ReportStatus | None = None,
    order_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[ReportView]:
    """Oldest first: the review queue is worked from its head."""
    stmt = select(Report).order_by(Report.created_at, Report.id).limit(limit).offset(offset)
    if status is not None:
        stmt = stmt.where(Report.status == status)
    if order_id is not None:
        stmt = stmt.where(Report.order_id == order_id)
    return [_report_view(r) for r in session.execute(stmt).scalars()]
