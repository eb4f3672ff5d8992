"""A buyer's counts behind the per-buyer caps: open orders of a SKU by e-mail, device and
address, and units held in a flash sale; one buyer at a time (`count_open`, `quantity_held`) or
a flash sale's group in one statement (`count_open_many`); and the locks that keep one buyer's
concurrent checkouts from racing past them (`buyer_lock_keys`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
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

from kami.kernel.prepared import Prepared
from kami.orders.models import PENDING_ONLY, Order
from kami.orders.states import HOLDING

_T = cast(Table, Order.__table__)


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


def buyer_identities(email: str, device_id: str | None) -> list[str]:
    """What a buyer's lock covers (`buyer_lock_keys`): the buyer's own identities only, the
    e-mail and the device. Locking per address too serialised every checkout behind one NAT or
    proxy (measured: 48 of 64 connections waiting on it); the per-address cap is a coarse guard
    that a race may overshoot by a few orders."""
    identities = [f"e:{email.lower()}"]
    if device_id:
        identities.append(f"d:{device_id}")
    return identities


def buyer_lock_keys(sku_code: str, identities: list[str]) -> list[int]:
    """The advisory lock keys that serialise one buyer's concurrent checkouts of a SKU, so caps
    cannot be raced past: one per identity (e-mail, device), in the fixed order they are to be
    taken in (no deadlocks). PostgreSQL only: SQLite's `BEGIN IMMEDIATE` already serialises
    every writer. Taken by the checkout's first statement (`catalog.find_sku_on_sale`)."""
    return sorted({_lock_key(f"{sku_code}:{ident}") for ident in identities})


def _lock_key(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True
    )


def count_open(
    session: Session,
    sku_id: int,
    *,
    email: str,
    device_id: str | None,
    buyer_ip: str | None,
    held_in_sale: int | None = None,
) -> dict[str, int]:
    """Pending orders of this SKU by the buyer's e-mail, device and address (0 for one not
    given), keyed "email", "device_id", "buyer_ip"; with `held_in_sale` (a flash sale's id),
    also "held": the units `quantity_held_in_sale` counts, in the same statement."""
    values = {"sku_id": sku_id, "email": email, "device_id": device_id, "buyer_ip": buyer_ip}
    if held_in_sale is None:
        row = _COUNT_OPEN.run(session, values).one()
        return {name: int(n) for name, n in zip(_WHO, row, strict=True)}
    row = _COUNT_OPEN_AND_HELD.run(session, {**values, "sale_id": held_in_sale}).one()
    return {name: int(n) for name, n in zip((*_WHO, "held"), row, strict=True)}


def quantity_held(
    session: Session, sku_id: int, since: datetime, *, email: str, device_id: str | None
) -> int:
    """Units a buyer holds or bought of this SKU since `since` (a reusable key's per-buyer
    limit): their orders by e-mail, and by device those placed under another e-mail."""
    params = {"sku_id": sku_id, "since": since, "email": email, "device_id": device_id}
    return int(_HELD.run(session, params).scalar_one())


def quantity_held_in_sale(
    session: Session, sku_id: int, sale_id: int, *, email: str, device_id: str | None
) -> int:
    """Units a buyer holds or bought in flash sale `sale_id` of this SKU (its per-buyer limit):
    their orders by e-mail, and by device those placed under another e-mail."""
    params = {"sku_id": sku_id, "sale_id": sale_id, "email": email, "device_id": device_id}
    return int(_HELD_IN_SALE.run(session, params).scalar_one())


# As `_OPEN_COUNTS`: one scalar subquery per index, (email, sku_id) and (device_id, sku_id),
# with the time and the status tested in the sum's FILTER. Written as one WHERE with
# `email = ? OR device_id = ?`, SQLite without statistics read every holding order of the SKU
# through (sku_id, status) instead, so a flash-sale checkout slowed with every order placed
# before it (measured: half of the flash sale's statement time at 6,000 orders).
def _held_by(column: Any, given: Any, in_sale: Any, *other: Any) -> Any:
    holding = and_(in_sale, or_(*(_T.c.status == s.value for s in sorted(HOLDING))), *other)
    return (
        select(func.coalesce(func.sum(_T.c.quantity).filter(holding), 0))
        .where(_T.c.sku_id == bindparam("sku_id"), column == given)
        .scalar_subquery()
    )


# What a limit counts: a flash sale's, the orders placed in that sale (each names its sale;
# a SKU runs one sale after another, each with its own counts); a reusable key's
# (`quantity_held`), the SKU's orders since a moment.
_IN_SALE: Any = _T.c.flash_sale_id == bindparam("sale_id")
_SINCE: Any = _T.c.created_at >= bindparam("since")


def _held_expr(email: Any, device_id: Any, in_sale: Any = _IN_SALE) -> Any:
    return _held_by(_T.c.email, email, in_sale) + _held_by(
        _T.c.device_id, device_id, in_sale, _T.c.email != email
    )


_HELD_EXPR = _held_expr(_EMAIL, _DEVICE_ID)
_HELD = Prepared(select(_held_expr(_EMAIL, _DEVICE_ID, _SINCE)))
_HELD_IN_SALE = Prepared(select(_HELD_EXPR))
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
    session: Session, sku_id: int, buyers: Sequence[Buyer], sale_id: int
) -> list[dict[str, int]]:
    """`count_open(…, held_in_sale=sale_id)` for each of `buyers`, in one statement.

    An address is counted once, for the first buyer who has it: in a flash sale many buyers
    share one (a campus, a mobile carrier), and each count reads every pending order from it."""
    first: dict[str, int] = {}  # address -> the first buyer with it
    listed = []
    for i, b in enumerate(buyers):
        ip = b.buyer_ip if b.buyer_ip is not None and first.setdefault(b.buyer_ip, i) == i else None
        listed.append([i, b.email, b.device_id, ip])
    rows = _COUNT_OPEN_MANY.run(
        session, {"sku_id": sku_id, "sale_id": sale_id, "buyers": json.dumps(listed)}
    ).all()
    names = (*_WHO, "held")
    counts: list[dict[str, int]] = [{} for _ in buyers]
    for i, *found in rows:
        counts[i] = {name: int(n) for name, n in zip(names, found, strict=True)}
    for i, b in enumerate(buyers):
        if b.buyer_ip is not None:
            counts[i]["buyer_ip"] = counts[first[b.buyer_ip]]["buyer_ip"]
    return counts
