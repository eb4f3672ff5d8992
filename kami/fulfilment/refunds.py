"""Refunds: full and partial, idempotent end to end, settled by the channel's answer, its refund
notification or a later query, whichever comes first.

Idempotency has two layers. The seller's request carries a key: asking again with the same key
finds the first refund and never creates a second. Each refund has Kami's own refund number,
sent to the channel as its idempotency key: when a call times out or the process dies after
the call, asking the channel again with the same number can only return the first outcome.

The money is committed (counted against what the buyer paid) when the refund row is written,
before the channel is called, so concurrent requests can never refund more than was paid.

Keys are never resold on their own: a refund keeps the order's keys sold unless the seller
chose `void` (withdrawn for good) or `restock` (back on sale), at request time or afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from kami import delivery, orders, payments
from kami.fulfilment.refund_settling import settle_in
from kami.fulfilment.shop import Shop
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, NotFound, Unavailable
from kami.kernel.outbox import PermanentJobError

log = logging.getLogger("kami.refunds")

KEY_ACTIONS = ("keep", "void", "restock")
MANUAL_NOTE = (
    "the outcome is unknown and this channel cannot be asked safely: check its merchant "
    "console, then settle the refund by hand"
)
State = payments.RefundState


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    refund: payments.RefundView
    order_status: str
    # Said when the channel could not be asked just now: the refund stays "requested" and the
    # worker asks again with the same refund number, which can never refund twice.
    note: str | None = None

    @property
    def refund_no(self) -> str:
        return self.refund.refund_no

    @property
    def status(self) -> str:
        return self.refund.status.value


def _request_hash(
    amount_minor: int | None, reason: str, keys: str, positions: Sequence[int] | None
) -> str:
    text = json.dumps([amount_minor, reason, keys, sorted(positions) if positions else None])
    return hashlib.sha256(text.encode()).hexdigest()


def _check_request(reason: str, request_key: str, keys: str) -> None:
    if not request_key or len(request_key) > 128 or not request_key.isprintable():
        raise InvalidInput(
            "an idempotency key of 1–128 printable characters is required, so a retried "
            "refund request is recognised",
            where="Idempotency-Key",
            slug="idempotency-key-required",
        )
    if not reason.strip() or len(reason) > 500:
        raise InvalidInput("give a reason of 1–500 characters", where="reason")
    if keys not in KEY_ACTIONS:
        raise InvalidInput(f"keys must be one of {', '.join(KEY_ACTIONS)}", where="keys")


def _gateway_request(
    order: orders.OrderView, refund: payments.RefundView
) -> payments.RefundRequest:
    return payments.RefundRequest(
        order_no=order.order_no,
        trade_no=order.trade_no or "",
        refund_no=refund.refund_no,
        amount_minor=refund.amount_minor,
        order_amount_minor=order.amount_minor,
        currency=order.currency,
        reason=refund.reason,
    )


def request_refund(
    shop: Shop,
    order_no: str,
    *,
    amount_minor: int | None,
    reason: str,
    request_key: str,
    keys: str = "keep",
    positions: Sequence[int] | None = None,
    actor: str | None = None,
) -> RefundOutcome:
    """Refund `amount_minor` (None: everything not yet refunded) of a paid order."""
    _check_request(reason, request_key, keys)
    request_hash = _request_hash(amount_minor, reason, keys, positions)
    now = utcnow()
    with shop.db.write() as s:
        order = orders.find_order(s, order_no, for_update=True)
        if order is None:
            raise NotFound(f"no order {order_no}", where="order_no", slug="unknown-order")
        refund = payments.find_by_request(s, order.id, request_key)
        if refund is not None and refund.request_hash != request_hash:
            raise Conflict(
                "this idempotency key was used for a different refund of this order",
                where="Idempotency-Key",
                slug="idempotency-key-reused",
            )
        if refund is None:
            refund = _new_refund(
                s,
                order,
                amount_minor,
                reason,
                request_key,
                request_hash,
                keys,
                positions,
                actor,
                now,
            )
    if refund.status in (State.SUCCEEDED, State.FAILED):
        return _outcome(shop, refund.refund_no)
    return _drive(shop, refund.refund_no)


def refund_unserved(shop: Shop, payload: dict[str, object]) -> None:
    """The outbox job queued when an order was paid too late to be served
    (`delivering.pay_lapsed`): refund what is left of its money, once (the request key is the
    same each time the job runs). Nothing is done for an order the seller has already refunded
    in full meanwhile."""
    order_no = str(payload["order_no"])
    try:
        outcome = request_refund(
            shop,
            order_no,
            amount_minor=None,
            reason=str(payload["reason"])[:500],
            request_key="unserved",
        )
    except payments.RefundUnsupported as exc:  # its detail says where to refund instead
        raise PermanentJobError(f"order {order_no}: {exc.detail}") from None
    except Conflict as exc:
        if exc.slug not in ("not-refundable", "nothing-to-refund"):
            raise
        log.info("order %s was refunded meanwhile; nothing left to refund", order_no)
        return
    if outcome.refund.status == State.FAILED:
        raise PermanentJobError(
            f"order {order_no}: the channel refused the refund ({outcome.refund.detail}); "
            "check the channel's console and refund it there unless it already was"
        )


def _new_refund(
    s: Session,
    order: orders.OrderView,
    amount_minor: int | None,
    reason: str,
    request_key: str,
    request_hash: str,
    keys: str,
    positions: Sequence[int] | None,
    actor: str | None,
    now: datetime,
) -> payments.RefundView:
    status = orders.OrderStatus(order.status)
    if status not in orders.REFUNDABLE or not order.trade_no:
        raise Conflict(
            f"order {order.order_no} is {status.value}; only a paid order can be refunded",
            where="order_no",
            slug="not-refundable",
        )
    committed = payments.refunded_total(s, order.id, payments.COMMITTED_STATES)
    remaining = order.amount_minor - committed
    if remaining <= 0:
        raise Conflict(
            f"order {order.order_no} has nothing left to refund (refunds in progress or done)",
            where="amount_minor",
            slug="nothing-to-refund",
        )
    amount = remaining if amount_minor is None else amount_minor
    if amount <= 0 or amount > remaining:
        raise InvalidInput(
            f"refund amount {amount} must be between 1 and {remaining}, what is left of "
            f"the {order.amount_minor} paid",
            where="amount_minor",
            slug="refund-exceeds-payment",
        )
    if amount < remaining and status not in orders.PARTLY_REFUNDABLE:
        raise Conflict(
            f"order {order.order_no} is {status.value}: refund it in full, or wait until it is "
            "delivered to refund part of it",
            where="amount_minor",
            slug="partial-refund-not-allowed",
        )
    if positions is not None:
        live = {i.position for i in delivery.live_items(s, order.id)}
        unknown = sorted(set(positions) - live)
        if not positions or unknown:
            raise InvalidInput(
                f"positions {unknown or '[]'} are not items the order holds "
                f"(it holds {sorted(live) or 'none'})",
                where="positions",
            )
    return payments.create_refund(
        s,
        order_id=order.id,
        order_no=order.order_no,
        gateway=order.gateway,
        request_key=request_key,
        request_hash=request_hash,
        amount_minor=amount,
        currency=order.currency,
        reason=reason.strip(),
        keys=keys,
        positions=positions,
        now=now,
        requested_by=actor,
    )


def _drive(shop: Shop, refund_no: str) -> RefundOutcome:
    """Ask the channel (again) about an open refund and settle what it says."""
    with shop.db.read() as s:
        refund = payments.find_refund(s, refund_no)
        if refund is None:
            raise NotFound(f"no refund {refund_no}", where="refund_no", slug="unknown-refund")
        order = orders.get_order(s, refund.order_no)
    if refund.status not in payments.OPEN_STATES:
        return _outcome(shop, refund_no)
    gateway = shop.gateways.get(refund.gateway)
    request = _gateway_request(order, refund)
    resend = refund.status == State.REQUESTED
    if resend and refund.attempts > 0 and not gateway.refund_idempotent:
        # The channel has no refund number to deduplicate on: sending it again could refund
        # twice. Someone must look in the channel's console and settle it by hand.
        return _outcome(shop, refund_no, note=MANUAL_NOTE)
    try:
        # Never asked, or asked with no answer: the same refund number again is safe.
        result = gateway.refund(request) if resend else gateway.query_refund(request)
    except payments.RefundUnsupported as exc:
        refused = resend and refund.attempts == 0  # nothing was sent: a definite no
        with shop.db.write() as s:
            if refused:
                payments.settle_refund(
                    s,
                    refund.id,
                    expected=[State.REQUESTED],
                    status=State.FAILED,
                    now=utcnow(),
                    detail=exc.detail,
                )
        if refused:  # raised once the refund's failure is committed, not inside its write
            raise
        with shop.db.write() as s:
            payments.settle_refund(  # no refund query: leave it to the seller
                s,
                refund.id,
                expected=[refund.status],
                status=refund.status,
                now=utcnow(),
                detail=f"{exc.detail} — {MANUAL_NOTE}",
            )
        return _outcome(shop, refund_no, note=MANUAL_NOTE)
    except Unavailable as exc:
        with shop.db.write() as s:
            payments.settle_refund(
                s,
                refund.id,
                expected=[refund.status],
                status=refund.status,
                now=utcnow(),
                detail=f"channel not reached: {exc.detail}",
                attempted=True,
            )
        log.warning("refund %s: channel not reached (%s); will ask again", refund_no, exc.slug)
        return _outcome(
            shop, refund_no, note="the channel could not be reached; Kami asks again shortly"
        )
    _settle(
        shop,
        refund,
        result.status,
        result.channel_refund_id,
        result.detail,
        result.raw,
        attempted=True,
    )
    return _outcome(shop, refund_no)


def _settle(
    shop: Shop,
    refund: payments.RefundView,
    status: payments.RefundStatus,
    channel_refund_id: str | None,
    detail: str | None,
    raw: str | None,
    *,
    attempted: bool = False,
) -> bool:
    now = utcnow()
    with shop.db.write() as s:
        return settle_in(
            s, shop, refund, status, now, channel_refund_id, detail, raw, attempted=attempted
        )


def settle_by_hand(
    shop: Shop, refund_no: str, succeeded: bool, note: str, actor: str | None
) -> RefundOutcome:
    """The seller's word on an open refund the channel cannot be asked about (they checked the
    channel's console): succeeded or failed, with a note kept on the refund."""
    if not note.strip() or len(note) > 500:
        raise InvalidInput("say what the channel's console shows (1–500 characters)", where="note")
    with shop.db.write() as s:
        refund = payments.find_refund(s, refund_no)
        if refund is None:
            raise NotFound(f"no refund {refund_no}", where="refund_no", slug="unknown-refund")
        if refund.status not in payments.OPEN_STATES:
            raise Conflict(
                f"refund {refund_no} is already {refund.status.value}",
                where="refund_no",
                slug="refund-settled",
            )
        status = payments.RefundStatus.SUCCEEDED if succeeded else payments.RefundStatus.FAILED
        detail = f"settled by hand by {actor or 'an admin'}: {note.strip()}"
        settle_in(s, shop, refund, status, utcnow(), detail=detail)
    return _outcome(shop, refund_no)


def sync_refund(shop: Shop, refund_no: str) -> RefundOutcome:
    """Ask the channel about a refund that is still open (the admin's button, the sweep)."""
    return _drive(shop, refund_no)


def sync_refunds_due(shop: Shop, *, after: timedelta) -> int:
    """The sweep: open refunds untouched for `after` are asked about again; returns how many
    settled."""
    with shop.db.read() as s:
        due = payments.due_refunds(s, utcnow() - after)
    settled = 0
    for refund_no in due:
        try:
            outcome = _drive(shop, refund_no)
        except Exception as exc:  # one channel being down must not stop the sweep
            log.warning("refund %s: query failed: %s", refund_no, type(exc).__name__)
            continue
        settled += outcome.refund.status not in payments.OPEN_STATES
    return settled


def list_order_refunds(shop: Shop, order_no: str) -> list[payments.RefundView]:
    with shop.db.read() as s:
        order = orders.get_order(s, order_no)
        return payments.list_refunds(s, order.id)


def _outcome(shop: Shop, refund_no: str, note: str | None = None) -> RefundOutcome:
    with shop.db.read() as s:
        refund = payments.find_refund(s, refund_no)
        assert refund is not None
        order = orders.get_order(s, refund.order_no)
    return RefundOutcome(refund, order.status, note)
