"""Taking keys for an order: one guarded statement, never read-then-write (invariant 1).

`WITH picked AS MATERIALIZED (<earliest-expiring available ids and statuses> FOR UPDATE SKIP
LOCKED) UPDATE … FROM picked WHERE id = picked.id AND status = picked.status RETURNING id` takes
keys only if they are still available at the moment of the write. Concurrent claimers on
PostgreSQL take different rows instead of queueing behind one another; on SQLite writers are
serialised by `BEGIN IMMEDIATE`.
The unique index on live `delivery_item.key_id` stands behind it. All or none: a short take is put
back in the same transaction.

Keys are first *reserved* for an order when it is placed and *sold* when it is paid; expiry or
cancellation puts reserved keys back. A paid order whose reservation lapsed takes fresh keys.

The scan hint: every taken row leaves a dead index entry at the head of the available range until
vacuum, so a scan from the start of the range slows down as the pool drains. Each process keeps,
per SKU, the position (expires_at, id) of the last key it took and starts the next scan there.
When the hinted scan comes up short, the full range is scanned once more, so keys put back
behind the hint (released reservations, an import of earlier-expiring keys) are still found;
hints also lapse after `HINT_TTL` so the earliest-expiry-first order is restored within a
second even when another process changed the pool.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Dialect,
    Integer,
    Update,
    bindparam,
    case,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session

from kami.kernel.prepared import Ask, Prepared, shape_size, shapes
from kami.vault.models import KEY_AVAILABLE, Key
from kami.vault.selling import put_back
from kami.vault.states import KeyStatus

HINT_TTL = 1.0


class ClaimHints:
    """Per-process, per-SKU scan start positions. Only a speed-up: correctness never needs it."""

    def __init__(self) -> None:
        self._hints: dict[int, tuple[datetime, int, float]] = {}
        self._lock = threading.Lock()

    def get(self, sku_id: int) -> tuple[datetime, int] | None:
        with self._lock:
            hint = self._hints.get(sku_id)
        if hint is None or time.monotonic() - hint[2] > HINT_TTL:
            return None
        return hint[0], hint[1]

    def advance(self, sku_id: int, expires_at: datetime, key_id: int, *, rescanned: bool) -> None:
        """Move the hint forward; after a scan from the start of the range, restart its clock.

        A hinted scan keeps the hint's age, so the range is rescanned from its start at least
        once every HINT_TTL; that rescan sets a fresh hint, which hinted scans then extend.
        """
        now = time.monotonic()
        with self._lock:
            old = self._hints.get(sku_id)
            if rescanned or old is None or now - old[2] > HINT_TTL:
                self._hints[sku_id] = (expires_at, key_id, now)
            elif (expires_at, key_id) > (old[0], old[1]):
                self._hints[sku_id] = (expires_at, key_id, old[2])

    def forget(self, sku_id: int | None = None) -> None:
        with self._lock:
            if sku_id is None:
                self._hints.clear()
            else:
                self._hints.pop(sku_id, None)


@functools.cache
def claim_statement(hinted: bool, target: KeyStatus) -> Prepared:
    """The claim, from the start of the SKU's range or from a hint (`p_start_at`, `p_start_id`),
    marking keys `target`: what `take_keys` runs, and `bench/bare_claim.py` on a bare driver."""
    return Prepared({d: _take_for(d, hinted, target) for d in ("sqlite", "postgresql")})


def _pick(dialect: str, hinted: bool, *columns: Any) -> Any:
    """The ids, statuses (and `columns`) of the keys a claim takes, as a MATERIALIZED CTE: the
    SKU's earliest-expiring available keys, from the hint if `hinted`."""
    pick = (
        select(Key.id, Key.status, *columns)
        .where(
            Key.sku_id == bindparam("p_sku"),
            KEY_AVAILABLE,
            Key.expires_at > bindparam("p_now"),
        )
        .order_by(Key.expires_at, Key.id)
        .limit(bindparam("p_quantity", type_=Integer))
    )
    if hinted:
        # Typed: a bind inside tuple_() takes no type from its counterpart (decision 0005).
        pick = pick.where(
            tuple_(Key.expires_at, Key.id)
            > tuple_(
                bindparam("p_start_at", type_=Key.__table__.c.expires_at.type),
                bindparam("p_start_id", type_=Integer),
            )
        )
    if dialect == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    # A MATERIALIZED CTE, not `id IN (subquery)` nor a derived table: PostgreSQL may rescan
    # those once per outer row, and a rescanned LIMIT … SKIP LOCKED skips the rows this very
    # statement just updated and returns further ones (seen: three keys claimed for a quantity
    # of two). A materialized CTE is evaluated exactly once. See docs/decisions/0003.
    return pick.cte("picked").prefix_with("MATERIALIZED")


def _still_as_picked(picked: Any) -> Any:
    """The update's guard: each key is the one picked, still in the status it was picked in
    (available). Compared with the pick's own column, not written as "available" again: that
    literal would let PostgreSQL find the keys to update through the available-keys index, and
    with no statistics yet (a pool just imported, a flash sale at once) it chose to read every
    key on sale there, comparing each with the picked ones, rather than look those up by id
    (decision 0027)."""
    return (Key.id == picked.c.id) & (Key.status == picked.c.status)


def _take_for(dialect: str, hinted: bool, target: KeyStatus) -> Update:
    """The claim statement, built once per shape: building it per call cost more Python time
    than the database spent running it (measured on the claim benchmark)."""
    picked = _pick(dialect, hinted)
    values: dict[str, Any] = {"status": target, "order_id": bindparam("p_order")}
    if target is KeyStatus.SOLD:
        values["sold_at"] = bindparam("p_now")
    return (
        update(Key)
        .where(_still_as_picked(picked))
        .values(**values)
        .returning(Key.id, Key.expires_at)
        .execution_options(synchronize_session=False)
    )


def _take(
    session: Session,
    sku_id: int,
    order_id: int,
    quantity: int,
    now: datetime,
    target: KeyStatus,
    start: tuple[datetime, int] | None,
) -> list[tuple[int, datetime]]:
    stmt = claim_statement(start is not None, target)
    params: dict[str, Any] = {
        "p_sku": sku_id,
        "p_now": now,
        "p_quantity": quantity,
        "p_order": order_id,
    }
    if start is not None:
        params["p_start_at"], params["p_start_id"] = start
    # Core execution on the session's connection: the ORM layer adds nothing to a bulk UPDATE
    # … RETURNING of two columns but cost a third of the claim's time.
    return [(r[0], r[1]) for r in stmt.run(session, params)]


def take_keys(
    session: Session,
    sku_id: int,
    order_id: int,
    quantity: int,
    now: datetime,
    *,
    target: KeyStatus = KeyStatus.SOLD,
    hints: ClaimHints | None = None,
) -> list[int]:
    """Mark `quantity` keys `target` for `order_id`; returns their ids, or [] if stock is short."""
    if quantity <= 0:
        return []
    start = hints.get(sku_id) if hints else None
    got = _take(session, sku_id, order_id, quantity, now, target, start)
    rescanned = start is None
    if len(got) < quantity and start is not None:
        more = _take(session, sku_id, order_id, quantity - len(got), now, target, None)
        got += more
        rescanned = True
    if len(got) < quantity:
        if got:
            put_back(session, order_id, [k for k, _ in got])
        return []
    if hints is not None:
        last_expiry, last_id = max((e, k) for k, e in got)
        hints.advance(sku_id, last_expiry, last_id, rescanned=rescanned)
    return sorted(k for k, _ in got)


def reserve_keys_for(
    session: Session,
    sku_id: int,
    wants: Sequence[tuple[int, int]],
    now: datetime,
    *,
    hints: ClaimHints | None = None,
) -> dict[int, list[int]] | None:
    """Reserve keys for several orders of one SKU at once: `wants` is (order id, quantity) in
    the order they are served. Returns each order's key ids; None, with nothing taken, if the
    stock cannot serve them all. The same claim as `take_keys`, in one statement for all: the
    keys taken are numbered in claim order, and the n-th goes to the order of the n-th unit."""
    units = [order_id for order_id, quantity in wants for _ in range(quantity)]
    if not units:
        return {}
    start = hints.get(sku_id) if hints else None
    got = _take_for_each(session, sku_id, units, now, start)
    rescanned = start is None
    if len(got) < len(units) and start is not None:
        got += _take_for_each(session, sku_id, units[len(got) :], now, None)
        rescanned = True
    if len(got) < len(units):
        for order_id in {o for _, _, o in got}:
            put_back(session, order_id, [k for k, _, o in got if o == order_id])
        return None
    if hints is not None:
        last_expiry, last_id = max((e, k) for k, e, _ in got)
        hints.advance(sku_id, last_expiry, last_id, rescanned=rescanned)
    taken: dict[int, list[int]] = {order_id: [] for order_id, _ in wants}
    for key_id, _, order_id in sorted(got):
        taken[order_id].append(key_id)
    return taken


def ready_reserve_keys_for(dialect: Dialect, most: int) -> None:
    """Compile `reserve_keys_for`'s statements for up to `most` units now, not on first use."""
    for n in shapes(most):
        for hinted in (False, True):
            _take_each_statement(hinted, n).ready(dialect)


@functools.cache
def _take_each_statement(hinted: bool, n: int) -> Prepared:
    return Prepared({d: _take_each_for(d, hinted, n) for d in ("sqlite", "postgresql")})


def _take_each_for(dialect: str, hinted: bool, n: int) -> Update:
    picked = _pick(dialect, hinted, Key.expires_at)
    numbered = select(
        picked.c.id,
        picked.c.status,
        func.row_number().over(order_by=(picked.c.expires_at, picked.c.id)).label("rn"),
    ).cte("numbered")
    order_of_unit = case(
        *(
            (numbered.c.rn == i + 1, sql_cast(bindparam(f"p_order_{i}", type_=Integer), Integer))
            for i in range(n)
        )
    )
    return (
        update(Key)
        .where(_still_as_picked(numbered))
        .values(status=KeyStatus.RESERVED, order_id=order_of_unit)
        .returning(Key.id, Key.expires_at, Key.order_id)
        .execution_options(synchronize_session=False)
    )


def _take_for_each(
    session: Session,
    sku_id: int,
    units: list[int],
    now: datetime,
    start: tuple[datetime, int] | None,
) -> list[tuple[int, datetime, int]]:
    params: dict[str, Any] = {"p_sku": sku_id, "p_now": now, "p_quantity": len(units)}
    size = shape_size(len(units))  # the units past len(units) are never reached (LIMIT)
    params.update((f"p_order_{i}", units[min(i, len(units) - 1)]) for i in range(size))
    if start is not None:
        params["p_start_at"], params["p_start_id"] = start
    rows = _take_each_statement(start is not None, size).run(session, params)
    return [(r[0], r[1], r[2]) for r in rows]


def claim_keys(
    session: Session, sku_id: int, order_id: int, quantity: int, now: datetime
) -> list[int]:
    """Sell `quantity` available keys to `order_id` at once (no reservation); [] if short."""
    return take_keys(session, sku_id, order_id, quantity, now, target=KeyStatus.SOLD)


_STOCK = Prepared(
    select(Key.__table__.c.id)
    .where(
        Key.__table__.c.sku_id == bindparam("sku_id"),
        KEY_AVAILABLE,
        Key.__table__.c.expires_at > bindparam("now"),
    )
    .limit(bindparam("n", type_=Integer))
)


def has_stock(session: Session, sku_id: int, quantity: int, now: datetime) -> bool:
    """Whether `quantity` keys are sellable now; reads at most `quantity` index entries."""
    return stock_ask(sku_id, quantity, now).run(session)


def stock_ask(sku_id: int, quantity: int, now: datetime) -> Ask[bool]:
    """`has_stock` as a read to go out with others (`prepared.ask_all`)."""
    return Ask(
        _STOCK,
        {"sku_id": sku_id, "now": now, "n": quantity},
        lambda rows: len(rows.all()) >= quantity,
    )
