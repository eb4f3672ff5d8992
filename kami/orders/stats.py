"""Dashboard figures for the admin console: sales per day, orders per status, top SKUs, and
the orders that are paid but not delivered yet (the ones a seller must never miss).

Sales count an order on the day it was paid (refunded orders included: the money came in).
Days are the shop's calendar days, given as an offset from UTC (China: +8 h).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kami.orders.models import Order
from kami.orders.queries import to_view
from kami.orders.schemas import OrderView
from kami.orders.states import OrderStatus

# Paid and not yet delivered: delivering (lines pending) or waiting for stock.
UNDELIVERED = (OrderStatus.PAID.value, OrderStatus.AWAITING_STOCK.value)


@dataclass(frozen=True, slots=True)
class DaySales:
    day: date
    orders: int
    amounts: dict[str, int] = field(default_factory=dict)  # currency → minor units


@dataclass(frozen=True, slots=True)
class TopSku:
    sku_code: str
    title: str
    orders: int
    quantity: int
    amounts: dict[str, int]


def sales_by_day(
    session: Session, now: datetime, days: int = 30, utc_offset: timedelta = timedelta(0)
) -> list[DaySales]:
    """One entry per calendar day, oldest first, today last; days without sales are zero."""
    today = (now + utc_offset).date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo) - utc_offset
    rows = session.execute(
        select(Order.paid_at, Order.amount_minor, Order.currency).where(
            Order.paid_at.is_not(None), Order.paid_at >= since
        )
    ).tuples()
    counts: dict[date, int] = defaultdict(int)
    amounts: dict[date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for paid_at, amount, currency in rows:
        assert paid_at is not None
        day = (paid_at + utc_offset).date()
        counts[day] += 1
        amounts[day][currency] += amount
    return [
        DaySales(d, counts.get(d, 0), dict(amounts.get(d, {})))
        for d in (first + timedelta(days=i) for i in range(days))
    ]


def top_skus(session: Session, since: datetime, limit: int = 10) -> list[TopSku]:
    rows = session.execute(
        select(
            Order.sku_code,
            Order.currency,
            func.max(Order.title),
            func.count(),
            func.sum(Order.quantity),
            func.sum(Order.amount_minor),
        )
        .where(Order.paid_at.is_not(None), Order.paid_at >= since)
        .group_by(Order.sku_code, Order.currency)
    ).tuples()
    by_sku: dict[str, TopSku] = {}
    for code, currency, title, n, quantity, amount in rows:
        prev = by_sku.get(code)
        merged = dict(prev.amounts) if prev else {}
        merged[currency] = int(amount or 0)
        by_sku[code] = TopSku(
            code,
            title or code,
            (prev.orders if prev else 0) + int(n),
            (prev.quantity if prev else 0) + int(quantity or 0),
            merged,
        )
    ranked = sorted(by_sku.values(), key=lambda t: (-t.quantity, -t.orders, t.sku_code))
    return ranked[:limit]


def count_undelivered(session: Session) -> int:
    return int(
        session.execute(
            select(func.count()).select_from(Order).where(Order.status.in_(UNDELIVERED))
        ).scalar_one()
    )


def list_undelivered(session: Session, limit: int = 200) -> list[OrderView]:
    """Paid orders not delivered yet, oldest payment first: the first to look at."""
    rows = session.execute(
        select(Order)
        .where(Order.status.in_(UNDELIVERED))
        .order_by(Order.paid_at, Order.id)
        .limit(limit)
    ).scalars()
    return [to_view(o) for o in rows]
