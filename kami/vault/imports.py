"""Bulk import of card keys with de-duplication by keyed fingerprint.

Rows are processed in chunks: each chunk is fingerprinted, encrypted and inserted with
`ON CONFLICT (sku_id, fingerprint) DO NOTHING RETURNING fingerprint`. A row that did not insert
collided either with an earlier line of this file (its batch is ours) or with stock already held
(another batch); one query per chunk tells which. Memory stays bounded by the chunk size, whatever
the file size. The whole import is one transaction (the caller's), so a failure leaves nothing
half-imported.

The insert is the hot path of a million-line import, so it is written for the driver: one
statement per chunk whose per-row parameters are only fingerprint, ciphertext and mask (the
columns every row shares are bound once), on PostgreSQL as `INSERT … SELECT … FROM unnest(<three
arrays>)`, on SQLite as a multi-row VALUES list with numbered parameters. Shared values go through
the columns' own SQLAlchemy bind processing, so they are stored exactly as the ORM stores them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from kami.kernel.clock import utcnow
from kami.kernel.errors import InvalidInput
from kami.kernel.ids import new_token
from kami.vault.cipher import VaultCipher, mask
from kami.vault.models import Batch, Key
from kami.vault.sources import BadLine, GoodLine, Row
from kami.vault.states import NO_EXPIRY, KeyStatus

CHUNK = 2000
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


_COLUMNS = (
    "sku_id, batch_id, data_key_id, status, expires_at, created_at, fingerprint, ciphertext, masked"
)
_SHARED = ("sku_id", "batch_id", "data_key_id", "status", "expires_at", "created_at")

Inserter = Callable[[Sequence[bytes], Sequence[bytes], Sequence[str]], set[bytes]]


def _inserter(conn: Connection, shared: dict[str, Any]) -> Inserter:
    """A function inserting (fingerprint, ciphertext, masked) rows that share `shared` columns,
    skipping fingerprints the SKU already has; it returns the fingerprints it inserted."""
    dialect = conn.dialect
    table = Key.__tablename__
    bound = []
    for name in _SHARED:
        column = Key.__table__.c[name]
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        bound.append(process(shared[name]) if process else shared[name])
    tail = "ON CONFLICT (sku_id, fingerprint) DO NOTHING RETURNING fingerprint"

    if dialect.name == "postgresql":
        # Interpolated are constants of this module and the model's table name, never input.
        sql = (
            f"INSERT INTO {table} ({_COLUMNS}) "  # noqa: S608
            "SELECT %s::integer, %s::integer, %s::integer, %s::varchar, %s::timestamptz, "
            "%s::timestamptz, u.fp, u.ct, u.m "
            f"FROM unnest(%s::bytea[], %s::bytea[], %s::varchar[]) AS u(fp, ct, m) {tail}"
        )

        def insert_pg(
            fps: Sequence[bytes], cts: Sequence[bytes], masks: Sequence[str]
        ) -> set[bytes]:
            params = (*bound, list(fps), list(cts), list(masks))
            return {bytes(fp) for (fp,) in conn.exec_driver_sql(sql, params)}

        return insert_pg

    if dialect.name != "sqlite":
        raise NotImplementedError(f"key import on {dialect.name}")
    # Numbered parameters: ?1…?6 are the shared values, then three per row.
    per_statement = max(1, (dialect.insertmanyvalues_max_parameters - len(_SHARED)) // 3)
    statements: dict[int, str] = {}

    def statement(rows: int) -> str:
        sql = statements.get(rows)
        if sql is None:
            values = ", ".join(
                f"(?1, ?2, ?3, ?4, ?5, ?6, ?{i}, ?{i + 1}, ?{i + 2})"
                for i in range(7, 7 + 3 * rows, 3)
            )
            sql = f"INSERT INTO {table} ({_COLUMNS}) VALUES {values} {tail}"  # noqa: S608
            statements[rows] = sql
        return sql

    def insert_sqlite(
        fps: Sequence[bytes], cts: Sequence[bytes], masks: Sequence[str]
    ) -> set[bytes]:
        inserted: set[bytes] = set()
        for start in range(0, len(fps), per_statement):
            end = start + per_statement
            params = list(bound)
            for row in zip(fps[start:end], cts[start:end], masks[start:end], strict=True):
                params.extend(row)
            rows = (len(params) - len(_SHARED)) // 3
            inserted.update(fp for (fp,) in conn.exec_driver_sql(statement(rows), tuple(params)))
        return inserted

    return insert_sqlite


def import_keys(
    session: Session,
    cipher: VaultCipher,
    sku_id: int,
    rows: Iterable[Row],
    info: BatchInfo,
    *,
    on_chunk: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
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
    fingerprint = cipher.fingerprinter(fp_key)

    def flush(chunk: list[GoodLine]) -> None:
        by_fp: dict[bytes, int] = {}
        plaintexts: list[bytes] = []
        masks: list[str] = []
        for good in chunk:
            plaintext = good.secret.encode()
            fp = fingerprint(plaintext)
            if fp in by_fp:  # repeated inside this chunk
                report.duplicates_in_file += 1
                if len(report.duplicate_lines_in_file) < LISTED:
                    report.duplicate_lines_in_file.append(good.line)
                continue
            by_fp[fp] = good.line
            plaintexts.append(plaintext)
            masks.append(mask(good.secret))
        if not by_fp:
            return
        fps = list(by_fp)
        inserted = insert(fps, cipher.encrypt_many(aead, plaintexts, fps), masks)
        report.imported += len(inserted)
        if len(inserted) == len(fps):
            return
        clashed = [fp for fp in fps if fp not in inserted]
        owner = dict(
            session.execute(
                select(Key.fingerprint, Key.batch_id).where(
                    Key.sku_id == sku_id, Key.fingerprint.in_(clashed)
                )
            )
            .tuples()
            .all()
        )
        for fp in clashed:
            line = by_fp[fp]
            if owner.get(fp) == batch.id:
                report.duplicates_in_file += 1
                if len(report.duplicate_lines_in_file) < LISTED:
                    report.duplicate_lines_in_file.append(line)
            else:
                report.duplicates_in_stock += 1
                if len(report.duplicate_lines_in_stock) < LISTED:
                    report.duplicate_lines_in_stock.append(line)

    chunk: list[GoodLine] = []
    for row in rows:
        if isinstance(row, BadLine):
            report.invalid += 1
            if len(report.invalid_lines) < LISTED:
                report.invalid_lines.append((row.line, row.reason))
            continue
        chunk.append(row)
        if len(chunk) >= CHUNK:
            flush(chunk)
            chunk = []
            if on_chunk:
                on_chunk(report)
    flush(chunk)
    if on_chunk:
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
