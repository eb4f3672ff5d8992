"""Keys an order holds: its reservation sold at payment or given back at expiry or
cancellation, a short take put back, and sold keys withdrawn after a refund. Taking keys is
`vault.claims`'s."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.orm import Session

from kami.kernel.prepared import Prepared
from kami.vault.models import Key
from kami.vault.states import KeyStatus


def put_back(session: Session, order_id: int, ids: Sequence[int]) -> None:
    """Put keys taken for `order_id` back on sale: a take or a reservation is all or none."""
    session.execute(
        update(Key)
        .where(Key.id.in_(list(ids)), Key.order_id == order_id)
        .values(status=KeyStatus.AVAILABLE, order_id=None, sold_at=None)
        .execution_options(synchronize_session=False)
    )


_KT = cast(Table, Key.__table__)
_SELL = Prepared(
    update(_KT)
    .where(
        _KT.c.order_id == bindparam("b_order"),
        _KT.c.status == KeyStatus.RESERVED.value,
        _KT.c.expires_at > bindparam("b_now"),
    )
    .values(status=KeyStatus.SOLD.value, sold_at=bindparam("b_sold_at"))
    .returning(_KT.c.id)
)


def sell_reserved_each(
    session: Session, reserved: Sequence[tuple[int, int]], now: datetime
) -> list[list[int]] | None:
    """`sell_reserved` for each (order id, quantity) of `reserved`, in one round trip on
    PostgreSQL: each order's keys sold. None if any reservation is not whole and unexpired;
    what was sold is then not put back here, and the caller must roll back."""
    sold = _SELL.run_each(
        session, [{"b_order": order_id, "b_now": now, "b_sold_at": now} for order_id, _ in reserved]
    )
    keys = [sorted(rows.scalars()) for rows in sold]  # in key order, as `sell_reserved`
    if any(len(k) != quantity for k, (_, quantity) in zip(keys, reserved, strict=True)):
        return None
    return keys


def sell_reserved(
    session: Session, order_id: int, quantity: int, now: datetime, *, sku_id: int | None = None
) -> list[int]:
    """Turn an order's reservation into a sale; [] if it is not whole and still unexpired.

    A reserved key whose batch expired between checkout and payment is never sold: the whole
    reservation is released and the caller takes fresh keys (or the order waits for stock).
    `sku_id` narrows it to one SKU's keys: a bundle holds a reservation per card-key component.
    """
    sold: Any
    if sku_id is None:  # an order's own reservation: the payment path, built once
        sold = _SELL.run(session, {"b_order": order_id, "b_now": now, "b_sold_at": now})
    else:
        sold = session.execute(
            update(Key)
            .where(_mine(order_id, sku_id), Key.status == KeyStatus.RESERVED, Key.expires_at > now)
            .values(status=KeyStatus.SOLD, sold_at=now)
            .returning(Key.id)
            .execution_options(synchronize_session=False)
        )
    rows = list(sold.scalars())
    if len(rows) != quantity:
        if rows:  # never sell part of a reservation
            put_back(session, order_id, rows)
        session.execute(  # and the rest of it (expired keys) goes back on sale too
            update(Key)
            .where(_mine(order_id, sku_id), Key.status == KeyStatus.RESERVED)
            .values(status=KeyStatus.AVAILABLE, order_id=None)
            .execution_options(synchronize_session=False)
        )
        return []
    return sorted(rows)


def _mine(order_id: int, sku_id: int | None) -> Any:
    """The order's keys (of one SKU, if given), as a condition. Built only where needed: on the
    payment path building it cost a quarter of the delivery's time in process."""
    if sku_id is None:
        return Key.order_id == order_id
    return (Key.order_id == order_id) & (Key.sku_id == sku_id)


def release_reserved(session: Session, order_ids: Sequence[int]) -> int:
    """Put the reserved keys of these (expired or cancelled) orders back on sale."""
    if not order_ids:
        return 0
    result = session.execute(
        update(Key)
        .where(Key.order_id.in_(list(order_ids)), Key.status == KeyStatus.RESERVED)
        .values(status=KeyStatus.AVAILABLE, order_id=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def withdraw_sold(
    session: Session, order_id: int, key_ids: Sequence[int], *, restock: bool
) -> list[int]:
    """After a refund, at the seller's choice: put the order's sold keys back on sale
    (`restock`) or void them for good. Only keys sold to this order move; returns their ids."""
    if not key_ids:
        return []
    values: dict[str, object] = (
        {"status": KeyStatus.AVAILABLE, "order_id": None, "sold_at": None}
        if restock
        else {"status": KeyStatus.VOID}
    )
    rows = session.execute(
        update(Key)
        .where(Key.id.in_(list(key_ids)), Key.order_id == order_id, Key.status == KeyStatus.SOLD)
        .values(**values)
        .returning(Key.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(rows.scalars())
