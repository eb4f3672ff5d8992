"""One database layer for SQLite and PostgreSQL: the model base, UTC datetimes, and the
transactions (`Database.write` / `read`) on connections kept between them. Engines and their
settings are `kernel.engine`'s."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, cast

from sqlalchemy import DateTime, Dialect, Engine, MetaData, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.types import TypeDecorator

from kami.kernel import waiting
from kami.kernel.admission import Admission
from kami.kernel.clock import as_utc
from kami.kernel.dberrors import lock_refusal, wrapped
from kami.kernel.engine import BUSY_TIMEOUT_MS
from kami.kernel.pgcursor import LeanCursor
from kami.kernel.waiting import WouldWait
from kami.kernel.writer import writer_queue

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class _Kept:
    """A connection kept between the transactions of one admission slot (or of SQLite's one
    writer), so that a transaction costs its statements and not a trip through the pool.

    Measured: a transaction of one statement through a pooled connection and a Session cost
    about 85 µs of CPU on SQLite, against 5 µs for the same BEGIN, statement and COMMIT on the
    driver; most of it was the pool's check-out and check-in, building a Connection, and the
    Session's transaction bookkeeping. Here the transaction is begun and ended on the driver.
    The Session handed out is bound to the kept connection: ORM and Core work joins the same
    transaction, and `Prepared` statements run straight on the driver. Only the holder of the
    slot touches a `_Kept`, so it needs no lock.
    """

    __slots__ = ("_busy_timeout", "_conn", "_cursor", "_engine", "_lock_timeout", "_write")

    def __init__(self, engine: Engine, write: bool) -> None:
        self._engine = engine
        self._write = write
        self._conn: Any = None
        # One DB-API cursor for all the `Prepared` statements on the connection: psycopg built
        # a cursor, with its own adapters, for every statement (measured, decision 0014).
        self._cursor: Any = None
        # PostgreSQL: the connection's lock_timeout in milliseconds as last set, None if not
        # known (a rollback undoes a SET made in its transaction). See _limit_lock_waits.
        self._lock_timeout: int | None = None
        self._busy_timeout: int | None = None  # SQLite: the same for its busy handler

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._engine.connect()
        driver: Any = conn.connection.driver_connection
        dialect = conn.dialect
        if self._cursor is None:
            # PostgreSQL: through libpq, not psycopg's cursor (decision 0016).
            self._cursor = LeanCursor(driver) if dialect.name == "postgresql" else driver.cursor()
        if dialect.name == "sqlite":
            begin = "BEGIN IMMEDIATE" if self._write else "BEGIN"
            try:
                if self._write:
                    self._limit_busy_wait(driver)
                driver.execute(begin)
            except dialect.loaded_dbapi.Error as exc:
                refusal = lock_refusal(exc)
                if refusal is not None:  # another writer's lock, not a fault of the connection
                    raise refusal from exc
                self._discard(exc)
                raise wrapped(None, dialect, begin, exc) from exc
        # PostgreSQL: a write connection begins by itself on its first statement; a read
        # connection runs in autocommit (see Database).
        elif self._write:
            self._limit_lock_waits(driver, dialect)
        session = _KeptSession(bind=conn, expire_on_commit=False)
        session.info["kami_kept"] = (driver, dialect, not self._write, self._cursor)
        session.info["kami_keeper"] = self
        failure: BaseException | None = None
        try:
            yield session
            # A read's transaction (SQLite) is only its snapshot: ending it is all there is.
            (session.commit if self._write else session.rollback)()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            # A connection that saw a database error, or could not roll back, is not kept.
            discard = failure is not None and (
                not _rolled_back(session)
                or isinstance(failure, (DBAPIError, dialect.loaded_dbapi.Error))
            )
            session.close()
            if discard:
                self._discard(cast(BaseException, failure))

    def _limit_lock_waits(self, driver: Any, dialect: Dialect) -> None:
        """PostgreSQL: a call that must not wait (`waiting.no_waiting()`) waits for a row lock at
        most `waiting.row_lock_wait()`, then its statement fails and `dberrors.wrapped` (or the
        engine's error hook) turns the failure into WouldWait; any other call waits as long as
        it takes.

        Without a limit, a checkout or a payment notification run on the event loop that met
        an order row locked by a slow transaction elsewhere stopped the whole process's loop, and
        every request of that process with it, until the lock was let go. The setting is the
        connection's own (SET, not SET LOCAL) and is sent only when it changes: the hot calls all
        run on the loop with the same limit, so they pay no round trip for it."""
        wait = waiting.row_lock_wait()
        wanted = 0 if wait is None else max(1, round(wait * 1000))
        if self._lock_timeout == wanted:
            return
        try:
            driver.execute(f"SET lock_timeout = {wanted}")  # begins the transaction
        except dialect.loaded_dbapi.Error as exc:
            self._discard(exc)
            raise wrapped(None, dialect, "SET lock_timeout", exc) from exc
        self._lock_timeout = wanted

    def _limit_busy_wait(self, driver: Any) -> None:
        """SQLite: Kami's own writers queue in `WriterQueue` before they BEGIN, but a writer that
        is not Kami's holds SQLite's lock unseen, and BEGIN IMMEDIATE then waits in SQLite's busy
        handler. A call that must not wait waits there at most its `lock_wait()`, and the
        "database is locked" that follows is WouldWait (`dberrors.lock_refusal`); any other call
        waits up to BUSY_TIMEOUT_MS. Without it, the event loop, and every request of the
        process, waited up to 30 s behind the sqlite3 shell. A PRAGMA here is a function call,
        not a round trip, and it is made only when the value changes."""
        wait = waiting.lock_wait()
        wanted = BUSY_TIMEOUT_MS if wait is None else max(1, round(wait * 1000))
        if self._busy_timeout != wanted:
            driver.execute(f"PRAGMA busy_timeout = {wanted}")
            self._busy_timeout = wanted

    def rolled_back(self) -> None:
        """The transaction rolled back, and any SET made in it with it."""
        self._lock_timeout = None

    def _discard(self, cause: BaseException) -> None:
        if isinstance(self._cursor, LeanCursor):
            self._cursor.forget_kept()
        conn, self._conn = self._conn, None
        self._lock_timeout = self._busy_timeout = self._cursor = None
        if conn is None:
            return
        with suppress(Exception):  # the connection may be broken already: it goes all the same
            orig = getattr(cause, "orig", cause)
            if isinstance(orig, conn.dialect.loaded_dbapi.Error) and conn.dialect.is_disconnect(
                orig, conn.connection.driver_connection, None
            ):
                conn.invalidate(orig)  # the pool opens a new one instead of handing this back
        with suppress(Exception):
            conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._lock_timeout = self._busy_timeout = self._cursor = None
        if conn is not None:
            with suppress(Exception):
                conn.close()


class _KeptSession(Session):
    """A Session on a kept connection whose transaction was begun on the driver: its commit and
    rollback end what ran straight on the driver (`Prepared`) as well as what the ORM did."""

    def commit(self) -> None:
        driver, dialect, _, cursor = self.info["kami_kept"]
        if isinstance(cursor, LeanCursor) and cursor.keeps:
            # The statements kept for later (`Prepared.run_later`) go out with the COMMIT, in
            # one round trip, after the ORM's pending writes (which send them first, if any).
            # The ORM's own commit would send a bare COMMIT, and they would then run in a
            # transaction of their own.
            if self.in_transaction():
                self.flush()
            try:
                cursor.commit()
            except dialect.loaded_dbapi.Error as exc:
                raise wrapped(self, dialect, cursor.failed_sql or "COMMIT", exc) from exc
        if self.in_transaction():
            super().commit()  # flushes, and commits through the connection if the ORM used it
        driver.commit()  # nothing to do if nothing is open
        waiting.committed()

    def rollback(self) -> None:
        driver, _, _, cursor = self.info["kami_kept"]
        if isinstance(cursor, LeanCursor):
            cursor.forget_kept()  # first: what follows may fail
        if self.in_transaction():
            super().rollback()
        driver.rollback()
        self.info["kami_keeper"].rolled_back()

    def close(self) -> None:
        # A Session that holds no objects and no transaction has nothing to let go of; closing
        # it would only rebuild its identity map (measured: a sixth of a claim's CPU).
        if len(self.identity_map) or self.in_transaction():
            super().close()


def _rolled_back(session: Session) -> bool:
    try:
        session.rollback()
    except Exception:  # a broken connection: it is discarded
        return False
    return True


class Database:
    """Hands out sessions; the caller's boundary (request, command, job) decides when to commit."""

    def __init__(self, engine: Engine, *, concurrency: int = 4) -> None:
        self.engine = engine
        self._write_engine = engine.execution_options(kami_write=True)
        # PostgreSQL reads run without BEGIN and ROLLBACK. At READ COMMITTED every statement
        # takes its own snapshot inside a transaction too, so a read sees nothing different,
        # and it saves two of a short read's three round trips (SQLite keeps its deferred
        # BEGIN, which is what gives its reads one snapshot beside the writer).
        self._read_engine = (
            engine.execution_options(isolation_level="AUTOCOMMIT", kami_read=True)
            if engine.dialect.name == "postgresql"
            else engine.execution_options(kami_read=True)
        )
        self._writers = writer_queue(engine)  # SQLite: see WriterQueue
        self._admission = Admission(concurrency)
        # Connections kept between transactions (see _Kept): per admission slot a reader and,
        # on PostgreSQL, a writer; on SQLite the one writer of this process has its own.
        self._readers = [_Kept(self._read_engine, False) for _ in range(concurrency)]
        self._slot_writers = (
            [_Kept(self._write_engine, True) for _ in range(concurrency)]
            if self._writers is None
            else []
        )
        self._writer = _Kept(self._write_engine, True) if self._writers is not None else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        writers = self._writers
        # A call that must not wait asks once: the event loop waits for the writer in
        # `WriterQueue.run_held`, doing other work meanwhile, and runs the call again.
        if writers is not None and not writers.acquire(
            None if waiting.lock_wait() is None else 0.0
        ):
            raise WouldWait("SQLite's writer is busy", ahead=writers)
        try:
            with self._admission.enter(counted=writers is None) as slot:
                kept = self._writer if slot is None else self._slot_writers[slot]
                if kept is not None:
                    with kept.transaction() as session:
                        yield session
                    return
                # Nested in another transaction of this thread (PostgreSQL): a pooled one.
                with Session(self._write_engine, expire_on_commit=False) as session:
                    try:
                        wait = waiting.row_lock_wait()
                        if wait is not None:  # as _Kept._limit_lock_waits, for this one only
                            session.execute(
                                text(f"SET LOCAL lock_timeout = {max(1, round(wait * 1000))}")
                            )
                        yield session
                        session.commit()
                        waiting.committed()
                    except BaseException:
                        session.rollback()
                        raise
        finally:
            if writers is not None:
                writers.release()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._admission.enter() as slot:
            if slot is not None:
                with self._readers[slot].transaction() as session:
                    yield session
                return
            with Session(self._read_engine, expire_on_commit=False) as session:  # nested
                try:
                    yield session
                finally:
                    session.rollback()

    def checkpoint(self) -> tuple[int, int] | None:
        """SQLite: copy the WAL back into the database without blocking anyone (PASSIVE), so
        commits never have to. Returns (frames in the WAL, frames copied); None elsewhere or
        when another checkpoint is running."""
        if self.engine.dialect.name != "sqlite":
            return None
        with self.engine.connect() as conn:
            driver: Any = conn.connection.driver_connection
            try:
                busy, log, done = driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.OperationalError:
                return None
        return None if busy else (int(log), int(done))

    def dispose(self) -> None:
        for kept in (*self._readers, *self._slot_writers, self._writer):
            if kept is not None:
                kept.close()
        self.engine.dispose()
