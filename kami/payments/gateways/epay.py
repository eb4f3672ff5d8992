"""易支付 (epay, the 彩虹易支付 protocol), version 1: MD5-signed requests and notifications.

Signing, exactly as the gateway's PHP reference does it: drop `sign`, `sign_type` and every empty
value; sort by key; join `k=v` with `&` using the raw (decoded, untrimmed) values; append the
merchant key directly; lower-case hex MD5. Only `trade_status=TRADE_SUCCESS` means paid. The reply
the gateway waits for is the bare word `success`; anything else makes it retry.

The query (`api.php?act=order`) carries the merchant key in the URL, as the protocol requires:
configure the gateway's base URL with https.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
import urllib.request
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from kami.kernel.errors import Unavailable
from kami.payments.gateways.base import (
    Ack,
    NotificationRejected,
    PaymentInstruction,
    PaymentNotice,
    PaymentRequest,
    QueryResult,
    RawNotification,
    TradeStatus,
)


def sign(params: Mapping[str, str], key: str) -> str:
    items = sorted((k, v) for k, v in params.items() if k not in ("sign", "sign_type") and v != "")
    text = "&".join(f"{k}={v}" for k, v in items) + key
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def yuan(amount_minor: int) -> str:
    whole, fen = divmod(amount_minor, 100)
    return f"{whole}.{fen:02d}"


def fen(money: str, where: str) -> int:
    try:
        value = Decimal(money)
    except InvalidOperation:
        raise NotificationRejected(
            f"money {money!r} is not a decimal", where=where, slug="malformed-notification"
        ) from None
    if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.01")):
        raise NotificationRejected(
            f"money {money!r} is not an amount in yuan", where=where, slug="malformed-notification"
        )
    return int(value * 100)


class EpayGateway:
    def __init__(
        self,
        base_url: str,
        pid: str,
        key: str,
        public_url: str,
        *,
        name: str = "epay",
        pay_type: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError("the epay base URL must be http(s)")
        if not pid or not key:
            raise ValueError("the epay merchant id (pid) and key must not be empty")
        self.name = name
        self._base = base_url.rstrip("/")
        self._pid = pid
        self._key = key
        self._public_url = public_url.rstrip("/")
        self._type = pay_type
        self._timeout = timeout

    def create_payment(self, request: PaymentRequest) -> PaymentInstruction:
        if request.currency != "CNY":
            raise Unavailable(
                "易支付 takes CNY only", where="currency", slug="currency-unsupported"
            )
        subject = request.subject.encode()[:127].decode(errors="ignore")
        params = {
            "pid": self._pid,
            "out_trade_no": request.order_no,
            "notify_url": f"{self._public_url}/api/v1/payments/{self.name}/notify",
            "return_url": f"{self._public_url}/orders/{request.order_no}",
            "name": subject,
            "money": yuan(request.amount_minor),
        }
        if self._type:
            params["type"] = self._type
        params["sign"] = sign(params, self._key)
        params["sign_type"] = "MD5"
        return PaymentInstruction(
            kind="redirect", url=f"{self._base}/submit.php?{urllib.parse.urlencode(params)}"
        )

    def verify_notification(self, raw: RawNotification) -> PaymentNotice:
        params = dict(raw.query)
        if raw.method == "POST" and raw.body:
            params.update(urllib.parse.parse_qsl(raw.body.decode(errors="replace")))
        given = params.get("sign", "")
        if not given:
            raise NotificationRejected(
                "the sign parameter is missing", where="sign", slug="bad-signature"
            )
        if not hmac.compare_digest(given.lower(), sign(params, self._key)):
            raise NotificationRejected(
                "sign does not match the parameters", where="sign", slug="bad-signature"
            )
        if params.get("pid") != self._pid:
            raise NotificationRejected(
                f"pid {params.get('pid')!r} is not this merchant's",
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
            gateway=self.name,
            order_no=params["out_trade_no"],
            trade_no=params["trade_no"],
            amount_minor=fen(params["money"], "money"),
            currency="CNY",
            status=TradeStatus.PAID if paid else TradeStatus.PENDING,
            merchant_id=self._pid,
        )

    def acknowledge(self, rejection: NotificationRejected | None) -> Ack:
        if rejection is None or rejection.slug == "not-paid-status":
            return Ack(200, b"success", "text/plain")
        return Ack(400, f"fail: {rejection.slug}".encode(), "text/plain")

    def query(self, request: PaymentRequest) -> QueryResult:
        params = {
            "act": "order",
            "pid": self._pid,
            "key": self._key,
            "out_trade_no": request.order_no,
        }
        url = f"{self._base}/api.php?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self._timeout) as resp:  # noqa: S310
                text = resp.read(256 * 1024).decode("utf-8", errors="replace")
        except OSError as exc:
            raise Unavailable(
                f"易支付 query failed: {type(exc).__name__}",
                where="gateway",
                slug="gateway-unavailable",
            ) from None
        try:
            data: Any = json.loads(text)
        except ValueError:
            raise Unavailable(
                "易支付 answered the query with non-JSON", where="gateway", slug="gateway-error"
            ) from None
        if not isinstance(data, dict) or str(data.get("code")) != "1":
            return QueryResult(None, text)
        if str(data.get("out_trade_no", request.order_no)) != request.order_no:
            return QueryResult(None, text)
        status = TradeStatus.PAID if str(data.get("status")) == "1" else TradeStatus.PENDING
        try:
            amount = fen(str(data.get("money", "")), "money")
        except NotificationRejected:
            return QueryResult(None, text)
        notice = PaymentNotice(
            gateway=self.name,
            order_no=request.order_no,
            trade_no=str(data.get("trade_no", "")),
            amount_minor=amount,
            currency="CNY",
            status=status,
            merchant_id=self._pid,
        )
        return QueryResult(notice if notice.trade_no else None, text)
