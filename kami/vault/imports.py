"""Bulk import of card keys with de-duplication by keyed fingerprint.

Rows are processed in chunks: each chunk is fingerprinted, encrypted and inserted with
`ON CONFLICT (sku_id, fingerprint) DO NOTHING RETURNING fingerprint`. A row that did not insert
collided either with an earlier line of this file (its batch is ours) or with stock already held
(another batch); one query per chunk that had collisions tells which. Memory stays bounded by the
chunk size, whatever the file size. The whole import is one transaction (the caller's), so a
failure leaves nothing half-imported.

This is the hot path of a million-line import: chunks are fingerprinted and encrypted on a
thread ahead of the one being written, and written by `vault.inserting`, one statement per chunk.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from kami.kernel.clock import utcnow
from kami.kernel.errors import InvalidInput
from kami.kernel.ids import new_token
from kami.vault.cipher import VaultCipher, mask
from kami.vault.inserting import Clashes, inserter
from kami.vault.models import Batch
from kami.vault.sources import BadLine, GoodLine, Row
from kami.vault.states import NO_EXPIRY, KeyStatus

CHUNK = 2000
AHEAD = 2  # chunks prepared ahead of the one being inserted
IN_FLIGHT = 2  # chunks sent to the database before the oldest one's result is read
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
    insert = inserter(
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
