"""Stripe's webhook events: the Stripe-Signature header, and the events Kami acts on as notices."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any

from kami.payments.gateways.base import (
    NotificationRejected,
    PaymentNotice,
    RefundNotice,
    RefundStatus,
    TradeStatus,
)
from kami.payments.gateways.freshness import stale_timestamp

HEADER = "stripe-signature"
WHERE = "Stripe-Signature"
EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "charge.refunded",
    "charge.refund.updated",
)
REFUND_STATUS = {
    "succeeded": RefundStatus.SUCCEEDED,
    "pending": RefundStatus.PROCESSING,
    "requires_action": RefundStatus.PROCESSING,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.FAILED,
}
COMPLETED = {"paid": TradeStatus.PAID, "unpaid": TradeStatus.PENDING}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The v1 signature Stripe puts in the header for this body at this time."""
    payload = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def malformed(detail: str, where: str) -> NotificationRejected:
    return NotificationRejected(detail, where=where, slug="malformed-notification")


def parse_header(header: str) -> tuple[int, list[str]]:
    items = [item.strip().partition("=") for item in header.split(",")]
    timestamps = [value for key, _, value in items if key == "t"]
    signatures = [value for key, _, value in items if key == "v1" and value]
    if any(not sep or not value for _, sep, value in items):
        raise NotificationRejected(
            "every item of the header must be key=value", where=WHERE, slug="bad-signature"
        )
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit():
        raise NotificationRejected(
            "the header needs exactly one numeric t=<unix seconds>",
            where=WHERE,
            slug="bad-signature",
        )
    if not signatures:
        raise NotificationRejected(
            "the header has no v1 signature", where=WHERE, slug="bad-signature"
        )
    return int(timestamps[0]), signatures


def check_signature(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    tolerance: int,
    clock: Callable[[], float],
) -> None:
    """Raise NotificationRejected unless a v1 signature in the header signs `body` under the
    endpoint secret, at a timestamp within `tolerance` seconds of `clock()`."""
    header = headers.get(HEADER, "").strip()
    if not header:
        raise NotificationRejected(
            "missing Stripe-Signature header", where=WHERE, slug="bad-signature"
        )
    timestamp, given = parse_header(header)
    expected = sign(secret, timestamp, body)
    # Every v1 is compared (no early exit), each in constant time.
    matches = [hmac.compare_digest(expected.encode(), g.encode("utf-8")) for g in given]
    if not any(matches):
        raise NotificationRejected(
            "no v1 signature matches the body and timestamp under the endpoint secret",
            where=WHERE,
            slug="bad-signature",
        )
    skew = timestamp - clock()
    if skew < -tolerance or skew > tolerance:
        raise stale_timestamp(f"signature timestamp {timestamp}", skew, tolerance, WHERE)


def event_notice(gateway: str, body: bytes) -> PaymentNotice | RefundNotice:
    """The notice an event (signature already checked) stands for."""
    try:
        event: Any = json.loads(body)
    except ValueError:
        raise malformed("body is not JSON", "body") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise malformed("body must be an event object with a string type", "type")
    kind: str = event["type"]
    if kind not in EVENTS:
        raise NotificationRejected(
            f"event type {kind[:80]!r} is not handled (send only {', '.join(EVENTS)})",
            where="type",
            slug="unsupported-event",
        )
    data = event.get("data")
    account = event.get("account")
    merchant = account if isinstance(account, str) else None
    if kind.startswith("charge."):
        obj = data.get("object") if isinstance(data, dict) else None
        return refund_event(gateway, kind, obj, merchant)
    session = data.get("object") if isinstance(data, dict) else None
    if not isinstance(session, dict) or session.get("object") != "checkout.session":
        raise malformed("data.object must be a checkout.session", "data.object")
    if kind == "checkout.session.completed":
        payment_status = session.get("payment_status")
        status = COMPLETED.get(payment_status) if isinstance(payment_status, str) else None
        if status is None:
            raise NotificationRejected(
                f"payment_status {payment_status!r} is neither paid nor unpaid",
                where="session.payment_status",
                slug="not-paid-status",
            )
    elif kind == "checkout.session.async_payment_succeeded":
        status = TradeStatus.PAID
    else:
        status = TradeStatus.CLOSED
    return session_notice(gateway, session, status, merchant)


def refund_event(gateway: str, kind: str, obj: Any, merchant_id: str | None) -> RefundNotice:
    """`charge.refund.updated` carries the refund; `charge.refunded` the charge, whose
    refunds list (newest first) names the refund that caused it."""
    if kind == "charge.refunded":
        if not isinstance(obj, dict) or obj.get("object") != "charge":
            raise malformed("data.object must be a charge", "data.object")
        listed = obj.get("refunds")
        items = listed.get("data") if isinstance(listed, dict) else None
        if not isinstance(items, list) or not items or not isinstance(items[0], dict):
            # Newer API versions leave the list out; the refund's own event
            # (charge.refund.updated) or Kami's query settles it instead.
            raise NotificationRejected(
                "charge.refunded without its refunds list: subscribe to "
                "charge.refund.updated as well",
                where="data.object.refunds",
                slug="unsupported-event",
            )
        refund: dict[str, Any] = items[0]
        charge_meta = obj.get("metadata")
    else:
        if not isinstance(obj, dict) or obj.get("object") != "refund":
            raise malformed("data.object must be a refund", "data.object")
        refund, charge_meta = obj, None
    return refund_notice(gateway, refund, charge_meta, merchant_id)


def refund_notice(
    gateway: str, refund: Mapping[str, Any], charge_meta: Any, merchant_id: str | None
) -> RefundNotice:
    refund_id, amount, currency = refund.get("id"), refund.get("amount"), refund.get("currency")
    if not isinstance(refund_id, str) or not refund_id.startswith("re_"):
        raise malformed("the refund id must start with re_", "refund.id")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise malformed("refund amount must be a positive integer", "refund.amount")
    if not isinstance(currency, str) or not currency.isalpha():
        raise malformed("refund currency must be a currency code", "refund.currency")
    status = REFUND_STATUS.get(str(refund.get("status")))
    if status is None:
        raise malformed(f"unknown refund status {refund.get('status')!r}", "refund.status")
    given = refund.get("metadata")
    meta: dict[str, Any] = given if isinstance(given, dict) else {}
    order_no = meta.get("kami_order_no") or (
        charge_meta.get("kami_order_no") if isinstance(charge_meta, dict) else None
    )
    refund_no = meta.get("kami_refund_no")
    intent = refund.get("payment_intent")
    return RefundNotice(
        gateway=gateway,
        order_no=order_no if isinstance(order_no, str) and order_no else None,
        trade_no=intent if isinstance(intent, str) and intent else None,
        refund_no=refund_no if isinstance(refund_no, str) and refund_no else None,
        channel_refund_id=refund_id,
        amount_minor=amount,
        currency=currency.upper(),
        status=status,
        merchant_id=merchant_id,
    )


def session_notice(
    gateway: str, session: Mapping[str, Any], status: TradeStatus, merchant_id: str | None
) -> PaymentNotice:
    """The payment a Checkout Session (from an event or the API) stands for."""
    fields = {}
    for name in ("id", "client_reference_id", "currency"):
        value = session.get(name)
        if not isinstance(value, str) or not value or not value.isprintable():
            raise malformed(f"{name} must be a non-empty printable string", f"session.{name}")
        fields[name] = value
    if not fields["id"].startswith("cs_"):
        raise malformed("the session id must start with cs_", "session.id")
    amount = session.get("amount_total")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise malformed("amount_total must be a non-negative integer", "session.amount_total")
    return PaymentNotice(
        gateway=gateway,
        order_no=fields["client_reference_id"],
        trade_no=fields["id"],
        amount_minor=amount,
        currency=fields["currency"].upper(),
        status=status,
        merchant_id=merchant_id,
    )
