"""Alipay's notifications: the form in its own charset, the RSA2 rule over it, and this
account's app and seller; `AlipayGateway.verify_notification` reads the trade from the result."""

from __future__ import annotations

import urllib.parse

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from kami.payments.gateways.alipay.protocol import (
    CHARSETS,
    STATUSES,
    notify_content,
    rsa2_verify,
    to_fen,
)
from kami.payments.gateways.base import (
    NotificationRejected,
    PaymentNotice,
    RawNotification,
)


def reject(detail: str, where: str, slug: str = "malformed-notification") -> NotificationRejected:
    return NotificationRejected(detail, where=where, slug=slug)


def short_text(value: object, limit: int = 64) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def notification_params(raw: RawNotification) -> dict[str, str]:
    if raw.method != "POST" or not raw.body:
        return dict(raw.query)  # a GET can only be trusted to be UTF-8
    text = raw.body.decode("latin-1")
    sniffed = dict(urllib.parse.parse_qsl(text, keep_blank_values=True, encoding="latin-1"))
    charset = CHARSETS.get(sniffed.get("charset", "utf-8").strip().lower())
    if charset is None:
        raise reject(f"charset {sniffed.get('charset', '')[:20]!r} is not supported", "charset")
    try:
        pairs = urllib.parse.parse_qsl(
            raw.body.decode(charset), keep_blank_values=True, encoding=charset, errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        raise reject(f"the body is not valid {charset}", "charset") from None
    params = dict(pairs)
    if len(params) != len(pairs):
        raise reject("a parameter is repeated", "body")
    return params


def verified_params(
    raw: RawNotification, alipay_key: RSAPublicKey, app_id: str, seller_id: str | None
) -> dict[str, str]:
    """The notification's parameters, signed under `alipay_key` for this app (and seller)."""
    params = notification_params(raw)
    sign = params.get("sign", "")
    if not sign:
        raise reject("the sign parameter is missing", "sign", "bad-signature")
    if params.get("sign_type", "RSA2") != "RSA2":
        raise reject("only sign_type RSA2 is accepted", "sign_type", "bad-signature")
    charset = CHARSETS.get(params.get("charset", "utf-8").strip().lower(), "utf-8")
    try:
        content = notify_content(params).encode(charset)
    except UnicodeEncodeError:
        raise reject(f"the parameters are not {charset}", "charset", "bad-signature") from None
    if not rsa2_verify(alipay_key, content, sign):
        raise reject("sign does not verify under alipay_public_key", "sign", "bad-signature")
    if params.get("app_id") != app_id:
        raise reject(
            f"app_id {params.get('app_id', '')[:32]!r} is not this account's",
            "app_id",
            "app-mismatch",
        )
    if seller_id is not None and params.get("seller_id") != seller_id:
        raise reject(
            f"seller_id {params.get('seller_id', '')[:32]!r} is not this account's",
            "seller_id",
            "merchant-mismatch",
        )
    return params


def payment_notice(
    gateway: str, params: dict[str, str], order_no: str, trade_no: str, app_id: str
) -> PaymentNotice:
    """The trade a verified (non-refund) notification reports."""
    status = STATUSES.get(params.get("trade_status", ""))
    if status is None:
        raise reject(
            f"trade_status {params.get('trade_status', '')[:32]!r} is unknown",
            "trade_status",
            "not-paid-status",
        )
    amount = to_fen(params.get("total_amount", ""))
    if amount is None:
        raise reject("total_amount is not an amount in yuan", "total_amount")
    return PaymentNotice(
        gateway=gateway,
        order_no=order_no,
        trade_no=trade_no,
        amount_minor=amount,
        currency="CNY",
        status=status,
        merchant_id=params.get("seller_id") or app_id,
    )
