"""Supplier orders: every attempt at an upstream supplier, written before the supplier is called.

A row is created with Kami's `customer_order_no` in the transaction *before* the call, so a
crash or a time-out is followed by a query for that number, never by a new order elsewhere.
Its status only moves forward, by guarded updates (two workers, or a worker and a callback,
settle it once): submitting/processing/unknown are open; succeeded, failed and escalated end it.

A row with `line_id` 0 (STOCK_PURCHASE) buys card keys for stock rather than delivering a line;
its number says which SKU and day it is for (see kami.fulfilment.goods.procurement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from kami.delivery.models import SupplierOrder

STOCK_PURCHASE = 0  # line_id of a purchase of card keys for stock


class SupplierOrderState(StrEnum):
    SUBMITTING = "submitting"  # written, the submit's answer not recorded yet: query first
    PROCESSING = "processing"  # the supplier has it
    UNKNOWN = "unknown"  # the last call's outcome is unknown: query, never go elsewhere
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # definitively: no charge stands at this supplier
    ESCALATED = "escalated"  # unknown too many times: for a person to check with the supplier


OPEN_STATES = (
    SupplierOrderState.SUBMITTING,
    SupplierOrderState.PROCESSING,
    SupplierOrderState.UNKNOWN,
)


@dataclass(frozen=True, slots=True)
class SupplierOrderView:
    id: int
    line_id: int
    supplier: str
    product_id: str
    customer_order_no: str
    supplier_order_no: str | None
    status: SupplierOrderState
    attempts: int  # calls whose outcome was left unknown (escalated after a limit)
    cost_minor: int | None
    detail: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATES


def _view(r: SupplierOrder) -> SupplierOrderView:
    return SupplierOrderView(
        id=r.id,
        line_id=r.line_id,
        supplier=r.supplier,
        product_id=r.product_id,
        customer_order_no=r.customer_order_no,
        supplier_order_no=r.supplier_order_no,
        status=SupplierOrderState(r.status),
        attempts=r.attempts,
        cost_minor=r.cost_minor,
        detail=r.detail,
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


def create_supplier_order(
    session: Session,
    *,
    line_id: int,
    supplier: str,
    product_id: str,
    customer_order_no: str,
    now: datetime,
    cost_minor: int | None = None,
) -> SupplierOrderView:
    """The row for an attempt, status submitting. A number already used raises the database's
    IntegrityError (its unique constraint is what keeps two workers from both buying)."""
    session.execute(
        insert(SupplierOrder).values(
            line_id=line_id,
            supplier=supplier,
            product_id=product_id,
            customer_order_no=customer_order_no,
            status=SupplierOrderState.SUBMITTING.value,
            attempts=0,
            cost_minor=cost_minor,
            created_at=now,
            updated_at=now,
        )
    )
    found = get_supplier_order(session, customer_order_no)
    assert found is not None
    return found


def get_supplier_order(session: Session, customer_order_no: str) -> SupplierOrderView | None:
    row = session.execute(
        select(SupplierOrder).where(SupplierOrder.customer_order_no == customer_order_no)
    ).scalar_one_or_none()
    return _view(row) if row else None


def line_supplier_orders(session: Session, line_id: int) -> list[SupplierOrderView]:
    """A line's attempts, oldest first."""
    rows = session.execute(
        select(SupplierOrder).where(SupplierOrder.line_id == line_id).order_by(SupplierOrder.id)
    )
    return [_view(r) for r in rows.scalars()]


def supplier_orders_numbered(
    session: Session, prefix: str, *, line_id: int = STOCK_PURCHASE
) -> list[SupplierOrderView]:
    """Rows of `line_id` whose number starts with `prefix` (stock purchases of a SKU, a day)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = session.execute(
        select(SupplierOrder)
        .where(
            SupplierOrder.line_id == line_id,
            SupplierOrder.customer_order_no.like(escaped + "%", escape="\\"),
        )
        .order_by(SupplierOrder.id)
    )
    return [_view(r) for r in rows.scalars()]


def open_stock_purchases(session: Session, limit: int = 100) -> list[SupplierOrderView]:
    rows = session.execute(
        select(SupplierOrder)
        .where(
            SupplierOrder.line_id == STOCK_PURCHASE,
            SupplierOrder.status.in_([s.value for s in OPEN_STATES]),
        )
        .order_by(SupplierOrder.id)
        .limit(limit)
    )
    return [_view(r) for r in rows.scalars()]


def move_supplier_order(
    session: Session,
    customer_order_no: str,
    expected: Sequence[SupplierOrderState],
    status: SupplierOrderState,
    now: datetime,
    *,
    supplier_order_no: str | None = None,
    cost_minor: int | None = None,
    detail: str | None = None,
    unknown_call: bool = False,
) -> bool:
    """Guarded change of a supplier order's status; False when it had already moved on (a
    duplicate callback, a callback racing the worker): the caller then changes nothing."""
    values: dict[str, Any] = {"status": status.value, "updated_at": now}
    if supplier_order_no:
        values["supplier_order_no"] = supplier_order_no[:128]
    if cost_minor is not None:
        values["cost_minor"] = cost_minor
    if detail is not None:
        values["detail"] = detail[:2000]
    if unknown_call:
        values["attempts"] = SupplierOrder.attempts + 1
    result = session.execute(
        update(SupplierOrder)
        .where(
            SupplierOrder.customer_order_no == customer_order_no,
            SupplierOrder.status.in_([s.value for s in expected]),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
