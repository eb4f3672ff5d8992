"""Engines for SQLite and PostgreSQL: the URLs people write, the pools, and SQLite's pragmas.

Write transactions on SQLite start with `BEGIN IMMEDIATE` (see `_configure_sqlite`), so two
writers never both read a snapshot and then collide on upgrade to a write lock (that collision is
what turns read-then-write code into double sales elsewhere). Reads start deferred and run
beside the writer under WAL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool, QueuePool

from kami.kernel.dberrors import lock_refusal
from kami.kernel.errors import InvalidInput
from kami.kernel.pgcursor import send_kept


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
        # psycopg prepares nothing itself: it would answer every ROLLBACK with DEALLOCATE ALL,
        # taking Kami's own prepared statements with it (decision 0016).
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size * 2,
            pool_recycle=1800,
            pool_reset_on_return=None,
            connect_args={"prepare_threshold": None},
        )

        @event.listens_for(engine, "handle_error")
        def _on_error(context: Any) -> BaseException | None:
            # A lock wait cut short for a call that must not wait, met by a statement that ran
            # through SQLAlchemy (`Prepared` statements: `dberrors.wrapped`).
            return lock_refusal(context.original_exception)

        @event.listens_for(engine, "before_cursor_execute")
        def _kept_first(conn: Any, *_: Any) -> None:
            # Statements kept for later on this connection (`Prepared.run_later`) go out before
            # one that SQLAlchemy runs (the ORM's, a Core one): in the order they were made.
            send_kept(conn.connection.driver_connection)

        return engine
    raise InvalidInput(
        f"unsupported database {parsed.get_backend_name()!r}; use sqlite:/// or postgresql://",
        where="KAMI_DATABASE_URL",
    )


# A new SQLite database is made with pages of 1 KiB, not SQLite's 4 KiB (decision 0030). Every
# commit writes each page it changed whole into the WAL, and a checkpoint writes it back and
# syncs it: a claim changes three pages (the key's row and two index entries), 12 KiB at 4 KiB
# a page and 3 KiB at 1 KiB. Measured on the claim statement alone: 20,900–23,200 claims/s with
# 4 KiB pages, 27,500–28,900/s with 1 KiB, 26,900–28,500/s with 512 bytes. A database made
# before keeps its page size (SQLite changes it only by rebuilding the file: `kami db vacuum`).
PAGE_SIZE = 1024
WAL_AUTOCHECKPOINT_PAGES = 10_000  # about 10 MB of WAL with 1 KiB pages
# How long SQLite waits for a writer that is not Kami's (the sqlite3 shell, a backup tool), whose
# lock the writer queue does not see; a call that must not wait waits its `lock_wait()` instead.
BUSY_TIMEOUT_MS = 30_000


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so BEGIN is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only a new, empty database takes it
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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
