"""Defective keys: a sold key the buyer could not redeem, confirmed by the seller's policy or
review. The key keeps its own row (voided: never sold again); the defect row says why, which
import batch it came from, and whether it was replaced or refunded, so each supplier batch's
defective rate can be read off."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, case, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from kami.kernel.db import Base, UtcDateTime
from kami.kernel.errors import Conflict, NotFound
from kami.vault.models import Batch, Key
from kami.vault.states import KeyStatus

DEFECT_RESOLUTIONS = ("replaced", "refunded")


class Defect(Base):
    __tablename__ = "vault_defect"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # A key is found defective once: it is voided then, so it is never sold (or reported) again.
    key_id: Mapped[int] = mapped_column(Integer, ForeignKey("vault_key.id"), unique=True)
    batch_id: Mapped[int] = mapped_column(Integer, ForeignKey("vault_batch.id"), index=True)
    sku_id: Mapped[int] = mapped_column(Integer, index=True)
    order_id: Mapped[int] = mapped_column(Integer, index=True)
    reason: Mapped[str] = mapped_column(String(500))
    resolution: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    replacement_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    refund_no: Mapped[str | None] = mapped_column(String(40), nullable=True)
    refund_minor: Mapped[int | None] = mapped_column(Integer, nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


@dataclass(frozen=True, slots=True)
class KeyOrigin:
    key_id: int
    sku_id: int
    batch: str
    supplier: str
    status: str
    order_id: int | None


@dataclass(frozen=True, slots=True)
class DefectView:
    key_id: int
    masked: str
    batch: str
    supplier: str
    sku_id: int
    order_id: int
    reason: str
    resolution: str
    actor: str
    replacement_key_id: int | None
    refund_no: str | None
    refund_minor: int | None
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class BatchDefects:
    batch: str
    sku_id: int
    supplier: str
    unit_cost_minor: int | None
    cost_currency: str | None
    created_at: datetime
    imported: int
    sold: int  # keys of the batch that went to a buyer (still sold, or voided after a sale)
    defective: int
    replaced: int
    refunded: int
    refunded_minor: int

    @property
    def rate(self) -> float:
        """Defective keys per key sold (0.0 before any sale): a ratio, not money."""
        return self.defective / self.sold if self.sold else 0.0


def key_origins(session: Session, key_ids: Sequence[int]) -> dict[int, KeyOrigin]:
    """Where keys came from: their SKU, import batch and supplier."""
    if not key_ids:
        return {}
    rows = session.execute(
        select(Key.id, Key.sku_id, Batch.public_id, Batch.supplier, Key.status, Key.order_id)
        .join(Batch, Batch.id == Key.batch_id)
        .where(Key.id.in_(list(key_ids)))
    ).tuples()
    return {r[0]: KeyOrigin(*r) for r in rows}


def mark_defective(
    session: Session,
    key_id: int,
    order_id: int,
    reason: str,
    now: datetime,
    *,
    resolution: str,
    actor: str,
    replacement_key_id: int | None = None,
    refund_no: str | None = None,
    refund_minor: int | None = None,
) -> None:
    """Record a sold key as defective and void it, in the caller's transaction.

    Only a key sold to `order_id` can be marked (a reusable key sold to many is not one
    buyer's to condemn); it is voided whether it was still sold or already voided by a refund.
    """
    if resolution not in DEFECT_RESOLUTIONS:
        raise Conflict(f"resolution must be one of {', '.join(DEFECT_RESOLUTIONS)}")
    row = session.execute(
        select(Key.batch_id, Key.sku_id, Key.order_id, Key.status).where(Key.id == key_id)
    ).first()
    if row is None:
        raise NotFound(f"no key {key_id}", where="key_id", slug="unknown-key")
    batch_id, sku_id, owner, status = row
    if owner != order_id or status not in (KeyStatus.SOLD, KeyStatus.VOID):
        raise Conflict(
            f"key {key_id} is not a key sold to this order; only those can be marked defective",
            where="key_id",
            slug="key-not-sold-to-order",
        )
    if session.execute(select(Defect.id).where(Defect.key_id == key_id)).first() is not None:
        raise Conflict(
            f"key {key_id} is already recorded as defective",
            where="key_id",
            slug="already-defective",
        )
    session.add(
        Defect(
            key_id=key_id,
            batch_id=batch_id,
            sku_id=sku_id,
            order_id=order_id,
            reason=reason[:500],
            resolution=resolution,
            actor=actor[:64],
            replacement_key_id=replacement_key_id,
            refund_no=refund_no,
            refund_minor=refund_minor,
            recorded_at=now,
        )
    )
    session.execute(
        update(Key)
        .where(Key.id == key_id, Key.order_id == order_id, Key.status == KeyStatus.SOLD)
        .values(status=KeyStatus.VOID)
        .execution_options(synchronize_session=False)
    )
    session.flush()


def defect_rates(session: Session, sku_id: int | None = None) -> list[BatchDefects]:
    """Per import batch: imported, sold, defective (and how they were made good), the rate."""
    sold = (
        select(Key.batch_id, func.count().label("sold"))
        .where(Key.sold_at.is_not(None))
        .group_by(Key.batch_id)
        .subquery()
    )
    defects = (
        select(
            Defect.batch_id,
            func.count().label("defective"),
            func.sum(case((Defect.resolution == "replaced", 1), else_=0)).label("replaced"),
            func.sum(case((Defect.resolution == "refunded", 1), else_=0)).label("refunded"),
            func.sum(func.coalesce(Defect.refund_minor, 0)).label("refunded_minor"),
        )
        .group_by(Defect.batch_id)
        .subquery()
    )
    stmt = (
        select(Batch, sold.c.sold, defects)
        .outerjoin(sold, sold.c.batch_id == Batch.id)
        .outerjoin(defects, defects.c.batch_id == Batch.id)
        .order_by(Batch.id)
    )
    if sku_id is not None:
        stmt = stmt.where(Batch.sku_id == sku_id)
    out = []
    for row in session.execute(stmt):
        b: Batch = row[0]
        out.append(
            BatchDefects(
                batch=b.public_id,
                sku_id=b.sku_id,
                supplier=b.supplier,
                unit_cost_minor=b.unit_cost_minor,
                cost_currency=b.cost_currency,
                created_at=b.created_at,
                imported=b.imported,
                sold=int(row.sold or 0),
                defective=int(row.defective or 0),
                replaced=int(row.replaced or 0),
                refunded=int(row.refunded or 0),
                refunded_minor=int(row.refunded_minor or 0),
            )
        )
    return out


def list_defects(
    session: Session,
    *,
    batch: str | None = None,
    order_id: int | None = None,
    limit: int = 100,
) -> list[DefectView]:
    stmt = (
        select(Defect, Key.masked, Batch.public_id, Batch.supplier)
        .join(Key, Key.id == Defect.key_id)
        .join(Batch, Batch.id == Defect.batch_id)
        .order_by(Defect.id.desc())
        .limit(limit)
    )
    if batch is not None:
        stmt = stmt.where(Batch.public_id == batch)
    if order_id is not None:
        stmt = stmt.where(Defect.order_id == order_id)
    return [
        DefectView(
            d.key_id,
            masked,
            public_id,
            supplier,
            d.sku_id,
            d.order_id,
            d.reason,
            d.resolution,
            d.actor,
            d.replacement_key_id,
            d.refund_no,
            d.refund_minor,
            d.recorded_at,
        )
        for d, masked, public_id, supplier in session.execute(stmt).tuples()
    ]
