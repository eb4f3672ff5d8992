"""One database layer for SQLite and PostgreSQL.

Write transactions on SQLite start with `BEGIN IMMEDIATE`, so two writers never both read a
snapshot and then collide on upgrade to a write lock (that collision is what turns read-then-write
code into double sales elsewhere). Reads start deferred and run beside the writer under WAL.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections import deque, namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    DateTime,
    Dialect,
    Engine,
    MetaData,
    bindparam,
    create_engine,
    event,
    insert,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import NullPool, QueuePool
from sqlalchemy.types import TypeDecorator

from kami.kernel import waiting
from kami.kernel.clock import as_utc
from kami.kernel.errors import InvalidInput
from kami.kernel.waiting import WouldWait

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


def normalise_url(url: str) -> str:
    """Accept the URLs people write (postgres://, postgresql://) and pick the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise InvalidInput(f"cannot parse database URL: {exc}", where="KAMI_DATABASE_URL") from None
    if parsed.get_backend_name() == "sqlite":
        # Pooled connections: opening one and setting its pragmas cost more than a claim.
        # Connections move between threads but are used by one at a time (the pool hands each
        # to a single session), hence check_same_thread=False.
        memory = parsed.database in (None, "", ":memory:")
        engine = create_engine(
            url,
            poolclass=NullPool if memory else QueuePool,
            connect_args={"check_same_thread": False},
            **({} if memory else {"pool_size": pool_size, "max_overflow": pool_size * 2}),
        )
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # No pre-ping and no reset-on-return: each costs a round trip per transaction (measured
        # -20 % on the claim path). Sessions here always end their transaction before the
        # connection goes back (Database.write/read), and a connection broken by a server
        # restart fails one request, after which the pool is invalidated and reconnects.
        return create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            pool_recycle=1800,
            pool_reset_on_return=None,
        )
    raise InvalidInput(
        f"unsupported database {parsed.get_backend_name()!r}; use sqlite:/// or postgresql://",
        where="KAMI_DATABASE_URL",
    )


WAL_AUTOCHECKPOINT_PAGES = 10_000  # about 40 MB of WAL with 4 KiB pages


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so BEGIN is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # Checkpoints are the worker's (Database.checkpoint, every cycle), outside the writer.
        # SQLite's own, every 1,000 pages, run inside whichever commit crosses the mark, with
        # its fsync, while every other writer waits: on the purchase bench a 5,000-purchase
        # run fell from 185 to 126 purchases/s. This is the fallback if no worker runs.
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        driver = conn.connection.driver_connection
        if driver.in_transaction:
            return  # begun by Database on a kept connection (see _Kept); the ORM joins it
        immediate = conn.get_execution_options().get("kami_write", False)
        # Straight to the driver: through SQLAlchemy's execution path a BEGIN cost as much as
        # a real statement, six times a purchase.
        driver.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")


class FairSlots:
    """A semaphore that serves its waiters in arrival order.

    `threading.Semaphore` and `Lock` wake an arbitrary waiter, and a thread that releases and
    asks again at once usually wins: under load a few requests wait for seconds while others
    pass (measured on the purchase bench, PostgreSQL: checkout p99 1.17 s with a plain
    semaphore, 0.70 s first come first served). Here a released slot goes to the longest waiter.
    """

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._guard = threading.Lock()
        self._waiting: deque[threading.Lock] = deque()

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for a slot, at most `timeout` seconds if given; whether one was taken."""
        with self._guard:
            if self._free and not self._waiting:
                self._free -= 1
                return True
            if timeout is not None and timeout <= 0:
                return False
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        # Released by the release() that hands this thread its slot.
        if turn.acquire(timeout=-1 if timeout is None else timeout):
            return True
        with self._guard:
            try:
                self._waiting.remove(turn)  # still queued: leave the queue empty-handed
            except ValueError:
                turn.acquire()  # handed the slot just as the wait ended: it is ours (no wait)
                return True
        return False

    def release(self) -> None:
        with self._guard:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._free += 1


class WriterQueue:
    """One SQLite writer at a time, handed over at once, across threads and processes.

    SQLite allows one writer. Left to its busy handler, waiting writers poll with sleeps of up
    to 100 ms (measured: 16 writer threads got a tenth of one thread's rate, and two server
    processes put a 1.7 s p99 on every write request). So this process's writers queue on a
    lock, and the one at its head waits for the other processes' writer on an exclusive
    `flock` of a file beside the database, which the kernel hands over the moment it is
    released (and releases by itself if its holder dies). Writers that are not Kami's (the
    sqlite3 shell, a migration) still meet SQLite's own lock and busy timeout.
    """

    def __init__(self, lock_path: str | None) -> None:
        self._threads = FairSlots(1)
        self._path = lock_path
        self._fd: int | None = None
        self._pid = 0

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own
            self._fd = os.open(self._path or "", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def acquire(self, timeout: float | None = None) -> bool:
        """Become the writer, waiting at most `timeout` seconds if given; whether it did.

        The other processes' writer is waited for on the flock, which has no time limit of
        its own: with a limit, it is asked again and again without blocking until the limit
        passes (a write transaction lasts a fraction of a millisecond)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._threads.acquire(timeout):
            return False
        if self._path is None:
            return True
        try:
            if deadline is None:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
                return True
            pause = 0.00002
            while True:
                try:
                    fcntl.flock(self._file(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() + pause > deadline:
                        break
                    time.sleep(pause)
                    pause = min(pause * 2, 0.0005)
        except BaseException:
            self._threads.release()
            raise
        self._threads.release()
        return False

    def release(self) -> None:
        try:
            if self._path is not None and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


def _writer_queue(engine: Engine) -> WriterQueue | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if database in (None, "", ":memory:") or str(database).startswith("file:"):
        return WriterQueue(None)  # one process only: the thread lock is enough
    return WriterQueue(os.path.abspath(str(database)) + "-writer.lock")


class Admission:
    """At most `limit` transactions of this process run at once; the rest wait their turn.

    A Python process runs one thread at a time. Forty threads inside forty transactions do not
    get forty times the work done: each holds its connection, row locks (and on SQLite perhaps
    the writer) while it waits for the interpreter, so every transaction takes longer and holds
    more (measured on the purchase bench on PostgreSQL: 24 connections idle in transaction on
    average; with four at a time per process, 5). Threads that wait here hold nothing. Threads that
    wait on the network (a payment channel, a supplier) are not counted: only transactions are.

    Nested transactions of one thread pass (the outer one already counts), so a thread never
    waits for itself. SQLite's writer does not count either: it is one at a time already, and
    must never wait for readers that may themselves be waiting for it.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise InvalidInput("must be at least 1", where="KAMI_DB_CONCURRENCY")
        self.limit = limit
        self._slots = FairSlots(limit)
        self._free = list(range(limit))  # slot numbers; only holders of a slot touch it
        self._guard = threading.Lock()
        self._local = threading.local()

    @contextmanager
    def enter(self, counted: bool = True) -> Iterator[int | None]:
        """Yields the slot's number (0 … limit-1), or None for a pass (nested, not counted)."""
        depth: int = getattr(self._local, "depth", 0)
        slot: int | None = None
        if counted and depth == 0:
            if not self._slots.acquire(waiting.lock_wait()):
                raise WouldWait("every database slot of this process is in use")
            with self._guard:
                slot = self._free.pop()
        self._local.depth = depth + 1
        try:
            yield slot
        finally:
            self._local.depth = depth
            if slot is not None:
                with self._guard:
                    self._free.append(slot)
                self._slots.release()


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

    __slots__ = ("_conn", "_engine", "_write")

    def __init__(self, engine: Engine, write: bool) -> None:
        self._engine = engine
        self._write = write
        self._conn: Any = None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._engine.connect()
        driver: Any = conn.connection.driver_connection
        dialect = conn.dialect
        if dialect.name == "sqlite":
            try:
                driver.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")
            except dialect.loaded_dbapi.Error as exc:
                self._discard(exc)
                raise _wrapped(None, dialect, "BEGIN", exc) from exc
        # PostgreSQL: a write connection begins by itself on its first statement; a read
        # connection runs in autocommit (see Database).
        session = _KeptSession(bind=conn, expire_on_commit=False)
        session.info["kami_kept"] = (driver, dialect, not self._write)
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

    def _discard(self, cause: BaseException) -> None:
        conn, self._conn = self._conn, None
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
        if conn is not None:
            with suppress(Exception):
                conn.close()


class _KeptSession(Session):
    """A Session on a kept connection whose transaction was begun on the driver: its commit and
    rollback end what ran straight on the driver (`Prepared`) as well as what the ORM did."""

    def commit(self) -> None:
        if self.in_transaction():
            super().commit()  # flushes, and commits through the connection if the ORM used it
        self.info["kami_kept"][0].commit()  # nothing to do if nothing is open
        waiting.committed()

    def rollback(self) -> None:
        if self.in_transaction():
            super().rollback()
        self.info["kami_kept"][0].rollback()

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
        self._writers = _writer_queue(engine)  # SQLite: see WriterQueue
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
        if writers is not None and not writers.acquire(waiting.lock_wait()):
            raise WouldWait("SQLite's writer is busy")
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


class Rows:
    """The answer of a `Prepared` statement: its rows, fetched, and the driver's row count."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise LookupError(f"expected at most one row, got {len(self._rows)}")
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]

    def scalars(self) -> list[Any]:
        return [r[0] for r in self._rows]


class _Plan:
    """One statement compiled for one dialect: its SQL, how to lay out and convert parameters,
    and how to convert result columns, all taken from SQLAlchemy's own type processors."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled: Any = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.writes = bool(compiled.isinsert or compiled.isupdate or compiled.isdelete)
        names: dict[str, str] = {}  # bind name in the SQL -> key the caller passes
        self.fixed: dict[str, Any] = {}  # values written into the statement itself
        processors: dict[str, Callable[[Any], Any]] = {}
        for bind, name in compiled.bind_names.items():
            if bind.expanding:
                raise TypeError(
                    f"{name}: an expanding IN cannot be prepared once; compare with = or OR"
                )
            if bind.callable is not None:
                raise TypeError(f"{name}: a bind computed per call cannot be prepared once")
            if bind.required:
                names[name] = bind.key
            else:
                self.fixed[name] = bind.value
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[name] = processor
        self.keys = frozenset(names.values())
        self.names = names
        order = compiled.positiontup
        self.order: list[str] | None = list(order) if compiled.positional else None
        self.processors = processors
        for name, value in self.fixed.items():  # converted once
            if name in processors:
                self.fixed[name] = processors.pop(name)(value)
        self.lay_out = _layout(self.order, names, processors, self.fixed)
        columns = compiled._result_columns  # (key, name, objects, type), SQLAlchemy 2.x
        self.row: Any = namedtuple("Row", [c[0] for c in columns], rename=True) if columns else None
        self.converters = [
            (i, p)
            for i, c in enumerate(columns)
            if (p := c[3].dialect_impl(dialect).result_processor(dialect, None)) is not None
        ]

    def parameters(self, values: Mapping[str, Any]) -> Any:
        if values.keys() != self.keys:
            missing, extra = self.keys - values.keys(), values.keys() - self.keys
            raise TypeError(f"statement parameters differ: {missing=} {extra=}")
        return self.lay_out(values)

    def rows(self, raw: list[Any]) -> list[Any]:
        if self.converters:
            out = []
            for r in raw:
                values = list(r)
                for i, convert in self.converters:
                    values[i] = convert(values[i])
                out.append(self.row._make(values))
            return out
        make = self.row._make
        return [make(r) for r in raw]


def _layout(
    order: list[str] | None,
    names: Mapping[str, str],
    processors: Mapping[str, Callable[[Any], Any]],
    fixed: Mapping[str, Any],
) -> Callable[[Mapping[str, Any]], Any]:
    """A function from the caller's values to the driver's parameters, written out once per
    statement: a tuple in SQL order (SQLite) or a dict by name (PostgreSQL), each value through
    its converter, fixed values in place. Written as one expression because a generic loop over
    the parameters was, per statement, a third of `Prepared.run`'s own time. The source holds
    only `repr`s of the statement's own bind names and indexes into `constants`."""
    constants: list[Any] = []

    def const(value: Any) -> str:
        constants.append(value)
        return f"c[{len(constants) - 1}]"

    def value_of(name: str) -> str:
        if name not in names:
            return const(fixed[name])
        given = f"v[{names[name]!r}]"
        return f"{const(processors[name])}({given})" if name in processors else given

    if order is not None:
        body = "(" + "".join(f"{value_of(n)}, " for n in order) + ")"
    else:
        body = "{" + "".join(f"{n!r}: {value_of(n)}, " for n in (*names, *fixed)) + "}"
    made: Callable[[Mapping[str, Any]], Any] = eval(f"lambda v, c=c: {body}", {"c": constants})  # noqa: S307
    return made


class Prepared:
    """A Core statement compiled once per dialect and run on the transaction's own DB-API
    connection.

    Through SQLAlchemy's execution path every statement paid for its cache key, an execution
    context, events and a result object: on the purchase path that was about half the domain's
    CPU (measured, docs/benchmarks.md). The statement is still written once, as Core; its SQL,
    parameter order and type conversions (UTC datetimes, enums, JSON) are SQLAlchemy's own, so
    the two databases still see the same values. It runs inside the session's transaction, and a
    driver error arrives as SQLAlchemy's exception (IntegrityError, OperationalError …) with its
    parameters hidden. A write through a `Database.read()` session is refused.

    Not for statements whose IN lists vary per call (compare with = or OR instead).
    """

    def __init__(self, statement: Any) -> None:
        """`statement`: one Core statement, or one per dialect name ("sqlite", "postgresql")
        where their spellings differ."""
        self._statements: dict[str, Any] = (
            dict(statement) if isinstance(statement, dict) else dict.fromkeys(_DIALECTS, statement)
        )
        # Compiled now against default dialects, so a statement that cannot be prepared fails
        # at import; compiled again on first use against the live engine's dialect.
        self.keys = frozenset().union(
            *(_Plan(self._statements[n], d).keys for n, d in _DIALECTS.items())
        )
        self._plans: dict[str, _Plan] = {}

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = self._plans[dialect.name] = _Plan(self._statements[dialect.name], dialect)
        return plan

    def run(self, session: Session, values: Mapping[str, Any] | None = None) -> Rows:
        driver, dialect, read_only = _driver(session)
        plan = self._plan(dialect)
        if plan.writes and read_only:
            raise RuntimeError(f"a write inside Database.read(): {plan.sql[:80]}")
        params = plan.parameters(values or {})
        try:
            cursor = driver.execute(plan.sql, params)
            raw = cursor.fetchall() if plan.row is not None else []
            count = cursor.rowcount
        except dialect.loaded_dbapi.Error as exc:
            raise _wrapped(session, dialect, plan.sql, exc) from exc
        return Rows(plan.rows(raw) if raw else raw, count)

    def run_many(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """One executemany for all `rows` (nothing returned)."""
        if not rows:
            return
        driver, dialect, read_only = _driver(session)
        plan = self._plan(dialect)
        if plan.writes and read_only:
            raise RuntimeError(f"a write inside Database.read(): {plan.sql[:80]}")
        params = [plan.parameters(r) for r in rows]
        try:
            cursor = driver.cursor()
            cursor.executemany(plan.sql, params)
        except dialect.loaded_dbapi.Error as exc:
            raise _wrapped(session, dialect, plan.sql, exc) from exc


def _dialects() -> dict[str, Dialect]:
    from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect
    from sqlalchemy.dialects.sqlite.pysqlite import dialect as pysqlite_dialect

    return {"sqlite": pysqlite_dialect(), "postgresql": psycopg_dialect()}  # type: ignore[no-untyped-call]


_DIALECTS = _dialects()


def _driver(session: Session) -> tuple[Any, Dialect, bool]:
    """The session's DB-API connection for its current transaction (begun if need be), its
    dialect, and whether the session is a read; remembered per transaction."""
    info = session.info
    kept = info.get("kami_kept")
    if kept is not None:
        driver = kept[0]
        if kept[1].name == "sqlite" and not driver.in_transaction:
            # The block committed or rolled back part-way through: begin again, as the
            # Session itself would.
            driver.execute("BEGIN" if kept[2] else "BEGIN IMMEDIATE")
        return kept  # type: ignore[no-any-return]
    known = info.get("kami_driver")
    if known is not None and known[0] is session.get_transaction():
        found: tuple[Any, Dialect, bool] = known[1]
        return found
    conn = session.connection()
    options = conn.get_execution_options()
    found = (conn.connection.driver_connection, conn.dialect, bool(options.get("kami_read")))
    info["kami_driver"] = (session.get_transaction(), found)
    return found


def _wrapped(session: Session | None, dialect: Dialect, sql: str, exc: Any) -> BaseException:
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


class PreparedInsert:
    """An INSERT built once, run as a `Prepared` statement with each call's values.

    Every column named must be given a value.
    """

    def __init__(
        self,
        table: Any,
        columns: Sequence[str],
        returning: Any = None,
        *,
        skip_conflicts_on: Sequence[str] = (),
    ) -> None:
        """`skip_conflicts_on`: the unique columns on which a conflicting row is skipped
        (`ON CONFLICT … DO NOTHING`, which SQLite and PostgreSQL spell alike)."""
        values: dict[str, Any] = {c: bindparam(f"p_{c}") for c in columns}
        statements: dict[str, Any] = {}
        for name, dialect_insert in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert)):
            stmt: Any = insert(table).values(values)
            if skip_conflicts_on:
                stmt = (
                    dialect_insert(table)
                    .values(values)
                    .on_conflict_do_nothing(index_elements=list(skip_conflicts_on))
                )
            statements[name] = stmt.returning(returning) if returning is not None else stmt
        self._prepared = Prepared(statements)
        self.columns = frozenset(columns)

    def params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        if values.keys() != self.columns:
            missing, extra = self.columns - values.keys(), values.keys() - self.columns
            raise TypeError(f"insert values differ from its columns: {missing=} {extra=}")
        return {f"p_{k}": v for k, v in values.items()}

    def run(self, session: Session, **values: Any) -> Rows:
        return self._prepared.run(session, self.params(values))

    def run_many(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """One executemany for all `rows` (nothing returned)."""
        self._prepared.run_many(session, [self.params(r) for r in rows])
