"""What 易支付 V1 (MD5) and V2 (RSA) share: the signed text, the payment parameters, the
notification's fields and reply, amounts, and the checks of the common options."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

from kami.kernel.errors import Unavailable
from kami.payments.gateways.amounts import fen_of, yuan
from kami.payments.gateways.base import (
    Ack,
    ChannelSpec,
    NotificationRejected,
    PaymentNotice,
    PaymentRequest,
    RawNotification,
    RefundRequest,
    RefundResult,
    RefundStatus,
    TradeStatus,
)

MAX_RESPONSE = 256 * 1024


def sign_content(params: Mapping[str, str]) -> str:
    """The signed text, shared by V1 (MD5) and V2 (RSA): non-empty values but `sign` and
    `sign_type`, sorted by key in byte order (PHP `ksort`), joined `k=v&…`, values raw."""
    items = sorted(
        ((k, v) for k, v in params.items() if k not in ("sign", "sign_type") and v != ""),
        key=lambda item: item[0].encode(),
    )
    return "&".join(f"{k}={v}" for k, v in items)


# -- amounts and notifications --------------------------------------------------------------
def fen(money: str, where: str) -> int:
    try:
        value = Decimal(money)
    except InvalidOperation:
        raise NotificationRejected(
            f"money {money!r} is not a decimal", where=where, slug="malformed-notification"
        ) from None
    amount = fen_of(value)
    if amount is None:
        raise NotificationRejected(
            f"money {money!r} is not an amount in yuan", where=where, slug="malformed-notification"
        )
    return amount


def payment_params(
    name: str, public_url: str, request: PaymentRequest, pay_type: str | None
) -> dict[str, str]:
    """The parameters of a payment, unsigned and without `pid` (CNY only)."""
    if request.currency != "CNY":
        raise Unavailable("易支付 takes CNY only", where="currency", slug="currency-unsupported")
    params = {
        "out_trade_no": request.order_no,
        "notify_url": f"{public_url}/api/v1/payments/{name}/notify",
        "return_url": f"{public_url}/orders/{request.order_no}",
        "name": request.subject.encode()[:127].decode(errors="ignore"),
        "money": yuan(request.amount_minor),
    }
    if pay_type:
        params["type"] = pay_type
    return params


def notification_params(raw: RawNotification) -> dict[str, str]:
    """The query string, overridden by a POSTed form: the platform uses either."""
    params = dict(raw.query)
    if raw.method == "POST" and raw.body:
        params.update(urllib.parse.parse_qsl(raw.body.decode(errors="replace")))
    return params


def payment_notice(gateway: str, pid: str, params: Mapping[str, str]) -> PaymentNotice:
    """The notice of verified parameters; refused unless their pid is this merchant's (V1 and
    V2 alike)."""
    if params.get("pid") != pid:
        raise NotificationRejected(
            f"pid {params.get('pid', '')[:40]!r} is not this merchant's",
            where="pid",
            slug="merchant-mismatch",
        )
    for field in ("out_trade_no", "trade_no", "money"):
        if not params.get(field) or len(params[field]) > 64:
            raise NotificationRejected(
                f"{field} is missing or too long", where=field, slug="malformed-notification"
            )
    paid = params.get("trade_status") == "TRADE_SUCCESS"
    return PaymentNotice(
        gateway=gateway,
        order_no=params["out_trade_no"],
        trade_no=params["trade_no"],
        amount_minor=fen(params["money"], "money"),
        currency="CNY",
        status=TradeStatus.PAID if paid else TradeStatus.PENDING,
        merchant_id=pid,
    )


def acknowledge(rejection: NotificationRejected | None) -> Ack:
    if rejection is None or rejection.slug == "not-paid-status":
        return Ack(200, b"success", "text/plain")
    return Ack(400, f"fail: {rejection.slug}".encode(), "text/plain")


def trade_reference(request: RefundRequest) -> dict[str, str]:
    """The trade a refund is of: the platform's trade number when known, else the order's."""
    if request.trade_no:
        return {"trade_no": request.trade_no}
    return {"out_trade_no": request.order_no}


def refused_refund(request: RefundRequest) -> RefundResult | None:
    """A refund no 易支付 build accepts, refused before anything is sent (or None if fine)."""
    if request.currency != "CNY":
        detail = "易支付 takes CNY only"
    elif request.amount_minor <= 0:
        detail = "a refund must be at least 0.01 CNY"
    else:
        return None
    return RefundResult(request.refund_no, RefundStatus.FAILED, 0, None, "", detail)


# -- configuration ----------------------------------------------------------------------------
def check_base_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("base_url: must be the gateway's http(s) address, without ?query")
    return value


def check_pid(value: str) -> str:
    if not value or len(value) > 32 or not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError("pid: must be the merchant id (up to 32 characters, no spaces)")
    return value


def check_required(options: Mapping[str, str], spec: ChannelSpec) -> None:
    for option in spec.required:
        if not options.get(option):
            raise ValueError(f"{option}: is missing")


def check_pay_type(options: Mapping[str, str]) -> str | None:
    pay_type = options.get("pay_type") or None
    if pay_type is not None and not (pay_type.isascii() and pay_type.isprintable()):
        raise ValueError("pay_type: must be a payment method name such as alipay or wxpay")
    return pay_type
