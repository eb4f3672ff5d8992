"""Durable jobs for side effects that leave the process (mail, webhooks, supplier calls).

A job is written in the same transaction as the state change that calls for it, so a committed
change always has its job and a rolled-back one never does. Running is at-least-once: a job is
leased, run outside any transaction, then marked done; a process killed mid-run leaves a lease
that expires and the job runs again, so handlers must be idempotent. A job that keeps failing is
parked (kept, listed, retryable), never dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Integer, String, Text, func, insert, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from kami.kernel.clock import utcnow
from kami.kernel.db import Base, Database, UtcDateTime

log = logging.getLogger("kami.outbox")

MAX_ATTEMPTS = 8
LEASE = timedelta(minutes=5)


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    PARKED = "parked"


class OutboxJob(Base):
    __tablename__ = "kernel_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    # What the job is about (an order number, …), so a timeline can list its jobs.
    ref: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_after: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


@dataclass(frozen=True, slots=True)
class JobView:
    id: int
    kind: str
    ref: str | None
    payload: dict[str, Any]
    status: str
    attempts: int
    run_after: datetime
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None


Handler = Callable[[dict[str, Any]], None]


class PermanentJobError(Exception):
    """Raised by a handler when retrying cannot help; the job is parked at once."""


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    ref: str | None = None,
    delay: timedelta | None = None,
) -> None:
    now = utcnow()
    # A Core insert: no unit-of-work bookkeeping for a row nothing in this session reads back.
    session.execute(
        insert(OutboxJob).values(
            kind=kind,
            ref=ref,
            payload=payload,
            status=JobStatus.PENDING,
            attempts=0,
            run_after=now + (delay or timedelta(0)),
            created_at=now,
        )
    )


def backoff(attempts: int) -> timedelta:
    """5 s, 10 s, 20 s … capped at one hour."""
    return timedelta(seconds=min(3600, 5 * 2 ** max(0, attempts - 1)))


def _lease_one(db: Database) -> OutboxJob | None:
    now = utcnow()
    with db.write() as s:
        due = ((OutboxJob.status == JobStatus.PENDING) & (OutboxJob.run_after <= now)) | (
            (OutboxJob.status == JobStatus.RUNNING) & (OutboxJob.locked_until < now)
        )
        pick = select(OutboxJob.id).where(due).order_by(OutboxJob.run_after).limit(1)
        if db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(OutboxJob)
            .where(OutboxJob.id == pick.scalar_subquery(), due)
            .values(
                status=JobStatus.RUNNING,
                locked_until=now + LEASE,
                attempts=OutboxJob.attempts + 1,
            )
            .returning(OutboxJob)
        )
        return s.execute(stmt).scalars().first()


def run_due_jobs(db: Database, handlers: Mapping[str, Handler], *, limit: int = 100) -> int:
    """Run up to `limit` due jobs; returns how many were run (successfully or not)."""
    ran = 0
    while ran < limit:
        job = _lease_one(db)
        if job is None:
            break
        ran += 1
        handler = handlers.get(job.kind)
        error: str | None
        permanent = False
        if handler is None:
            error, permanent = f"no handler for job kind {job.kind!r}", True
        else:
            try:
                handler(dict(job.payload))
                error = None
            except PermanentJobError as exc:
                error, permanent = f"{type(exc).__name__}: {exc}", True
            except Exception as exc:  # any failure is retried; the worker itself must survive
                error = f"{type(exc).__name__}: {exc}"
        _finish(db, job, error, permanent)
    return ran


def _finish(db: Database, job: OutboxJob, error: str | None, permanent: bool) -> None:
    now = utcnow()
    if error is None:
        values: dict[str, Any] = {
            "status": JobStatus.DONE,
            "finished_at": now,
            "locked_until": None,
        }
    elif permanent or job.attempts >= MAX_ATTEMPTS:
        log.error("job %s (%s) parked after %d attempts: %s", job.id, job.kind, job.attempts, error)
        values = {"status": JobStatus.PARKED, "last_error": error[:2000], "locked_until": None}
    else:
        log.warning("job %s (%s) failed, will retry: %s", job.id, job.kind, error)
        values = {
            "status": JobStatus.PENDING,
            "last_error": error[:2000],
            "locked_until": None,
            "run_after": now + backoff(job.attempts),
        }
    with db.write() as s:
        s.execute(update(OutboxJob).where(OutboxJob.id == job.id).values(**values))


def _view(job: OutboxJob) -> JobView:
    return JobView(
        id=job.id,
        kind=job.kind,
        ref=job.ref,
        payload=dict(job.payload),
        status=job.status,
        attempts=job.attempts,
        run_after=job.run_after,
        last_error=job.last_error,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


def list_jobs(
    session: Session, *, status: str | None = None, ref: str | None = None, limit: int = 100
) -> list[JobView]:
    stmt = select(OutboxJob).order_by(OutboxJob.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(OutboxJob.status == status)
    if ref:
        stmt = stmt.where(OutboxJob.ref == ref)
    return [_view(j) for j in session.execute(stmt).scalars()]


def count_jobs(session: Session) -> dict[str, int]:
    rows = session.execute(select(OutboxJob.status, func.count()).group_by(OutboxJob.status))
    return {status: n for status, n in rows.tuples()}


def retry_job(session: Session, job_id: int) -> bool:
    """Put a parked job back in the queue; True if one was parked."""
    result = session.execute(
        update(OutboxJob)
        .where(OutboxJob.id == job_id, OutboxJob.status == JobStatus.PARKED)
        .values(status=JobStatus.PENDING, attempts=0, run_after=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
