"""What a driver's failure becomes: a lock wait cut short is WouldWait, anything else
SQLAlchemy's own exception with the statement's SQL and its parameters hidden."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from kami.kernel import waiting
from kami.kernel.waiting import WouldWait

LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout ran out, or NOWAIT found a lock
SQLITE_BUSY = 5  # SQLite: its busy handler gave up on another connection's lock


def lock_refusal(exc: BaseException) -> WouldWait | None:
    """WouldWait for a lock wait cut short while the thread refuses to wait: PostgreSQL's
    lock_timeout (see `db._Kept._limit_lock_waits`) or SQLite's busy handler (`_limit_busy_wait`);
    None for anything else."""
    pg_lock = getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE
    if pg_lock and waiting.row_lock_wait() is not None:
        return WouldWait("a row lock held by another transaction")
    busy = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == SQLITE_BUSY
    if busy and waiting.lock_wait() is not None:
        return WouldWait("SQLite's lock, held by a writer that is not Kami's")
    return None


def wrapped(session: Session | None, dialect: Dialect, sql: str, exc: Any) -> BaseException:
    refusal = lock_refusal(exc)
    if refusal is not None:
        return refusal
    invalidated = False
    if (
        session is not None
        and "kami_kept" not in session.info
        and dialect.is_disconnect(exc, None, None)
    ):
        session.connection().invalidate(exc)  # a kept connection is discarded by its owner
        invalidated = True
    wrapped: BaseException = DBAPIError.instance(
        sql,
        None,
        exc,
        dialect.loaded_dbapi.Error,
        hide_parameters=True,
        connection_invalidated=invalidated,
        dialect=dialect,
    )
    return wrapped
