"""Refund notifications from the channels: they settle the refund Kami asked for, or record
one made in the channel's own console, so the order and the books show the money went back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from kami import orders, payments
from kami.fulfilment.refund_settling import refund_succeeded, settle_in
from kami.fulfilment.shop import Shop
from kami.kernel.clock import utcnow

State = payments.RefundState


@dataclass(frozen=True, slots=True)
class NoticeVerdict:
    verdict: payments.Verdict
    reason: str | None
    order_no: str | None


def apply_refund_notice(s: Session, shop: Shop, notice: payments.RefundNotice) -> NoticeVerdict:
    """Apply a verified refund notification inside the caller's transaction. Raises
    NotificationRejected with the specific reason when it must change nothing."""
    refund = payments.find_refund(s, notice.refund_no) if notice.refund_no else None
    if refund is None and notice.channel_refund_id:
        refund = payments.find_by_channel_id(s, notice.gateway, notice.channel_refund_id)
    now = utcnow()
    if refund is not None:
        if refund.gateway != notice.gateway:
            raise _reject(
                "gateway-mismatch",
                f"refund {refund.refund_no} went through {refund.gateway!r}",
                "gateway",
            )
        if notice.amount_minor != refund.amount_minor:
            raise _reject(
                "amount-mismatch",
                f"notification refund amount {notice.amount_minor} differs from the "
                f"refund's {refund.amount_minor}",
                "amount_minor",
            )
        changed = settle_in(s, shop, refund, notice.status, now, notice.channel_refund_id)
        verdict = payments.Verdict.ACCEPTED if changed else payments.Verdict.DUPLICATE
        return NoticeVerdict(verdict, None, refund.order_no)
    return _channel_refund(s, shop, notice, now)


def _channel_refund(
    s: Session, shop: Shop, notice: payments.RefundNotice, now: datetime
) -> NoticeVerdict:
    """A refund Kami did not ask for (made in the channel's console): recorded, so the order
    and the books show the money went back."""
    order = orders.find_order(s, notice.order_no, for_update=True) if notice.order_no else None
    if order is None and notice.trade_no:
        order = orders.find_by_trade(s, notice.gateway, notice.trade_no)
    if order is None:
        raise _reject("unknown-order", "the refund names no order Kami knows", "order_no")
    if order.gateway != notice.gateway:
        raise _reject(
            "gateway-mismatch",
            f"order {order.order_no} was paid through {order.gateway!r}",
            "gateway",
        )
    if notice.currency != order.currency:
        raise _reject(
            "currency-mismatch",
            f"refund currency {notice.currency} differs from the order's {order.currency}",
            "currency",
        )
    if notice.status is not payments.RefundStatus.SUCCEEDED:
        raise _reject(
            "unknown-refund", f"a {notice.status.value} refund Kami never asked for", "refund_no"
        )
    key = f"channel:{notice.channel_refund_id or notice.refund_no}"
    if payments.find_by_request(s, order.id, key) is not None:
        return NoticeVerdict(payments.Verdict.DUPLICATE, None, order.order_no)
    committed = payments.refunded_total(s, order.id, payments.COMMITTED_STATES)
    if notice.amount_minor <= 0 or committed + notice.amount_minor > order.amount_minor:
        raise _reject(
            "refund-exceeds-payment",
            f"refund of {notice.amount_minor} with {committed} already committed exceeds "
            f"the {order.amount_minor} paid",
            "amount_minor",
        )
    refund = payments.create_refund(
        s,
        order_id=order.id,
        order_no=order.order_no,
        gateway=order.gateway,
        request_key=key[:128],
        request_hash="",
        amount_minor=notice.amount_minor,
        currency=order.currency,
        reason="refunded in the channel's console",
        keys="keep",
        positions=None,
        now=now,
        status=State.SUCCEEDED,
        origin="channel",
        channel_refund_id=notice.channel_refund_id,
    )
    refund_succeeded(s, shop, refund, now)
    return NoticeVerdict(payments.Verdict.ACCEPTED, None, order.order_no)


def _reject(slug: str, detail: str, where: str) -> payments.NotificationRejected:
    return payments.NotificationRejected(detail, where=where, slug=slug)
