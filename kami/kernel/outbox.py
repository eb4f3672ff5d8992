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
from time import monotonic
from typing import Any

from sqlalchemy import (
    JSON,
    Index,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from kami.kernel.clock import utcnow
from kami.kernel.db import Base, Database, UtcDateTime
from kami.kernel.prepared_insert import PreparedInsert

log = logging.getLogger("kami.outbox")

MAX_ATTEMPTS = 8
LEASE = timedelta(minutes=5)

# The jobs the worker looks at: waiting, or leased (a lease that lapses makes its job due again).
# Written the same in the index and in the poll, so SQLite sees that the index serves it.
LIVE = text("status IN ('pending', 'running')")


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    PARKED = "parked"


class OutboxJob(Base):
    __tablename__ = "kernel_outbox"
    __table_args__ = (
        # The poll's own index (migration 0017): live jobs only, in the order they fall due, so
        # a poll reads the jobs it leases and stops. Done jobs, and the dead entries each status
        # change leaves behind, are not in it.
        Index("ix_kernel_outbox_due", "run_after", sqlite_where=LIVE, postgresql_where=LIVE),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    # What the job is about (an order number, …), so a timeline can list its jobs.
    ref: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the job may run: for a pending job its first run or its next retry, for a leased
    # (running) one the moment its lease lapses, when it is due again.
    run_after: Mapped[datetime] = mapped_column(UtcDateTime)
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


_ENQUEUE = PreparedInsert(
    OutboxJob.__table__,
    ["kind", "ref", "payload", "status", "attempts", "run_after", "created_at"],
)


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    ref: str | None = None,
    delay: timedelta | None = None,
) -> None:
    now = utcnow()
    # Nobody reads its answer: on PostgreSQL it goes with the transaction's next statement or
    # its COMMIT (decision 0021).
    _ENQUEUE.run_later(
        session,
        kind=kind,
        ref=ref,
        payload=payload,
        status=JobStatus.PENDING.value,
        attempts=0,
        run_after=now + (delay or timedelta(0)),
        created_at=now,
    )


def backoff(attempts: int) -> timedelta:
    """5 s, 10 s, 20 s … capped at one hour."""
    return timedelta(seconds=min(3600, 5 * 2 ** max(0, attempts - 1)))


# Jobs leased per transaction. Leasing and finishing one at a time cost two write transactions
# per job, which on SQLite queue behind the shop's own writers (measured on the purchase bench:
# the worker's transactions were two in five of all writes).
LEASE_BATCH = 32


@dataclass(frozen=True, slots=True)
class _Leased:
    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    # The lease's end, which is the lease's mark: a runner whose lease lapsed and went to another
    # finishes, fails or gives back nothing (the row's `locked_until` is no longer this).
    lease_end: datetime


def _due(now: datetime) -> Any:
    """Pending jobs whose time has come and leased ones whose lease has lapsed: a lease moves
    `run_after` to its end, so one range of `ix_kernel_outbox_due` holds both. The lease's own
    end is asked too, for a lease taken by a worker older than migration 0017, which moved
    `locked_until` only."""
    return and_(
        LIVE,
        OutboxJob.run_after <= now,
        or_(OutboxJob.locked_until.is_(None), OutboxJob.locked_until <= now),
    )


# The same poll, told which index to use: without statistics SQLite prefers the index on status
# and sorts every live job. If the index could not serve it, SQLite refuses the statement.
_PICK_SQLITE = text(
    f"SELECT id FROM kernel_outbox INDEXED BY ix_kernel_outbox_due WHERE {LIVE.text}"  # noqa: S608
    " AND run_after <= :now AND (locked_until IS NULL OR locked_until <= :now)"
    " ORDER BY run_after LIMIT :limit"
).bindparams(bindparam("now", type_=UtcDateTime()), bindparam("limit", type_=Integer()))

_NO_BITMAP = text("SET LOCAL enable_bitmapscan = off")


def _lease(db: Database, limit: int) -> list[_Leased]:
    """Up to `limit` due jobs, oldest first, leased in one transaction."""
    now = utcnow()
    with db.write() as s:
        if db.dialect == "postgresql":
            # An index scan marks the dead entries it meets (each status change leaves one) so
            # the next poll skips them; a bitmap scan, which the planner picks for a short queue,
            # reads them all again on every poll until the table is vacuumed.
            s.execute(_NO_BITMAP)
            pick = select(OutboxJob.id).where(_due(now)).order_by(OutboxJob.run_after).limit(limit)
            # A second worker takes other jobs.
            ids = list(s.execute(pick.with_for_update(skip_locked=True)).scalars())
        else:
            ids = list(s.execute(_PICK_SQLITE, {"now": now, "limit": limit}).scalars())
        if not ids:
            return []
        end = now + LEASE
        rows = s.execute(
            update(OutboxJob)
            .where(OutboxJob.id.in_(ids), _due(now))
            .values(
                status=JobStatus.RUNNING,
                locked_until=end,
                run_after=end,
                attempts=OutboxJob.attempts + 1,
            )
            .returning(OutboxJob.id, OutboxJob.kind, OutboxJob.payload, OutboxJob.attempts)
        ).all()
    order = {job_id: n for n, job_id in enumerate(ids)}
    leased = [_Leased(r.id, r.kind, dict(r.payload), r.attempts, end) for r in rows]
    return sorted(leased, key=lambda j: order[j.id])


def run_due_jobs(db: Database, handlers: Mapping[str, Handler], *, limit: int = 100) -> int:
    """Run up to `limit` due jobs; returns how many were run (successfully or not).

    Jobs are leased in batches and the successful ones of a batch marked done together; a
    failure is recorded at once. A batch that runs past half its lease gives its remaining jobs
    back rather than let the lease lapse under them.
    """
    ran = 0
    while ran < limit:
        batch = _lease(db, min(LEASE_BATCH, limit - ran))
        if not batch:
            break
        started = monotonic()
        done: list[_Leased] = []
        try:
            for n, job in enumerate(batch):
                if monotonic() - started > LEASE.total_seconds() / 2:
                    _give_back(db, batch[n:])
                    return ran
                ran += 1
                if job.attempts > MAX_ATTEMPTS:
                    # Its last lease lapsed: a run that never ended (the worker died in it, a
                    # handler that kills its process). Parked, not run again without end.
                    ended = f"{job.attempts - 1} leases, the last lapsed after {LEASE}"
                    _finish(db, job, f"none of its last runs ended: {ended}", True)
                    continue
                error, permanent = _run(job, handlers)
                if error is None:
                    done.append(job)
                else:
                    _finish(db, job, error, permanent)
        finally:
            _mark_done(db, done)
        if len(batch) < LEASE_BATCH:
            break
    return ran


def _run(job: _Leased, handlers: Mapping[str, Handler]) -> tuple[str | None, bool]:
    handler = handlers.get(job.kind)
    if handler is None:
        return f"no handler for job kind {job.kind!r}", True
    try:
        handler(dict(job.payload))
    except PermanentJobError as exc:
        return f"{type(exc).__name__}: {exc}", True
    except Exception as exc:  # any failure is retried; the worker itself must survive
        return f"{type(exc).__name__}: {exc}", False
    return None, False


def _still_ours(jobs: list[_Leased]) -> Any:
    """The rows of `jobs`, leased together, still under that lease."""
    [end] = {j.lease_end for j in jobs}
    return and_(
        OutboxJob.id.in_([j.id for j in jobs]),
        OutboxJob.status == JobStatus.RUNNING,
        OutboxJob.locked_until == end,
    )


def _mark_done(db: Database, jobs: list[_Leased]) -> None:
    if not jobs:
        return
    now = utcnow()
    with db.write() as s:
        s.execute(
            update(OutboxJob)
            .where(_still_ours(jobs))
            .values(status=JobStatus.DONE, finished_at=now, run_after=now, locked_until=None)
        )


def _give_back(db: Database, jobs: list[_Leased]) -> None:
    """Leased but not run: pending again, and the attempt they never had is not counted."""
    with db.write() as s:
        s.execute(
            update(OutboxJob)
            .where(_still_ours(jobs))
            .values(
                status=JobStatus.PENDING,
                locked_until=None,
                run_after=utcnow(),
                attempts=OutboxJob.attempts - 1,
            )
        )


def _finish(db: Database, job: _Leased, error: str, permanent: bool) -> None:
    """A failed run recorded: parked, or pending again after its backoff. (Runs that succeed
    are marked done together, `_mark_done`.)"""
    now = utcnow()
    values: dict[str, Any]
    if permanent or job.attempts >= MAX_ATTEMPTS:
        log.error("job %s (%s) parked after %d attempts: %s", job.id, job.kind, job.attempts, error)
        values = {
            "status": JobStatus.PARKED,
            "last_error": error[:2000],
            "run_after": now,
            "locked_until": None,
        }
    else:
        log.warning("job %s (%s) failed, will retry: %s", job.id, job.kind, error)
        values = {
            "status": JobStatus.PENDING,
            "last_error": error[:2000],
            "locked_until": None,
            "run_after": now + backoff(job.attempts),
        }
    with db.write() as s:
        s.execute(update(OutboxJob).where(_still_ours([job])).values(**values))


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
