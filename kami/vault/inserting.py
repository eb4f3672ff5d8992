"""Writing a chunk of imported keys, per database: the rows that insert, and for those that
clash, the batch that already holds each (`vault.imports` decides what a clash means).

One statement per chunk whose per-row parameters are only fingerprint, ciphertext and mask; the
columns every row shares are bound once, after the columns' own SQLAlchemy bind processing, so
they are stored exactly as the ORM stores them. On PostgreSQL the rows travel as three binary
arrays into `INSERT … SELECT … FROM unnest(…)`, sent in psycopg's pipeline mode: the server
inserts one chunk while Python prepares the next. On SQLite they are one multi-row VALUES list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from sqlalchemy import Connection

from kami.kernel.pgcursor import send_kept
from kami.vault.models import Key

# SQLite's page cache while an import runs, in KiB (the connection's default is 2 MiB). The
# de-duplication index takes keys in random order, so with the default cache nearly every row
# evicted a page and read another: 1,000,000 keys imported at 35,900/s with 12 s in system calls.
IMPORT_CACHE_KIB = 65536

_COLUMNS = (
    "sku_id, batch_id, data_key_id, status, expires_at, created_at, fingerprint, ciphertext, masked"
)
_SHARED = ("sku_id", "batch_id", "data_key_id", "status", "expires_at", "created_at")

# What became of a chunk's fingerprints that did not insert: the batch already holding each.
Clashes = dict[bytes, int | None]


class Inserter:
    """Inserts (fingerprint, ciphertext, masked) rows sharing the `shared` column values and
    skips fingerprints the SKU already has. `send` starts a chunk's insert and returns a function
    that finishes it and tells the clashes; the caller may prepare the next chunk in between.
    `streaming()` is held around all of it."""

    def __init__(self, conn: Connection, shared: dict[str, Any]) -> None:
        dialect = conn.dialect
        self.conn = conn
        self.table = Key.__tablename__
        self.sku_id: int = shared["sku_id"]
        self.batch_id: int = shared["batch_id"]
        self.bound = []
        for name in _SHARED:
            column = Key.__table__.c[name]
            process = column.type.dialect_impl(dialect).bind_processor(dialect)
            self.bound.append(process(shared[name]) if process else shared[name])

    def streaming(self) -> AbstractContextManager[object]:
        return nullcontext()

    def send(
        self, fps: Sequence[bytes], cts: Sequence[bytes], masks: Sequence[str]
    ) -> Callable[[], Clashes]:
        raise NotImplementedError


class PostgresInserter(Inserter):
    """`INSERT … SELECT … FROM unnest(<three binary arrays>) ON CONFLICT DO NOTHING`, sent in
    psycopg's pipeline mode so the server inserts one chunk while the next is prepared.
    Exact even beside a concurrent import of the same keys."""

    def __init__(self, conn: Connection, shared: dict[str, Any]) -> None:
        super().__init__(conn, shared)
        # The driver's own connection, inside the session's transaction. Interpolated below are
        # constants of this module and the model's table name, never input. Arrays travel in
        # binary (%b): psycopg's text form escapes every element.
        self.raw: Any = conn.connection.driver_connection
        # The statement answers with how many rows it inserted and the first id it gave, not
        # with the rows: sending every inserted fingerprint back cost the server a sixth of an
        # import's time. Only a chunk that inserted fewer rows than it sent asks which clashed.
        self.insert_sql = (
            f"WITH added AS (INSERT INTO {self.table} ({_COLUMNS}) "  # noqa: S608
            "SELECT %s::integer, %s::integer, %s::integer, %s::varchar, %s::timestamptz, "
            "%s::timestamptz, u.fp, u.ct, u.m "
            "FROM unnest(%b::bytea[], %b::bytea[], %b::varchar[]) AS u(fp, ct, m) "
            "ON CONFLICT (sku_id, fingerprint) DO NOTHING RETURNING id) "
            "SELECT count(*), min(id) FROM added"
        )
        self.owner_sql = (
            f"SELECT fingerprint, batch_id, id FROM {self.table} "  # noqa: S608
            "WHERE sku_id = %s AND fingerprint = ANY(%b::bytea[])"
        )
        from psycopg import Pipeline

        self.pipelined = Pipeline.is_supported()  # libpq 14 or later

    def streaming(self) -> AbstractContextManager[object]:
        send_kept(self.raw)  # what the transaction kept for later goes first
        return self.raw.pipeline() if self.pipelined else nullcontext()

    def send(
        self, fps: Sequence[bytes], cts: Sequence[bytes], masks: Sequence[str]
    ) -> Callable[[], Clashes]:
        send_kept(self.raw)
        cur = self.raw.cursor()
        cur.execute(self.insert_sql, (*self.bound, list(fps), list(cts), list(masks)))

        def finish() -> Clashes:
            with cur:
                inserted, first_id = cur.fetchone()
            if inserted == len(fps):
                return {}
            # Ids come from one sequence, in order: this chunk's rows have ids from `first_id`
            # on, and a row of this batch with a smaller id was inserted by an earlier chunk
            # (the same key earlier in the file). A row of another batch was there first, and
            # a fingerprint not found at all was held by an import that has since undone it.
            with self.raw.cursor() as owners:
                owners.execute(self.owner_sql, (self.sku_id, list(fps)))
                found = {bytes(fp): (batch, key_id) for fp, batch, key_id in owners.fetchall()}
            clashes: Clashes = {}
            for fp in fps:
                batch, key_id = found.get(fp, (None, None))
                mine_now = batch == self.batch_id and first_id is not None and key_id >= first_id
                if not mine_now:
                    clashes[fp] = batch
            return clashes

        return finish


class SqliteInserter(Inserter):
    """One multi-row VALUES list per chunk with numbered parameters (?1…?6 the shared values,
    then three per row), `ON CONFLICT DO NOTHING RETURNING fingerprint`."""

    def __init__(self, conn: Connection, shared: dict[str, Any]) -> None:
        super().__init__(conn, shared)
        limit = conn.dialect.insertmanyvalues_max_parameters
        self.per_statement = max(1, (limit - len(_SHARED)) // 3)
        self.statements: dict[int, str] = {}

    @contextmanager
    def _larger_cache(self) -> Iterator[None]:
        raw: Any = self.conn.connection.driver_connection
        (before,) = raw.execute("PRAGMA cache_size").fetchone()
        raw.execute(f"PRAGMA cache_size=-{IMPORT_CACHE_KIB}")
        try:
            yield
        finally:
            raw.execute(f"PRAGMA cache_size={int(before)}")

    def streaming(self) -> AbstractContextManager[object]:
        return self._larger_cache()

    def statement(self, rows: int) -> str:
        sql = self.statements.get(rows)
        if sql is None:
            values = ", ".join(
                f"(?1, ?2, ?3, ?4, ?5, ?6, ?{i}, ?{i + 1}, ?{i + 2})"
                for i in range(7, 7 + 3 * rows, 3)
            )
            sql = (
                f"INSERT INTO {self.table} ({_COLUMNS}) VALUES {values} "  # noqa: S608
                "ON CONFLICT (sku_id, fingerprint) DO NOTHING RETURNING fingerprint"
            )
            self.statements[rows] = sql
        return sql

    def owners(self, fps: Sequence[bytes]) -> dict[bytes, int]:
        found: dict[bytes, int] = {}
        for start in range(0, len(fps), self.per_statement):
            part = fps[start : start + self.per_statement]
            sql = (
                f"SELECT fingerprint, batch_id FROM {self.table} "  # noqa: S608
                f"WHERE sku_id = ? AND fingerprint IN ({', '.join('?' * len(part))})"
            )
            found.update(self.conn.exec_driver_sql(sql, (self.sku_id, *part)).tuples().all())
        return found

    def send(
        self, fps: Sequence[bytes], cts: Sequence[bytes], masks: Sequence[str]
    ) -> Callable[[], Clashes]:
        inserted: set[bytes] = set()
        for start in range(0, len(fps), self.per_statement):
            end = start + self.per_statement
            params = list(self.bound)
            for row in zip(fps[start:end], cts[start:end], masks[start:end], strict=True):
                params.extend(row)
            sql = self.statement((len(params) - len(_SHARED)) // 3)
            inserted.update(fp for (fp,) in self.conn.exec_driver_sql(sql, tuple(params)))
        clashed = [fp for fp in fps if fp not in inserted]
        owner = self.owners(clashed) if clashed else {}
        clashes: Clashes = {fp: owner.get(fp) for fp in clashed}
        return lambda: clashes


def inserter(conn: Connection, shared: dict[str, Any]) -> Inserter:
    if conn.dialect.name == "postgresql":
        return PostgresInserter(conn, shared)
    if conn.dialect.name == "sqlite":
        return SqliteInserter(conn, shared)
    raise NotImplementedError(f"key import on {conn.dialect.name}")
