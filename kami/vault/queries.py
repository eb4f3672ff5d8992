"""Vault reads: stock counts, masked previews, authorised decryption."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, bindparam, case, func, select
from sqlalchemy.orm import Session

from kami.kernel.clock import utcnow
from kami.kernel.prepared import Prepared
from kami.vault.cipher import Secret, VaultCipher
from kami.vault.imports import FINGERPRINT_SECRET
from kami.vault.models import KEY_AVAILABLE, Batch, DataKey, Key
from kami.vault.states import KeyStatus


@dataclass(frozen=True, slots=True)
class MaskedKey:
    key_id: int
    masked: str


@dataclass(frozen=True, slots=True)
class BatchStock:
    batch: str
    sku_id: int
    supplier: str
    unit_cost_minor: int | None
    cost_currency: str | None
    expires_at: datetime | None
    source_name: str
    created_at: datetime
    imported: int
    available: int
    sold: int
    void: int
    expired: int


@dataclass(frozen=True, slots=True)
class KeyLocation:
    key_id: int
    sku_id: int
    batch: str
    status: str
    masked: str
    order_id: int | None
    sold_at: datetime | None


def count_available(session: Session, sku_ids: Iterable[int] | None = None) -> dict[int, int]:
    """Sellable stock per SKU: available and not expired."""
    stmt = (
        select(Key.sku_id, func.count())
        .where(KEY_AVAILABLE, Key.expires_at > utcnow())
        .group_by(Key.sku_id)
    )
    if sku_ids is not None:
        stmt = stmt.where(Key.sku_id.in_(list(sku_ids)))
    return dict(session.execute(stmt).tuples().all())


def stock_by_batch(session: Session, sku_id: int | None = None) -> list[BatchStock]:
    now = utcnow()
    avail = Key.status == KeyStatus.AVAILABLE
    counts = (
        select(
            Key.batch_id,
            func.sum(case((avail & (Key.expires_at > now), 1), else_=0)).label("available"),
            func.sum(case((Key.status == KeyStatus.SOLD, 1), else_=0)).label("sold"),
            func.sum(case((Key.status == KeyStatus.VOID, 1), else_=0)).label("void"),
            func.sum(case((avail & (Key.expires_at <= now), 1), else_=0)).label("expired"),
        )
        .group_by(Key.batch_id)
        .subquery()
    )
    stmt = select(Batch, counts).outerjoin(counts, counts.c.batch_id == Batch.id).order_by(Batch.id)
    if sku_id is not None:
        stmt = stmt.where(Batch.sku_id == sku_id)
    out = []
    for row in session.execute(stmt):
        b: Batch = row[0]
        out.append(
            BatchStock(
                batch=b.public_id,
                sku_id=b.sku_id,
                supplier=b.supplier,
                unit_cost_minor=b.unit_cost_minor,
                cost_currency=b.cost_currency,
                expires_at=b.expires_at,
                source_name=b.source_name,
                created_at=b.created_at,
                imported=b.imported,
                available=int(row.available or 0),
                sold=int(row.sold or 0),
                void=int(row.void or 0),
                expired=int(row.expired or 0),
            )
        )
    return out


def masked_keys(session: Session, key_ids: Sequence[int]) -> list[MaskedKey]:
    if not key_ids:
        return []
    rows = session.execute(select(Key.id, Key.masked).where(Key.id.in_(list(key_ids))))
    by_id = dict(rows.tuples().all())
    return [MaskedKey(k, by_id[k]) for k in key_ids if k in by_id]


_K = Key.__table__
_SEALED_COLUMNS = (_K.c.id, _K.c.data_key_id, _K.c.ciphertext, _K.c.fingerprint)
_SEALED_PREPARED = 16  # an order of up to this many keys reads them with a statement built once
_SEALED_ANY = select(*_SEALED_COLUMNS).where(_K.c.id.in_(bindparam("ids", expanding=True)))


@functools.cache
def _sealed(n: int) -> Prepared:
    """Keys by id, for exactly `n` ids (`id IN (?, ?, …)` with its own parameters)."""
    return Prepared(
        select(*_SEALED_COLUMNS).where(
            _K.c.id.in_([bindparam(f"id{i}", type_=Integer) for i in range(n)])
        )
    )


def reveal_keys(session: Session, cipher: VaultCipher, key_ids: Sequence[int]) -> list[Secret]:
    """Decrypt keys, in the order given. Callers must have authorised and recorded the reveal."""
    if not key_ids:
        return []
    rows: Any
    if len(key_ids) <= _SEALED_PREPARED:
        rows = _sealed(len(key_ids)).run(session, {f"id{i}": k for i, k in enumerate(key_ids)})
    else:
        rows = session.connection().execute(_SEALED_ANY, {"ids": list(key_ids)})
    by_id = {r.id: r for r in rows}
    return [
        cipher.decrypt(session, by_id[k].data_key_id, by_id[k].ciphertext, by_id[k].fingerprint)
        for k in key_ids
        if k in by_id
    ]


def find_key(session: Session, cipher: VaultCipher, secret: Secret) -> list[KeyLocation]:
    """Where a pasted key is, by fingerprint: the pool is never decrypted to search it."""
    fp = cipher.fingerprint(cipher.named_secret(session, FINGERPRINT_SECRET), secret)
    rows = session.execute(
        select(Key, Batch.public_id)
        .join(Batch, Batch.id == Key.batch_id)
        .where(Key.fingerprint == fp)
    ).all()
    return [
        KeyLocation(k.id, k.sku_id, public_id, k.status, k.masked, k.order_id, k.sold_at)
        for k, public_id in rows
    ]


def master_key_usage(session: Session) -> dict[int, int]:
    """How many data keys each master key version wraps (rotation is done when one remains)."""
    rows = session.execute(
        select(DataKey.master_version, func.count()).group_by(DataKey.master_version)
    )
    return dict(rows.tuples().all())
