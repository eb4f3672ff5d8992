"""Applying a payment notification: verify everything, then pay and deliver in one transaction.

Invariant 3: nothing changes until the gateway has checked the signature and its own fields and
this flow has checked the order number, status, amount, currency and channel. Invariant 2: the
inbox row unique on (gateway, trade_no) is written in the same transaction as the status
change, so a duplicate, even a concurrent one, finds it and changes nothing; it is still
acknowledged, or the channel would keep retrying. Rejections roll back, then the raw
notification is recorded with its reason in a transaction of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from kami import orders, payments
from kami.fulfilment.delivering import deliver_paid, pay_card_keys, pay_lapsed
from kami.fulfilment.refund_notices import apply_refund_notice
from kami.fulfilment.shop import Shop
from kami.kernel import waiting
from kami.kernel.clock import utcnow
from kami.kernel.errors import NotFound

log = logging.getLogger("kami.notify")


@dataclass(frozen=True, slots=True)
class Outcome:
    ack: payments.Ack
    verdict: payments.Verdict
    reason: str | None = None
    order_no: str | None = None
    delivered: bool = False


def _reject(slug: str, detail: str, where: str) -> payments.NotificationRejected:
    return payments.NotificationRejected(detail, where=where, slug=slug)


def _check(session: Session, notice: payments.PaymentNotice) -> orders.OrderView:
    """The order the notice pays, checked against the notice, without a row lock.

    Gateway, currency and amount never change after an order is placed, so checking them
    without the lock is as good as under it. The status is decided by the guarded update in
    `_apply`. On SQLite it is read before the write transaction, so that a forged or mistaken
    notice never queues for the database's one writer; on PostgreSQL, which has no such queue,
    it is the write transaction's first statement, sent with its BEGIN (decision 0021): one
    round trip of the ten a payment made fewer.
    """
    if notice.status is not payments.TradeStatus.PAID:
        raise _reject(
            "not-paid-status", f"trade status is {notice.status.value!r}, not paid", "status"
        )
    return check_order(orders.find_order(session, notice.order_no), notice)


def _read_check(shop: Shop, notice: payments.PaymentNotice) -> orders.OrderView:
    with shop.db.read() as s:
        return _check(s, notice)


def check_order(order: orders.OrderView | None, notice: payments.PaymentNotice) -> orders.OrderView:
    """`order`, found by the notice's order number, if the notice may pay it; else why not."""
    if order is None:
        raise _reject("unknown-order", f"no order {notice.order_no!r}", "order_no")
    if order.gateway != notice.gateway:
        raise _reject(
            "gateway-mismatch",
            f"order {order.order_no} is payable through {order.gateway!r}, not {notice.gateway!r}",
            "gateway",
        )
    if notice.currency != order.currency:
        raise _reject(
            "currency-mismatch",
            f"notification currency {notice.currency} differs from the order's {order.currency}",
            "currency",
        )
    if notice.amount_minor != order.amount_minor:
        raise _reject(
            "amount-mismatch",
            f"notification amount {notice.amount_minor} differs from the order's "
            f"{order.amount_minor}",
            "amount_minor",
        )
    return order


# What the notification's record says to whoever reads it, by reason.
_DETAILS = {
    "duplicate-payment": "second payment of a paid order: refund it",
    "late-payment-quota-gone": (
        "paid after the order lapsed, with the flash sale's quota gone: the order failed and "
        "the worker refunds it in full"
    ),
    "late-payment-limit-reached": (
        "paid after the order lapsed, with the buyer at the flash sale's per-buyer limit: the "
        "order failed and the worker refunds it in full"
    ),
}


def _apply(
    session: Session, notice: payments.PaymentNotice, shop: Shop, order: orders.OrderView
) -> tuple[payments.Verdict, str | None, bool]:
    prior_order = payments.record_inbox(session, notice, order.id)
    if prior_order is not None:
        if prior_order != order.id:
            raise _reject(
                "trade-no-reused",
                f"trade {notice.trade_no!r} was already applied to another order",
                "trade_no",
            )
        return payments.Verdict.DUPLICATE, None, False
    now = utcnow()
    delivered: bool | None = None
    if order.status == orders.OrderStatus.PENDING:
        if order.delivery_kind == "card_key":
            # Its reservation is to be sold: one update pays and delivers it.
            delivered = pay_card_keys(session, shop, order, notice.trade_no, now)
        elif orders.pay(session, order.id, notice.trade_no, now):
            paid = order.model_copy(update={"status": orders.OrderStatus.PAID})
            delivered = deliver_paid(session, shop, paid, now)
    if delivered is None:
        # Read as expired or cancelled, or no longer pending when paid: a late payment, which
        # must first get its goods (and flash-sale quota) back; or an order paid before.
        late = pay_lapsed(session, shop, order, notice.trade_no, now)
        if late is not None:
            return payments.Verdict.ACCEPTED, late.refused, late.delivered
        # A second, distinct payment for an order that is already paid: the money is real, so the
        # trade is kept in the inbox and flagged for a refund instead of being ignored.
        log.warning("order %s paid twice (trade %s)", order.order_no, notice.trade_no)
        return payments.Verdict.ACCEPTED, "duplicate-payment", False
    return payments.Verdict.ACCEPTED, None, delivered


@dataclass(frozen=True, slots=True)
class Checked:
    """A notification as its channel verified it (`check_notification`): the channel and the
    notice, or the rejection; or, for a channel that is not configured, `unknown`.

    `received_at` is when it was checked, which the server does as it reads the request: what
    the notification's record keeps as its arrival, however long it then waited for the
    database (SQLite's writer, a group's turn)."""

    raw: payments.RawNotification
    gateway: payments.Gateway | None = None
    notice: payments.PaymentNotice | payments.RefundNotice | None = None
    rejection: payments.NotificationRejected | None = None
    unknown: NotFound | None = None
    received_at: datetime = field(default_factory=utcnow)


def check_notification(shop: Shop, raw: payments.RawNotification) -> Checked:
    """Verify `raw` with its channel, touching neither the database nor the network. The server
    does it once per request, before the work that may run again (after waiting for SQLite's
    writer, in a group or alone): a channel's signature is most often an RSA verification, and
    it was verified again at every run."""
    try:
        gateway = shop.gateways.get(raw.gateway)
    except NotFound as exc:
        return Checked(raw, unknown=exc)
    try:
        return Checked(raw, gateway, notice=gateway.verify_notification(raw))
    except payments.NotificationRejected as rejection:
        return Checked(raw, gateway, rejection=rejection)


def handle_notification(shop: Shop, note: payments.RawNotification | Checked) -> Outcome:
    """Apply a notification: as it arrived, or verified already (`check_notification`), which
    carries the notification it verified, so that one can never be applied with another's."""
    checked = note if isinstance(note, Checked) else check_notification(shop, note)
    raw, received_at = checked.raw, checked.received_at
    if checked.unknown is not None:
        with shop.db.write() as s:
            payments.record_notification(
                s,
                raw,
                payments.Verdict.REJECTED,
                reason="unknown-gateway",
                detail=checked.unknown.detail,
                received_at=received_at,
            )
        raise checked.unknown.with_traceback(None)  # kept from the check: not its frames
    gateway, notice = checked.gateway, checked.notice
    assert gateway is not None  # known channel
    if checked.rejection is not None:
        return _rejected(shop, gateway, raw, checked.rejection, None, received_at)
    assert notice is not None  # verified
    if isinstance(notice, payments.RefundNotice):
        return _apply_refund(shop, gateway, raw, notice, received_at)
    return apply_notice(shop, gateway, raw, notice, received_at)


def _apply_refund(
    shop: Shop,
    gateway: payments.Gateway,
    raw: payments.RawNotification,
    notice: payments.RefundNotice,
    received_at: datetime,
) -> Outcome:
    try:
        with shop.db.write() as s:
            result = apply_refund_notice(s, shop, notice)
            payments.record_notification(
                s, raw, result.verdict, notice=notice, received_at=received_at
            )
    except payments.NotificationRejected as rejection:
        return _rejected(shop, gateway, raw, rejection, notice, received_at)
    return Outcome(gateway.acknowledge(None), result.verdict, None, result.order_no)


def apply_notice(
    shop: Shop,
    gateway: payments.Gateway,
    raw: payments.RawNotification,
    notice: payments.PaymentNotice,
    received_at: datetime,
) -> Outcome:
    """Apply a verified notice: the one path for notifications and for answers to queries."""
    try:
        order = None
        if shop.db.dialect == "sqlite":  # read once, if the write is run again (decision 0025)
            # Kept across a wait: what it checks never changes once an order is placed.
            order, _ = waiting.read_once(("paid order", notice), lambda: _read_check(shop, notice))
        with shop.db.write() as s:
            if order is None:
                order = _check(s, notice)
            verdict, reason, delivered = _apply(s, notice, shop, order)
            detail = _DETAILS.get(reason) if reason else None
            payments.record_notification(
                s,
                raw,
                verdict,
                notice=notice,
                reason=reason,
                detail=detail,
                received_at=received_at,
            )
    except payments.NotificationRejected as rejection:
        return _rejected(shop, gateway, raw, rejection, notice, received_at)
    return Outcome(gateway.acknowledge(None), verdict, reason, notice.order_no, delivered)


def _rejected(
    shop: Shop,
    gateway: payments.Gateway,
    raw: payments.RawNotification,
    rejection: payments.NotificationRejected,
    notice: payments.PaymentNotice | payments.RefundNotice | None,
    received_at: datetime,
) -> Outcome:
    log.warning(
        "notification from %s rejected: %s (%s)", raw.gateway, rejection.slug, rejection.detail
    )
    with shop.db.write() as s:
        payments.record_notification(
            s,
            raw,
            payments.Verdict.REJECTED,
            notice=notice,
            reason=rejection.slug,
            detail=str(rejection),
            received_at=received_at,
        )
    return Outcome(
        gateway.acknowledge(rejection),
        payments.Verdict.REJECTED,
        rejection.slug,
        notice.order_no if notice else None,
    )
