"""Order writes. Status changes are guarded updates checked against the state machine."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Dialect, Table, bindparam, false, insert, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kami.kernel.errors import Conflict
from kami.kernel.ids import new_order_no
from kami.kernel.prepared import Prepared, shapes
from kami.kernel.prepared_insert import PreparedInsert
from kami.orders.buyer_counts import ready_count_open_many
from kami.orders.models import Order
from kami.orders.queries import BY_IDEMPOTENCY_KEY, to_view
from kami.orders.schemas import OrderIn, OrderView
from kami.orders.states import LAPSED, OrderStatus, sources_of


@dataclass(frozen=True, slots=True)
class Priced:
    sku_id: int
    sku_code: str
    title: str
    redemption: str
    validity_days: int | None
    unit_price_minor: int
    currency: str
    flash_sale_id: int | None = None
    delivery_kind: str = "card_key"
    buyer_input: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Released:
    """An order that gave its reservation back (expired or cancelled)."""

    id: int
    quantity: int
    flash_sale_id: int | None


def request_hash(data: OrderIn) -> bytes:
    canonical = json.dumps(data.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


def find_idempotent(session: Session, key: str, data: OrderIn) -> OrderView | None:
    """The order an earlier request with this key made, if the bodies match; 409 otherwise."""
    found = find_idempotent_each(session, [(key, data)])[0]
    if isinstance(found, Conflict):
        raise found
    return found


def find_idempotent_each(
    session: Session, asked: Sequence[tuple[str, OrderIn]]
) -> list[OrderView | Conflict | None]:
    """`find_idempotent` for each (key, body) of `asked`, in one round trip on PostgreSQL: the
    earlier order, the 409 to answer (a different body), or None."""
    found = BY_IDEMPOTENCY_KEY.run_each(session, [{"key": key} for key, _ in asked])
    answers: list[OrderView | Conflict | None] = []
    for (_, data), rows in zip(asked, found, strict=True):
        order = rows.first()
        if order is None:
            answers.append(None)
        elif order.request_hash != request_hash(data):
            answers.append(
                Conflict(
                    "this Idempotency-Key was already used with a different request body",
                    where="Idempotency-Key",
                    slug="idempotency-key-reused",
                )
            )
        else:
            answers.append(to_view(order))
    return answers


_T = cast(Table, Order.__table__)
# Columns a new order starts without; it is written with all the others.
_EMPTY_AT_START = ("trade_no", "paid_at", "delivered_at", "note", "synced_at")
_COLUMNS = [c.key for c in _T.columns if c.key not in {"id", *_EMPTY_AT_START}]
_INSERT = PreparedInsert(_T, _COLUMNS, _T.c.id)


@dataclass(frozen=True, slots=True)
class NewOrder:
    """One order of `create_orders`."""

    data: OrderIn
    priced: Priced
    buyer_ip: str | None
    device_id: str | None
    channel: str = "shop"
    idempotency_key: str | None = None


def create_order(
    session: Session,
    data: OrderIn,
    priced: Priced,
    *,
    now: datetime,
    ttl: timedelta,
    idempotency_key: str | None,
    buyer_ip: str | None,
    device_id: str | None = None,
    channel: str = "shop",
) -> tuple[OrderView, bool]:
    """Insert a pending order; returns (order, created). A replayed key returns the first order."""
    if idempotency_key:
        existing = find_idempotent(session, idempotency_key, data)
        if existing is not None:
            return existing, False
    new = NewOrder(data, priced, buyer_ip, device_id, channel)
    row = _new_row(new, now=now, ttl=ttl, idempotency_key=idempotency_key)
    if not idempotency_key:  # nothing to recover from: no savepoint round trips
        order_id = _INSERT.run(session, **row).scalar_one()
        written = SimpleNamespace(id=order_id, **dict.fromkeys(_EMPTY_AT_START), **row)
        return to_view(written), True
    order = Order(**row)
    try:
        with session.begin_nested():
            session.add(order)
            session.flush()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key committed first.
        if idempotency_key:
            existing = find_idempotent(session, idempotency_key, data)
            if existing is not None:
                return existing, False
        raise
    return to_view(order), True


def _new_row(
    new: NewOrder, *, now: datetime, ttl: timedelta, idempotency_key: str | None
) -> dict[str, Any]:
    data, priced = new.data, new.priced
    return dict(
        order_no=new_order_no(),
        sku_id=priced.sku_id,
        sku_code=priced.sku_code,
        title=priced.title,
        redemption=priced.redemption,
        validity_days=priced.validity_days,
        quantity=data.quantity,
        unit_price_minor=priced.unit_price_minor,
        amount_minor=priced.unit_price_minor * data.quantity,
        currency=priced.currency,
        email=data.email,
        gateway=data.gateway,
        status=OrderStatus.PENDING,
        idempotency_key=idempotency_key,
        request_hash=request_hash(data) if idempotency_key else None,
        buyer_ip=new.buyer_ip,
        device_id=new.device_id,
        channel=new.channel,
        flash_sale_id=priced.flash_sale_id,
        delivery_kind=priced.delivery_kind,
        buyer_input=priced.buyer_input or None,
        created_at=now,
        expires_at=now + ttl,
    )


@functools.cache
def _insert_many(n: int) -> Prepared:
    # Typed: in a multi-row VALUES only the first row's binds take their columns' types
    # (decision 0020).
    return Prepared(
        insert(_T)
        .values(
            [{c: bindparam(f"p{i}_{c}", type_=_T.c[c].type) for c in _COLUMNS} for i in range(n)]
        )
        .returning(_T.c.id, _T.c.order_no)
    )


def ready_many(dialect: Dialect, most: int) -> None:
    """Compile the statements of `count_open_many` and `create_orders` for up to `most` rows
    now, not on first use."""
    ready_count_open_many(dialect)
    for n in shapes(most):
        _insert_many(n).ready(dialect)


def create_orders(
    session: Session, new: Sequence[NewOrder], *, now: datetime, ttl: timedelta
) -> list[OrderView]:
    """Insert pending orders in the order given: one statement per power of two of them (13
    orders: 8, 4 and 1), shapes compiled ahead (`ready_many`). An Idempotency-Key already
    taken fails the statement (IntegrityError), as `create_order`'s."""
    rows = [_new_row(n, now=now, ttl=ttl, idempotency_key=n.idempotency_key) for n in new]
    ids: dict[str, int] = {}
    done = 0
    while done < len(rows):
        size = 1 << ((len(rows) - done).bit_length() - 1)
        chunk = rows[done : done + size]
        values = {f"p{i}_{c}": row[c] for i, row in enumerate(chunk) for c in _COLUMNS}
        ids.update((no, order_id) for order_id, no in _insert_many(size).run(session, values))
        done += size
    empty = dict.fromkeys(_EMPTY_AT_START)
    return [to_view(SimpleNamespace(id=ids[r["order_no"]], **empty, **r)) for r in rows]


@functools.cache
def _move_statement(
    target: OrderStatus,
    columns: tuple[str, ...],
    sources: frozenset[OrderStatus] | None = None,
) -> Prepared:
    """A guarded move, built once per target and set of columns (see the note in queries):
    from `sources` if given, else from every status the state machine moves to `target`."""
    allowed = sorted(s.value for s in (sources or sources_of(target)))
    return Prepared(
        update(_T)
        .where(_T.c.id == bindparam("order_id"), or_(false(), *(_T.c.status == s for s in allowed)))
        .values(status=target.value, **{c: bindparam(f"v_{c}") for c in columns})
    )


# A payment's move and its delivery's in one statement, for card keys whose reservation the
# same transaction sells: from pending only (an order that lapsed has no reservation, and one
# paid before is left alone), to the delivery's status. Statement for statement it takes the
# place of the move to paid, and the move to delivered goes (one row version and its index
# entries fewer on PostgreSQL). Made now, so that it is compiled as a server starts (decision
# 0024), as are the payment's other two moves.
_PAID_AND_DELIVERED = ("delivered_at", "paid_at", "trade_no")
_PENDING = frozenset({OrderStatus.PENDING})
_PAID = ("paid_at", "trade_no")
_move_statement(OrderStatus.DELIVERED, _PAID_AND_DELIVERED, sources=_PENDING)
_move_statement(OrderStatus.PAID, _PAID, sources=_PENDING)
_move_statement(OrderStatus.PAID, _PAID, sources=LAPSED)
# Only the delivery `pay_and_deliver_each` just made: its trade and its time, in this transaction.
_NOT_DELIVERED_YET = Prepared(
    update(_T)
    .where(
        _T.c.id == bindparam("order_id"),
        _T.c.status == OrderStatus.DELIVERED.value,
        _T.c.trade_no == bindparam("by_trade"),
        _T.c.delivered_at == bindparam("at", type_=_T.c.delivered_at.type),
    )
    .values(status=OrderStatus.PAID.value, delivered_at=None)
)


def pay_and_deliver_each(
    session: Session, paid: Sequence[tuple[int, str]], now: datetime
) -> list[bool]:
    """Each (order id, trade number) of `paid`: the pending order paid by that trade and
    delivered at `now`; in one round trip on PostgreSQL. Whether each moved (one that did not
    was paid before, or lapsed: `pay_lapsed`). The caller delivers in the same transaction, or
    takes the delivery back (`not_delivered_yet`)."""
    moves = [
        (order_id, {"paid_at": now, "delivered_at": now, "trade_no": trade})
        for order_id, trade in paid
    ]
    return move_each(session, OrderStatus.DELIVERED, moves, sources=_PENDING)


def pay(session: Session, order_id: int, trade_no: str, now: datetime) -> bool:
    """The pending order paid by `trade_no` at `now`; whether it moved (one that did not was
    paid before, or lapsed: `pay_lapsed`)."""
    return _pay_from(session, _PENDING, order_id, trade_no, now)


def pay_lapsed(session: Session, order_id: int, trade_no: str, now: datetime) -> bool:
    """The order that lapsed (expired or cancelled, its goods and flash-sale quota given back)
    paid late by `trade_no` at `now`; whether it moved. Only a lapsed order moves: it can only
    have come from pending, and it can only go on to paid, so a payment that first found it no
    longer pending (`pay`, `pay_and_deliver_each`) and then not lapsed either found it paid."""
    return _pay_from(session, LAPSED, order_id, trade_no, now)


def _pay_from(
    session: Session,
    sources: frozenset[OrderStatus],
    order_id: int,
    trade_no: str,
    now: datetime,
) -> bool:
    params = {"order_id": order_id, "v_paid_at": now, "v_trade_no": trade_no}
    return bool(
        _move_statement(OrderStatus.PAID, _PAID, sources=sources).run(session, params).rowcount
    )


def not_delivered_yet(session: Session, order_id: int, trade_no: str, now: datetime) -> None:
    """Take back, in the same transaction, the delivery `pay_and_deliver_each` moved an order
    to (by `trade_no`, at `now`) when there turned out to be nothing to deliver yet: paid, not
    delivered. Never seen outside the transaction, so it is no move of the state machine's;
    an order delivered any other way is refused (RuntimeError), never put back."""
    values = {"order_id": order_id, "by_trade": trade_no, "at": now}
    if not _NOT_DELIVERED_YET.run(session, values).rowcount:
        raise RuntimeError(f"order {order_id} was not delivered by {trade_no!r} just now")


def move(session: Session, order_id: int, target: OrderStatus, **values: Any) -> bool:
    """Guarded status change: only from a status the state machine allows. True if it moved."""
    stmt = _move_statement(target, tuple(sorted(values)), None)
    params = {"order_id": order_id, **{f"v_{c}": v for c, v in values.items()}}
    return bool(stmt.run(session, params).rowcount)


def move_each(
    session: Session,
    target: OrderStatus,
    moves: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    sources: frozenset[OrderStatus] | None = None,
) -> list[bool]:
    """`move` for each (order id, values) of `moves`, whose values all set the same columns,
    in one round trip on PostgreSQL; whether each moved. `sources`: move only from these
    statuses, not from every one the state machine allows (`pay_and_deliver_each`)."""
    if not moves:
        return []
    columns = tuple(sorted(moves[0][1]))
    if any(tuple(sorted(values)) != columns for _, values in moves):
        raise TypeError("move_each: every move must set the same columns")
    stmt = _move_statement(target, columns, sources=sources)
    params = [
        {"order_id": order_id, **{f"v_{c}": v for c, v in values.items()}}
        for order_id, values in moves
    ]
    return [bool(rows.rowcount) for rows in stmt.run_each(session, params)]


def expire_due(session: Session, now: datetime, sku_id: int | None = None) -> list[Released]:
    """Expire pending orders past their time; returns them so their holds can be released."""
    stmt = (
        update(Order)
        .where(Order.status == OrderStatus.PENDING, Order.expires_at <= now)
        .values(status=OrderStatus.EXPIRED)
        .returning(Order.id, Order.quantity, Order.flash_sale_id)
        .execution_options(synchronize_session=False)
    )
    if sku_id is not None:
        stmt = stmt.where(Order.sku_id == sku_id)
    return [Released(*row) for row in session.execute(stmt).tuples()]


def cancel(session: Session, order_id: int) -> Released | None:
    """Cancel a pending order; None if it was no longer pending."""
    row = session.execute(
        update(Order)
        .where(Order.id == order_id, Order.status == OrderStatus.PENDING)
        .values(status=OrderStatus.CANCELLED)
        .returning(Order.id, Order.quantity, Order.flash_sale_id)
        .execution_options(synchronize_session=False)
    ).first()
    return Released(*row) if row else None


def mark_synced(session: Session, order_no: str, now: datetime) -> None:
    session.execute(
        update(Order)
        .where(Order.order_no == order_no)
        .values(synced_at=now)
        .execution_options(synchronize_session=False)
    )
