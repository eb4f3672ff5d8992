"""A refund's outcome recorded, and what follows when the money is back: the order moves to
`partially_refunded` or `refunded`, the buyer is told, and the order's keys are withdrawn only
if the seller chose so (`void` for good, `restock` back on sale), at refund time or later."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from kami import delivery, licenses, orders, payments, vault
from kami.fulfilment.shop import MAIL_JOB, Shop
from kami.kernel import outbox
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger("kami.refunds")
State = payments.RefundState


def settle_in(
    s: Session,
    shop: Shop,
    refund: payments.RefundView,
    status: payments.RefundStatus,
    now: datetime,
    channel_refund_id: str | None = None,
    detail: str | None = None,
    raw: str | None = None,
    *,
    attempted: bool = False,
) -> bool:
    """Record the channel's word on a refund inside the caller's transaction; True if it
    changed anything. Success moves the order and carries out the seller's key choice."""
    target = {
        payments.RefundStatus.SUCCEEDED: State.SUCCEEDED,
        payments.RefundStatus.PROCESSING: State.PROCESSING,
        payments.RefundStatus.FAILED: State.FAILED,
    }[status]
    expected = [State.REQUESTED] if target == State.PROCESSING else list(payments.OPEN_STATES)
    moved = payments.settle_refund(
        s,
        refund.id,
        expected=expected,
        status=target,
        now=now,
        channel_refund_id=channel_refund_id,
        detail=detail,
        raw=raw,
        attempted=attempted,
    )
    if moved and target == State.SUCCEEDED:
        refund_succeeded(s, shop, refund, now)
    return moved


def refund_succeeded(s: Session, shop: Shop, refund: payments.RefundView, now: datetime) -> None:
    order = orders.find_order(s, refund.order_no, for_update=True)
    if order is None:  # pragma: no cover - orders are never deleted
        return
    paid_back = payments.refunded_total(s, order.id, [State.SUCCEEDED])
    target = (
        orders.OrderStatus.REFUNDED
        if paid_back >= order.amount_minor
        else orders.OrderStatus.PARTIALLY_REFUNDED
    )
    if order.status != target and not orders.move(s, order.id, target):
        # e.g. part of a paid-but-not-yet-delivered order refunded in the channel's console:
        # the money is recorded on the refund; the order keeps its status for the admin to see.
        log.warning(
            "order %s (%s): refund recorded, status left as is", order.order_no, order.status
        )
    if refund.keys != "keep":
        withdraw(s, shop, order, refund.keys, refund.positions, f"refund {refund.refund_no}", now)
    outbox.enqueue(
        s,
        MAIL_JOB,
        {"order_no": order.order_no, "event": "refunded", "amount_minor": refund.amount_minor},
        ref=order.order_no,
    )


def withdraw(
    s: Session,
    shop: Shop,
    order: orders.OrderView,
    action: str,
    positions: Sequence[int] | None,
    reason: str,
    now: datetime,
) -> list[int]:
    chosen = (
        list(positions)
        if positions is not None
        else [i.position for i in delivery.live_items(s, order.id)]
    )
    revoked = delivery.revoke_items(s, order.id, chosen, f"{action}: {reason}", now)
    # A reusable key's item is simply gone (a unit of it is free again); a key of its own
    # is voided or put back on sale; a license is revoked whatever the choice.
    own = [i.key_id for i in revoked if i.key_id is not None and not i.shared]
    moved = vault.withdraw_sold(s, order.id, own, restock=action == "restock")
    licenses_ids = [i.license_id for i in revoked if i.license_id is not None]
    if licenses_ids:
        licenses.revoke(s, licenses_ids, reason)
    if action == "restock" and moved:
        shop.claim_hints.forget()  # the keys may sit behind a scan hint (a bundle's too)
    return moved + licenses_ids


def dispose_keys(
    shop: Shop, order_no: str, action: str, positions: Sequence[int] | None = None
) -> list[int]:
    """The seller's later choice for a refunded order's keys: void them or put them back on
    sale. Returns the ids of the keys moved."""
    if action not in ("void", "restock"):
        raise InvalidInput("action must be void or restock", where="action")
    with shop.db.write() as s:
        order = orders.find_order(s, order_no, for_update=True)
        if order is None:
            raise NotFound(f"no order {order_no}", where="order_no", slug="unknown-order")
        if order.status not in (orders.OrderStatus.REFUNDED, orders.OrderStatus.PARTIALLY_REFUNDED):
            raise Conflict(
                f"order {order_no} is {order.status}; keys are withdrawn only after a refund",
                where="order_no",
                slug="not-refunded",
            )
        live = {i.position for i in delivery.live_items(s, order.id)}
        if positions is not None and (not positions or set(positions) - live):
            raise InvalidInput(
                f"positions must be items the order still holds: {sorted(live) or 'none'}",
                where="positions",
            )
        return withdraw(s, shop, order, action, positions, "seller's choice", utcnow())
