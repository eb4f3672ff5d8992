"""One database layer for SQLite and PostgreSQL.

Write transactions on SQLite start with `BEGIN IMMEDIATE`, so two writers never both read a
snapshot and then collide on upgrade to a write lock (that collision is what turns read-then-write
code into double sales elsewhere). Reads start deferred and run beside the writer under WAL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import NullPool, QueuePool
from sqlalchemy.types import TypeDecorator

from kami.kernel.clock import as_utc
from kami.kernel.errors import InvalidInput

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
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("kami_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """Hands out sessions; the caller's boundary (request, command, job) decides when to commit."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_engine = engine.execution_options(kami_write=True)
        # SQLite allows one writer at a time. Queueing this process's writers on a lock hands
        # the database over at once; left to SQLite's busy handler they would poll with sleeps
        # of up to 100 ms (measured: 16 writer threads got a tenth of one thread's rate).
        # Other processes still wait through the busy timeout.
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with Session(self._write_engine, expire_on_commit=False) as session:
                try:
                    yield session
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise
        finally:
            if lock is not None:
                lock.release()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
            finally:
                session.rollback()

    def dispose(self) -> None:
        self.engine.dispose()
