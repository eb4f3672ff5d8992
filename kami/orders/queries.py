"""Order reads."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kami.kernel.errors import NotFound
from kami.orders.models import Order
from kami.orders.schemas import OrderView
from kami.orders.states import OrderStatus


def to_view(o: Order) -> OrderView:
    return OrderView(
        id=o.id,
        sku_id=o.sku_id,
        order_no=o.order_no,
        sku=o.sku_code,
        title=o.title,
        redemption=o.redemption,
        validity_days=o.validity_days,
        quantity=o.quantity,
        unit_price_minor=o.unit_price_minor,
        amount_minor=o.amount_minor,
        currency=o.currency,
        email=o.email,
        gateway=o.gateway,
        status=o.status,
        trade_no=o.trade_no,
        created_at=o.created_at,
        expires_at=o.expires_at,
        paid_at=o.paid_at,
        delivered_at=o.delivered_at,
        note=o.note,
    )


def find_order(session: Session, order_no: str, *, for_update: bool = False) -> OrderView | None:
    stmt = select(Order).where(Order.order_no == order_no)
    if for_update and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    order = session.execute(stmt).scalar_one_or_none()
    return to_view(order) if order else None


def get_order(session: Session, order_no: str) -> OrderView:
    order = find_order(session, order_no)
    if order is None:
        raise NotFound(f"no order {order_no!r}", where="order_no", slug="order-not-found")
    return order


def get_order_by_id(session: Session, order_id: int) -> OrderView:
    order = session.get(Order, order_id)
    if order is None:
        raise NotFound(f"no order with id {order_id}", where="order")
    return to_view(order)


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


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Order.status, func.count()).group_by(Order.status))
    return dict(rows.tuples().all())
