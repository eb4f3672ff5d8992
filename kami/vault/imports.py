"""Bulk import of card keys with de-duplication by keyed fingerprint.

Rows are processed in chunks: each chunk is fingerprinted, encrypted and inserted with
`ON CONFLICT (sku_id, fingerprint) DO NOTHING RETURNING fingerprint`. A row that did not insert
collided either with an earlier line of this file (its batch is ours) or with stock already held
(another batch); one query per chunk that had collisions tells which. Memory stays bounded by the
chunk size, whatever the file size. The whole import is one transaction (the caller's), so a
failure leaves nothing half-imported.

This is the hot path of a million-line import, so the insert is written for the driver: one
statement per chunk whose per-row parameters are only fingerprint, ciphertext and mask; the
columns every row shares are bound once, after the columns' own SQLAlchemy bind processing, so
they are stored exactly as the ORM stores them. On PostgreSQL the rows travel as three binary
arrays into `INSERT … SELECT … FROM unnest(…)`, sent in psycopg's pipeline mode: the server
inserts one chunk while Python prepares the next. On SQLite they are one multi-row VALUES list.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, update
from sqlalchemy.orm import Session

from kami.kernel.clock import utcnow
from kami.kernel.errors import InvalidInput
from kami.kernel.ids import new_token
from kami.vault.cipher import VaultCipher, mask
from kami.vault.models import Batch, Key
from kami.vault.sources import BadLine, GoodLine, Row
from kami.vault.states import NO_EXPIRY, KeyStatus

CHUNK = 2000
AHEAD = 2  # chunks prepared ahead of the one being inserted
IN_FLIGHT = 2  # chunks sent to the database before the oldest one's result is read
# SQLite's page cache while an import runs, in KiB (the connection's default is 2 MiB). The
# de-duplication index takes keys in random order, so with the default cache nearly every row
# evicted a page and read another: 1,000,000 keys imported at 35,900/s with 12 s in system calls.
IMPORT_CACHE_KIB = 65536
LISTED = 1000  # line numbers listed per category in a report; counts are always complete
FINGERPRINT_SECRET = "fingerprint"


@dataclass
class ImportReport:
    batch: str
    sku_id: int
    imported: int = 0
    duplicates_in_file: int = 0
    duplicates_in_stock: int = 0
    invalid: int = 0
    invalid_lines: list[tuple[int, str]] = field(default_factory=list)
    duplicate_lines_in_file: list[int] = field(default_factory=list)
    duplicate_lines_in_stock: list[int] = field(default_factory=list)

    @property
    def lines_read(self) -> int:
        return self.imported + self.duplicates_in_file + self.duplicates_in_stock + self.invalid


@dataclass(frozen=True, slots=True)
class BatchInfo:
    supplier: str = ""
    unit_cost_minor: int | None = None
    cost_currency: str | None = None
    expires_at: datetime | None = None
    source_name: str = ""


@dataclass(slots=True)
class _Prepared:
    """One chunk, ready to insert: fingerprints unique within it, in first-seen order."""

    fps: list[bytes]
    lines: list[int]  # the line of each fingerprint
    ciphertexts: list[bytes]
    masks: list[str]
    repeated: list[int]  # lines repeating an earlier line of this chunk
    invalid: list[BadLine]  # bad lines read while filling this chunk


def _prepare(
    rows: Iterable[Row],
    fingerprint: Callable[[bytes], bytes],
    encrypt: Callable[[Sequence[bytes], Sequence[bytes]], list[bytes]],
) -> Iterator[_Prepared]:
    def prepared(goods: list[GoodLine], invalid: list[BadLine]) -> _Prepared:
        by_fp: dict[bytes, int] = {}
        plaintexts: list[bytes] = []
        masks: list[str] = []
        repeated: list[int] = []
        for good in goods:
            plaintext = good.secret.encode()
            fp = fingerprint(plaintext)
            if fp in by_fp:
                repeated.append(good.line)
                continue
            by_fp[fp] = good.line
            plaintexts.append(plaintext)
            masks.append(mask(good.secret))
        fps = list(by_fp)
        return _Prepared(
            fps, list(by_fp.values()), encrypt(plaintexts, fps), masks, repeated, invalid
        )

    goods: list[GoodLine] = []
    invalid: list[BadLine] = []
    for row in rows:
        if isinstance(row, BadLine):
            invalid.append(row)
        else:
            goods.append(row)
        if len(goods) >= CHUNK or len(invalid) >= CHUNK:
            yield prepared(goods, invalid)
            goods, invalid = [], []
    if goods or invalid:
        yield prepared(goods, invalid)


class _Stop(Exception):
    """Raised in the read-ahead thread when the importing thread has gone."""


def _read_ahead(chunks: Iterator[_Prepared]) -> Iterator[_Prepared]:
    """`chunks`, produced on a thread of their own up to AHEAD chunks ahead of the consumer.

    Reading, checking, fingerprinting and encrypting a chunk is Python; inserting it is mostly
    the database's own work (SQLite's engine runs without the interpreter lock, PostgreSQL in
    its own process), so the two overlap. An exception in the thread is raised here, in the
    consumer, and a consumer that stops early stops the thread."""
    handoff: queue.Queue[_Prepared | BaseException | None] = queue.Queue(maxsize=AHEAD)
    gone = threading.Event()

    def put(item: _Prepared | BaseException | None) -> None:
        while not gone.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def produce() -> None:
        with suppress(_Stop):
            try:
                for chunk in chunks:
                    put(chunk)
                put(None)
            except _Stop:
                raise
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)

    thread = threading.Thread(target=produce, name="kami-import-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        gone.set()
        thread.join()


_COLUMNS = (
    "sku_id, batch_id, data_key_id, status, expires_at, created_at, fingerprint, ciphertext, masked"
)
_SHARED = ("sku_id", "batch_id", "data_key_id", "status", "expires_at", "created_at")

# What became of a chunk's fingerprints that did not insert: the batch already holding each.
Clashes = dict[bytes, int | None]


class _Inserter:
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


class _PostgresInserter(_Inserter):
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
        return self.raw.pipeline() if self.pipelined else nullcontext()

    def send(
        self, fps: Sequence[bytes], cts: Sequence[bytes], masks: Sequence[str]
    ) -> Callable[[], Clashes]:
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


class _SqliteInserter(_Inserter):
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


def _inserter(conn: Connection, shared: dict[str, Any]) -> _Inserter:
    if conn.dialect.name == "postgresql":
        return _PostgresInserter(conn, shared)
    if conn.dialect.name == "sqlite":
        return _SqliteInserter(conn, shared)
    raise NotImplementedError(f"key import on {conn.dialect.name}")


def import_keys(
    session: Session,
    cipher: VaultCipher,
    sku_id: int,
    rows: Iterable[Row],
    info: BatchInfo,
    *,
    on_chunk: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import `rows` as one new batch of the SKU, inside the caller's transaction.

    `on_chunk` is called with the report as it grows (for progress); it must not use `session`,
    which is busy with the import (on PostgreSQL its connection is in pipeline mode)."""
    now = utcnow()
    if info.expires_at is not None and info.expires_at <= now:
        raise InvalidInput("the batch expiry date is already past", where="expires_at")
    if info.unit_cost_minor is not None and info.unit_cost_minor < 0:
        raise InvalidInput("unit cost must not be negative", where="unit_cost")
    fp_key = cipher.named_secret(session, FINGERPRINT_SECRET)
    dek_id = cipher.new_data_key(session)
    aead = cipher.aead_for(session, dek_id)
    batch = Batch(
        public_id=new_token(12),
        sku_id=sku_id,
        data_key_id=dek_id,
        supplier=info.supplier,
        unit_cost_minor=info.unit_cost_minor,
        cost_currency=info.cost_currency,
        expires_at=info.expires_at,
        source_name=info.source_name[:255],
        created_at=now,
    )
    session.add(batch)
    session.flush()
    report = ImportReport(batch=batch.public_id, sku_id=sku_id)
    insert = _inserter(
        session.connection(),
        {
            "sku_id": sku_id,
            "batch_id": batch.id,
            "data_key_id": dek_id,
            "status": KeyStatus.AVAILABLE.value,
            "expires_at": info.expires_at or NO_EXPIRY,
            "created_at": now,
        },
    )

    def in_file(line: int) -> None:
        report.duplicates_in_file += 1
        if len(report.duplicate_lines_in_file) < LISTED:
            report.duplicate_lines_in_file.append(line)

    def in_stock(line: int) -> None:
        report.duplicates_in_stock += 1
        if len(report.duplicate_lines_in_stock) < LISTED:
            report.duplicate_lines_in_stock.append(line)

    def encrypt(plaintexts: Sequence[bytes], fps: Sequence[bytes]) -> list[bytes]:
        return cipher.encrypt_many(aead, plaintexts, fps)

    def finish(chunk: _Prepared, clashes: Clashes) -> None:
        report.invalid += len(chunk.invalid)
        room = LISTED - len(report.invalid_lines)
        report.invalid_lines.extend((bad.line, bad.reason) for bad in chunk.invalid[:room])
        for line in chunk.repeated:
            in_file(line)
        report.imported += len(chunk.fps) - len(clashes)
        if clashes:
            line_of = dict(zip(chunk.fps, chunk.lines, strict=True))
            for fp, owner in clashes.items():
                (in_file if owner == batch.id else in_stock)(line_of[fp])
        if on_chunk:
            on_chunk(report)

    def no_clashes() -> Clashes:
        return {}

    with insert.streaming():
        # On PostgreSQL up to IN_FLIGHT chunks are on their way at once, so the server always
        # has the next one queued when it finishes one; SQLite's `send` is done when it returns.
        sent: deque[tuple[_Prepared, Callable[[], Clashes]]] = deque()
        for chunk in _read_ahead(_prepare(rows, cipher.fingerprinter(fp_key), encrypt)):
            done = insert.send(chunk.fps, chunk.ciphertexts, chunk.masks) if chunk.fps else None
            sent.append((chunk, done or no_clashes))
            if len(sent) >= IN_FLIGHT:
                oldest, clashes = sent.popleft()
                finish(oldest, clashes())
        while sent:
            oldest, clashes = sent.popleft()
            finish(oldest, clashes())
    if on_chunk and report.lines_read == 0:
        on_chunk(report)
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id)
        .values(
            imported=report.imported,
            duplicates_in_file=report.duplicates_in_file,
            duplicates_in_stock=report.duplicates_in_stock,
            invalid=report.invalid,
        )
    )
    return report
