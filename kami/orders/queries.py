"""Order reads."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Dialect,
    String,
    Table,
    and_,
    bindparam,
    case,
    column,
    func,
    or_,
    select,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from kami.kernel.errors import NotFound
from kami.kernel.prepared import Ask, Prepared, Rows, ask_all
from kami.orders.models import PENDING_ONLY, Order
from kami.orders.schemas import OrderView
from kami.orders.states import HOLDING, OrderStatus

# The statements on the purchase path are built once and run as Core: building a statement
# and its cache key on every call, and loading ORM objects, were most of a purchase's CPU.
_T = cast(Table, Order.__table__)
_BY_NO_SELECT = select(_T).where(_T.c.order_no == bindparam("order_no"))
_BY_NO = Prepared(_BY_NO_SELECT)
BY_IDEMPOTENCY_KEY = Prepared(select(_T).where(_T.c.idempotency_key == bindparam("key")))
_BY_NO_LOCKED = Prepared(_BY_NO_SELECT.with_for_update())


# A buyer's pending orders of a SKU, counted by e-mail, device and address in one statement
# (one round trip instead of three), as three scalar subqueries so that each has its own index:
# - e-mail and device: that buyer's orders of the SKU, (column, sku_id); the status is tested
#   in the count, not the WHERE, or SQLite without statistics reads (status, sku_id) instead;
# - address: the index of pending orders (models.PENDING_ONLY), which SQLite and PostgreSQL use
#   only when the status is written into the SQL, not bound. It holds the status as a third
#   column so that it matches all three terms: SQLite, without statistics, otherwise took
#   (status, sku_id, paid_at), every pending order of the SKU (migration 0015).
def _open_counts(email: Any, device_id: Any, buyer_ip: Any) -> tuple[Any, ...]:
    """The three counts of the buyer whose e-mail, device and address are these expressions:
    bound parameters (`count_open`), or a row of the buyer list (`count_open_many`)."""
    return (
        *(
            select(func.count().filter(PENDING_ONLY))
            .where(_T.c.sku_id == bindparam("sku_id"), column == given)
            .scalar_subquery()
            for column, given in ((_T.c.email, email), (_T.c.device_id, device_id))
        ),
        select(func.count())
        .where(_T.c.sku_id == bindparam("sku_id"), _T.c.buyer_ip == buyer_ip)
        .where(PENDING_ONLY)
        .scalar_subquery(),
    )


# One buyer, as the bound parameters of `count_open` and `quantity_held`.
_EMAIL: Any = bindparam("email")
_DEVICE_ID: Any = bindparam("device_id")
_BUYER_IP: Any = bindparam("buyer_ip")
_OPEN_COUNTS = _open_counts(_EMAIL, _DEVICE_ID, _BUYER_IP)
_WHO = ("email", "device_id", "buyer_ip")


@dataclass(frozen=True, slots=True)
class Buyer:
    """Who places an order, as the caps count them."""

    email: str
    device_id: str | None
    buyer_ip: str | None


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


def buyer_lock_keys(sku_code: str, identities: list[str]) -> list[int]:
    """The advisory lock keys that serialise one buyer's concurrent checkouts of a SKU, so caps
    cannot be raced past: one per identity (e-mail, device), in the fixed order they are to be
    taken in (no deadlocks). PostgreSQL only: SQLite's `BEGIN IMMEDIATE` already serialises
    every writer. Taken by the checkout's first statement (`catalog.find_sku_on_sale`)."""
    return sorted({_lock_key(f"{sku_code}:{ident}") for ident in identities})


def idempotency_keys_used(session: Session, idempotency_keys: Sequence[str]) -> list[bool]:
    """For each Idempotency-Key, whether an order was placed with it, with whatever body; in
    one round trip on PostgreSQL."""
    return ask_all(session, idempotency_key_asks(idempotency_keys))


def idempotency_key_asks(idempotency_keys: Sequence[str]) -> list[Ask[bool]]:
    """`idempotency_keys_used` as reads to go out with others (`prepared.ask_all`)."""
    return [Ask(BY_IDEMPOTENCY_KEY, {"key": key}, _found) for key in idempotency_keys]


def _found(rows: Rows) -> bool:
    return rows.first() is not None


def _lock_key(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True
    )


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


def count_open(
    session: Session,
    sku_id: int,
    *,
    email: str,
    device_id: str | None,
    buyer_ip: str | None,
    held_since: datetime | None = None,
) -> dict[str, int]:
    """Pending orders of this SKU by the buyer's e-mail, device and address (0 for one not
    given), keyed "email", "device_id", "buyer_ip"; with `held_since`, also "held": the units
    `quantity_held` counts, in the same statement."""
    values = {"sku_id": sku_id, "email": email, "device_id": device_id, "buyer_ip": buyer_ip}
    if held_since is None:
        row = _COUNT_OPEN.run(session, values).one()
        return {name: int(n) for name, n in zip(_WHO, row, strict=True)}
    row = _COUNT_OPEN_AND_HELD.run(session, {**values, "since": held_since}).one()
    return {name: int(n) for name, n in zip((*_WHO, "held"), row, strict=True)}


def quantity_held(
    session: Session, sku_id: int, since: datetime, *, email: str, device_id: str | None
) -> int:
    """Units a buyer holds or bought of this SKU since `since` (flash-sale per-buyer limit):
    their orders by e-mail, and by device those placed under another e-mail."""
    params = {"sku_id": sku_id, "since": since, "email": email, "device_id": device_id}
    return int(_HELD.run(session, params).scalar_one())


# As `_OPEN_COUNTS`: one scalar subquery per index, (email, sku_id) and (device_id, sku_id),
# with the time and the status tested in the sum's FILTER. Written as one WHERE with
# `email = ? OR device_id = ?`, SQLite without statistics read every holding order of the SKU
# through (sku_id, status) instead, so a flash-sale checkout slowed with every order placed
# before it (measured: half of the flash sale's statement time at 6,000 orders).
def _held_by(column: Any, given: Any, *other: Any) -> Any:
    holding = and_(
        _T.c.created_at >= bindparam("since"),
        or_(*(_T.c.status == s.value for s in sorted(HOLDING))),
        *other,
    )
    return (
        select(func.coalesce(func.sum(_T.c.quantity).filter(holding), 0))
        .where(_T.c.sku_id == bindparam("sku_id"), column == given)
        .scalar_subquery()
    )


def _held_expr(email: Any, device_id: Any) -> Any:
    return _held_by(_T.c.email, email) + _held_by(_T.c.device_id, device_id, _T.c.email != email)


_HELD_EXPR = _held_expr(_EMAIL, _DEVICE_ID)
_HELD = Prepared(select(_HELD_EXPR))
_COUNT_OPEN = Prepared(select(*_OPEN_COUNTS))
_COUNT_OPEN_AND_HELD = Prepared(select(*_OPEN_COUNTS, _HELD_EXPR))


# `count_open_many`'s buyers arrive as one parameter, a JSON list of `[i, email, device_id,
# buyer_ip]`, read as a table (PostgreSQL's json_array_elements, SQLite's json_each), and each
# row of it gets the scalar subqueries of `count_open` with `held`. One statement of one shape
# for any number of buyers: written instead with four parameters per buyer, a group of 32 was
# a statement of 160 subqueries that PostgreSQL planned anew on every run, 4.8 ms of planning
# for 2.5 ms of work (measured); as a list it plans in 0.2 ms and runs in 0.3 ms.
def _buyer_list(dialect: str) -> Any:
    given = bindparam("buyers", type_=String)
    if dialect == "postgresql":
        rows = func.json_array_elements(sql_cast(given, JSON))
        return rows.table_valued(column("value", JSON)).render_derived(name="b")
    return func.json_each(given).table_valued(column("value", JSON)).alias("b")


def _count_open_many_in(dialect: str) -> Any:
    b = _buyer_list(dialect)
    email, device_id, buyer_ip = (b.c.value[n].as_string() for n in (1, 2, 3))
    by_email, by_device, by_ip = _open_counts(email, device_id, buyer_ip)
    # Only for a row that carries an address (the first buyer with it): a subquery under CASE
    # runs only when its branch is taken, and without statistics PostgreSQL read the address
    # count through (status, sku_id), every pending order of the SKU, for every row.
    by_ip = case((buyer_ip.is_(None), 0), else_=by_ip)
    return select(
        b.c.value[0].as_integer(), by_email, by_device, by_ip, _held_expr(email, device_id)
    ).select_from(b)


_COUNT_OPEN_MANY = Prepared({name: _count_open_many_in(name) for name in ("sqlite", "postgresql")})


def ready_count_open_many(dialect: Dialect) -> None:
    """Compile `count_open_many`'s statement now, not on a flash sale's first group."""
    _COUNT_OPEN_MANY.ready(dialect)


def count_open_many(
    session: Session, sku_id: int, buyers: Sequence[Buyer], held_since: datetime
) -> list[dict[str, int]]:
    """`count_open(…, held_since=…)` for each of `buyers`, in one statement.

    An address is counted once, for the first buyer who has it: in a flash sale many buyers
    share one (a campus, a mobile carrier), and each count reads every pending order from it."""
    first: dict[str, int] = {}  # address -> the first buyer with it
    listed = []
    for i, b in enumerate(buyers):
        ip = b.buyer_ip if b.buyer_ip is not None and first.setdefault(b.buyer_ip, i) == i else None
        listed.append([i, b.email, b.device_id, ip])
    rows = _COUNT_OPEN_MANY.run(
        session, {"sku_id": sku_id, "since": held_since, "buyers": json.dumps(listed)}
    ).all()
    names = (*_WHO, "held")
    counts: list[dict[str, int]] = [{} for _ in buyers]
    for i, *found in rows:
        counts[i] = {name: int(n) for name, n in zip(names, found, strict=True)}
    for i, b in enumerate(buyers):
        if b.buyer_ip is not None:
            counts[i]["buyer_ip"] = counts[first[b.buyer_ip]]["buyer_ip"]
    return counts


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
