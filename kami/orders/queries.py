"""Order reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from kami.kernel.errors import NotFound
from kami.kernel.prepared import Ask, Prepared, Rows, ask_all
from kami.orders.models import Order
from kami.orders.schemas import OrderView
from kami.orders.states import OrderStatus

# The statements on the purchase path are built once and run as Core: building a statement
# and its cache key on every call, and loading ORM objects, were most of a purchase's CPU.
_T = cast(Table, Order.__table__)
_BY_NO_SELECT = select(_T).where(_T.c.order_no == bindparam("order_no"))
_BY_NO = Prepared(_BY_NO_SELECT)
BY_IDEMPOTENCY_KEY = Prepared(select(_T).where(_T.c.idempotency_key == bindparam("key")))
_BY_NO_LOCKED = Prepared(_BY_NO_SELECT.with_for_update())


def to_view(r: Any) -> OrderView:
    """An OrderView from an `Order`, or from a row of the order table's columns."""
    return OrderView(
        id=r.id,
        sku_id=r.sku_id,
        order_no=r.order_no,
        sku=r.sku_code,
        title=r.title,
        redemption=r.redemption,
        validity_days=r.validity_days,
        quantity=r.quantity,
        unit_price_minor=r.unit_price_minor,
        amount_minor=r.amount_minor,
        currency=r.currency,
        email=r.email,
        gateway=r.gateway,
        status=r.status,
        trade_no=r.trade_no,
        created_at=r.created_at,
        expires_at=r.expires_at,
        paid_at=r.paid_at,
        delivered_at=r.delivered_at,
        note=r.note,
        delivery_kind=r.delivery_kind,
        buyer_input=dict(r.buyer_input) if r.buyer_input else None,
    )


def find_order(session: Session, order_no: str, *, for_update: bool = False) -> OrderView | None:
    locked = for_update and session.get_bind().dialect.name == "postgresql"
    row = (_BY_NO_LOCKED if locked else _BY_NO).run(session, {"order_no": order_no}).first()
    return to_view(row) if row else None


def find_orders(session: Session, order_nos: Sequence[str]) -> list[OrderView | None]:
    """`find_order` for each of `order_nos`, in one round trip on PostgreSQL."""
    found = _BY_NO.run_each(session, [{"order_no": no} for no in order_nos])
    return [to_view(row) if (row := rows.first()) else None for rows in found]


def find_order_by_id(session: Session, order_id: int) -> OrderView | None:
    order = session.get(Order, order_id)
    return to_view(order) if order else None


_STATUS = Prepared(select(_T.c.status).where(_T.c.id == bindparam("order_id")))


def status_of(session: Session, order_id: int) -> OrderStatus | None:
    """The order's status alone: for a recheck under a lock, where building the whole view
    would be most of its cost."""
    status = _STATUS.run(session, {"order_id": order_id}).scalar_one_or_none()
    return None if status is None else OrderStatus(status)


_FLASH_SALE_OF = Prepared(
    select(_T.c.flash_sale_id, _T.c.device_id).where(_T.c.id == bindparam("order_id"))
)


def flash_sale_of(session: Session, order_id: int) -> tuple[int, str | None] | None:
    """The flash sale the order was placed in, and the device it was placed from (which the
    sale's per-buyer limit counts too); None if it was not placed in a flash sale."""
    row = _FLASH_SALE_OF.run(session, {"order_id": order_id}).first()
    return None if row is None or row[0] is None else (int(row[0]), row[1])


def find_by_trade(session: Session, gateway: str, trade_no: str) -> OrderView | None:
    """The order a channel's trade number paid (for refunds made in the channel's console)."""
    stmt = select(Order).where(Order.gateway == gateway, Order.trade_no == trade_no)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    order = session.execute(stmt.limit(1)).scalar_one_or_none()
    return to_view(order) if order else None


def get_order(session: Session, order_no: str) -> OrderView:
    order = find_order(session, order_no)
    if order is None:
        raise NotFound(f"no order {order_no!r}", where="order_no", slug="order-not-found")
    return order


def list_orders(
    session: Session,
    *,
    status: str | None = None,
    email: str | None = None,
    sku: str | None = None,
    order_no: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[OrderView]:
    stmt = select(Order).order_by(Order.id.desc()).limit(limit).offset(offset)
    if status:
        stmt = stmt.where(Order.status == status)
    if email:
        stmt = stmt.where(Order.email == email)
    if sku:
        stmt = stmt.where(Order.sku_code == sku)
    if order_no:
        stmt = stmt.where(Order.order_no == order_no)
    return [to_view(o) for o in session.execute(stmt).scalars()]


def awaiting_stock(
    session: Session, sku_id: int | None = None, limit: int = 500
) -> list[OrderView]:
    """Paid orders waiting for keys, oldest payment first."""
    stmt = (
        select(Order)
        .where(Order.status == OrderStatus.AWAITING_STOCK)
        .order_by(Order.paid_at, Order.id)
        .limit(limit)
    )
    if sku_id is not None:
        stmt = stmt.where(Order.sku_id == sku_id)
    return [to_view(o) for o in session.execute(stmt).scalars()]


def idempotency_keys_used(session: Session, idempotency_keys: Sequence[str]) -> list[bool]:
    """For each Idempotency-Key, whether an order was placed with it, with whatever body; in
    one round trip on PostgreSQL."""
    return ask_all(session, idempotency_key_asks(idempotency_keys))


def idempotency_key_asks(idempotency_keys: Sequence[str]) -> list[Ask[bool]]:
    """`idempotency_keys_used` as reads to go out with others (`prepared.ask_all`)."""
    return [Ask(BY_IDEMPOTENCY_KEY, {"key": key}, _found) for key in idempotency_keys]


def _found(rows: Rows) -> bool:
    return rows.first() is not None


_EXPIRED_DUE = select(_T.c.id).where(
    _T.c.status == OrderStatus.PENDING.value, _T.c.expires_at <= bindparam("now")
)
_ANY_EXPIRED_DUE = Prepared(_EXPIRED_DUE.limit(1))
_SKU_EXPIRED_DUE = Prepared(_EXPIRED_DUE.where(_T.c.sku_id == bindparam("sku_id")).limit(1))


_NEXT_EXPIRY = Prepared(
    select(_T.c.expires_at)
    .where(_T.c.status == OrderStatus.PENDING.value, _T.c.sku_id == bindparam("sku_id"))
    .order_by(_T.c.expires_at)
    .limit(1)
)


def next_expiry(session: Session, sku_id: int) -> datetime | None:
    """When the first of the SKU's pending orders runs out of time (its goods then return)."""
    return next_expiry_ask(sku_id).run(session)


def next_expiry_ask(sku_id: int) -> Ask[datetime | None]:
    """`next_expiry` as a read to go out with others (`prepared.ask_all`)."""
    return Ask(_NEXT_EXPIRY, {"sku_id": sku_id}, _first_value)


def _first_value(rows: Rows) -> datetime | None:
    row = rows.first()
    return None if row is None else cast(datetime, row[0])


def any_expired_due(session: Session, sku_id: int | None, now: datetime) -> bool:
    """Whether a pending order (of this SKU, or of any) is past its time (its keys are about to
    return)."""
    if sku_id is None:
        return _ANY_EXPIRED_DUE.run(session, {"now": now}).first() is not None
    return _SKU_EXPIRED_DUE.run(session, {"now": now, "sku_id": sku_id}).first() is not None


def quantity_pending(session: Session, sku_id: int) -> int:
    """Units of this SKU held by orders not paid yet (reusable goods count them as taken)."""
    total = session.execute(
        select(func.coalesce(func.sum(Order.quantity), 0)).where(
            Order.sku_id == sku_id, Order.status == OrderStatus.PENDING.value
        )
    ).scalar_one()
    return int(total)


def due_for_sync(
    session: Session, now: datetime, after: timedelta, every: timedelta, limit: int = 200
) -> list[str]:
    """Unpaid orders to ask the channel about: pending longer than `after` and not asked in the
    last `every`, and once more in the last minute before they expire."""
    not_recent = or_(Order.synced_at.is_(None), Order.synced_at <= now - every)
    last_minute = and_(
        Order.expires_at <= now + timedelta(minutes=1),
        or_(Order.synced_at.is_(None), Order.synced_at <= now - timedelta(minutes=1)),
    )
    rows = session.execute(
        select(Order.order_no)
        .where(
            Order.status == OrderStatus.PENDING,
            or_(and_(Order.created_at <= now - after, not_recent), last_minute),
        )
        .order_by(Order.created_at)
        .limit(limit)
    )
    return list(rows.scalars())


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Order.status, func.count()).group_by(Order.status))
    return dict(rows.tuples().all())
