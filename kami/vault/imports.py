"""Bulk import of card keys with de-duplication by keyed fingerprint.

Rows are processed in chunks: each chunk is fingerprinted, encrypted and inserted with
`ON CONFLICT (sku_id, fingerprint) DO NOTHING`. A row that did not insert collided either with
an earlier line of this file (its batch is ours) or with stock already held (another batch); one
query per chunk tells which. Memory stays bounded by the chunk size, whatever the file size. The
whole import is one transaction (the caller's), so a failure leaves nothing half-imported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
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


def _insert(dialect: str) -> type[postgresql.Insert] | type[sqlite.Insert]:
    return postgresql.Insert if dialect == "postgresql" else sqlite.Insert


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
    expires = info.expires_at or NO_EXPIRY
    dialect = session.get_bind().dialect.name
    insert_cls = _insert(dialect)

    def flush(chunk: list[GoodLine]) -> None:
        by_fp: dict[bytes, int] = {}
        values = []
        for good in chunk:
            fp = cipher.fingerprint(fp_key, good.secret)
            if fp in by_fp:  # repeated inside this chunk
                report.duplicates_in_file += 1
                if len(report.duplicate_lines_in_file) < LISTED:
                    report.duplicate_lines_in_file.append(good.line)
                continue
            by_fp[fp] = good.line
            values.append(
                {
                    "sku_id": sku_id,
                    "batch_id": batch.id,
                    "data_key_id": dek_id,
                    "fingerprint": fp,
                    "ciphertext": cipher.encrypt(aead, good.secret, fp),
                    "masked": mask(good.secret),
                    "status": KeyStatus.AVAILABLE,
                    "expires_at": expires,
                    "created_at": now,
                }
            )
        if not values:
            return
        stmt = (
            insert_cls(Key)
            .on_conflict_do_nothing(index_elements=["sku_id", "fingerprint"])
            .returning(Key.fingerprint)
        )
        inserted = set(session.execute(stmt, values).scalars())
        report.imported += len(inserted)
        clashed = [fp for fp in by_fp if fp not in inserted]
        if not clashed:
            return
        owner = dict(
            session.execute(
                select(Key.fingerprint, Key.batch_id).where(
                    Key.sku_id == sku_id, Key.fingerprint.in_(clashed)
                )
            ).tuples()
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
