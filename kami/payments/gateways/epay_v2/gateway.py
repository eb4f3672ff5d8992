"""易支付 V2's gateway: signed calls and answers, payments, notifications, query, refunds."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from kami.kernel.errors import Unavailable
from kami.payments.gateways.amounts import yuan
from kami.payments.gateways.base import (
    Ack,
    NotificationRejected,
    PaymentInstruction,
    PaymentNotice,
    PaymentRequest,
    QueryResult,
    RawNotification,
    RefundRequest,
    RefundResult,
    RefundStatus,
    TradeStatus,
)
from kami.payments.gateways.epay.protocol import (
    MAX_RESPONSE,
    acknowledge,
    fen,
    notification_params,
    payment_notice,
    payment_params,
    refused_refund,
    trade_reference,
)
from kami.payments.gateways.epay_v2.signing import SIGN_TYPES, php_text, rsa_sign, rsa_verify
from kami.payments.gateways.freshness import stale_timestamp
from kami.payments.gateways.transport import opener

MODES = ("submit", "create")
# /api/pay/query `status`: 0 unpaid, 1 paid, 2 refunded, 3 frozen, 4 pre-authorised.
_QUERY_STATUS = {"1": TradeStatus.PAID, "2": TradeStatus.REFUNDED}


def _error(detail: str, slug: str = "gateway-error") -> Unavailable:
    return Unavailable(detail, where="gateway", slug=slug)


class EpayV2Gateway:
    refund_idempotent = True  # out_refund_no
    currencies: frozenset[str] | None = frozenset({"CNY"})

    def __init__(
        self,
        base_url: str,
        pid: str,
        merchant_private_key: RSAPrivateKey,
        platform_public_key: RSAPublicKey,
        public_url: str,
        *,
        name: str = "epay_v2",
        pay_type: str | None = None,
        mode: str = "submit",
        timeout: float = 10.0,
        tolerance: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError("the epay base URL must be http(s)")
        if not pid:
            raise ValueError("the epay merchant id (pid) must not be empty")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.name = name
        self._base = base_url.rstrip("/")
        self._pid = pid
        self._private = merchant_private_key
        self._platform = platform_public_key
        self._public_url = public_url.rstrip("/")
        self._type = pay_type
        self._mode = mode
        self._timeout = timeout
        self._tolerance = tolerance
        self._clock = clock
        self._opener = opener()

    # -- signing -------------------------------------------------------------------------------
    def _signed(self, params: Mapping[str, str]) -> dict[str, str]:
        signed = {**params, "pid": self._pid, "timestamp": str(int(self._clock()))}
        signed["sign"] = rsa_sign(signed, self._private)
        signed["sign_type"] = "RSA"
        return signed

    def _skew(self, timestamp: str) -> float | None:
        """Seconds the timestamp is off our clock beyond the tolerance (0 if fresh), or None."""
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            return None
        skew = int(timestamp) - self._clock()
        return skew if abs(skew) > self._tolerance else 0

    def _call(self, path: str, params: Mapping[str, str]) -> tuple[dict[str, str], str]:
        """POST a signed request; the answer's fields as signed text, and the raw answer."""
        body = urllib.parse.urlencode(self._signed(params)).encode()
        request = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            f"{self._base}{path}",
            data=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                text = response.read(MAX_RESPONSE).decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            raise _error(f"易支付 answered {path} with HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:
            detail = f"易支付 could not be reached for {path}: {type(exc).__name__}"
            raise _error(detail, "gateway-unavailable") from None
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict) or "code" not in data:
            raise _error(f"易支付 answered {path} with no JSON object carrying a code")
        fields = {k: v for k, v in ((k, php_text(v)) for k, v in data.items()) if v is not None}
        ok = fields.get("code") == "0"
        if ok or fields.get("sign"):
            if not rsa_verify(fields, self._platform):
                raise _error(
                    f"易支付's answer to {path} is not signed by the platform key",
                    "gateway-bad-signature",
                )
            skew = self._skew(fields.get("timestamp", ""))
            if skew is None or skew:
                raise _error(
                    f"易支付's answer to {path} has a missing or stale timestamp "
                    f"(check this server's clock)",
                    "gateway-stale-timestamp",
                )
        if ok and fields.get("pid", self._pid) != self._pid:
            raise _error(f"易支付 answered {path} for another merchant", "merchant-mismatch")
        return fields, text

    # -- payments ------------------------------------------------------------------------------
    def create_payment(self, request: PaymentRequest) -> PaymentInstruction:
        params = payment_params(self.name, self._public_url, request, self._type)
        if self._mode == "submit":
            query = urllib.parse.urlencode(self._signed(params))
            return PaymentInstruction(kind="redirect", url=f"{self._base}/api/pay/submit?{query}")
        answer, _ = self._call("/api/pay/create", {**params, "method": "web"})
        if answer["code"] != "0":
            detail = answer.get("msg", "no message")[:300]
            raise _error(f"易支付 refused to create the payment: {detail}")
        kind, info = answer.get("pay_type", ""), answer.get("pay_info", "").strip()
        if info.startswith("/"):
            info = f"{self._base}{info}"
        if kind == "qrcode" and info:
            return PaymentInstruction(kind="qr", qr=info)
        # `html` is a form to render: usable only when the platform gives a plain URL.
        if info and (kind in ("jump", "urlscheme") or info.startswith(("https://", "http://"))):
            return PaymentInstruction(kind="redirect", url=info)
        raise _error(
            f"易支付 answered pay_type {kind[:20]!r}, which a web shop cannot show; "
            "configure mode = submit for this account"
        )

    def verify_notification(self, raw: RawNotification) -> PaymentNotice:
        params = notification_params(raw)
        if not params.get("sign"):
            raise NotificationRejected(
                "the sign parameter is missing", where="sign", slug="bad-signature"
            )
        if params.get("sign_type", "RSA") not in SIGN_TYPES:
            raise NotificationRejected(
                f"sign_type {params['sign_type'][:20]!r} is not RSA",
                where="sign_type",
                slug="bad-signature",
            )
        if not rsa_verify(params, self._platform):
            raise NotificationRejected(
                "sign is not the platform key's signature of the parameters",
                where="sign",
                slug="bad-signature",
            )
        timestamp = params.get("timestamp", "")
        skew = self._skew(timestamp)
        if skew is None:
            raise NotificationRejected(
                "timestamp is missing or not unix seconds",
                where="timestamp",
                slug="stale-timestamp",
            )
        if skew:
            raise stale_timestamp(f"timestamp {timestamp}", skew, self._tolerance, "timestamp")
        return payment_notice(self.name, self._pid, params)

    def acknowledge(self, rejection: NotificationRejected | None) -> Ack:
        return acknowledge(rejection)

    def query(self, request: PaymentRequest) -> QueryResult:
        answer, text = self._call("/api/pay/query", {"out_trade_no": request.order_no})
        if answer["code"] != "0" or answer.get("out_trade_no") != request.order_no:
            return QueryResult(None, text)
        trade_no = answer.get("trade_no", "")
        try:
            amount = fen(answer.get("money", ""), "money")
        except NotificationRejected:
            return QueryResult(None, text)
        if not trade_no or len(trade_no) > 64:
            return QueryResult(None, text)
        notice = PaymentNotice(
            gateway=self.name,
            order_no=request.order_no,
            trade_no=trade_no,
            amount_minor=amount,
            currency="CNY",
            status=_QUERY_STATUS.get(answer.get("status", ""), TradeStatus.PENDING),
            merchant_id=self._pid,
        )
        return QueryResult(notice, text)

    # -- refunds -------------------------------------------------------------------------------
    def refund(self, request: RefundRequest) -> RefundResult:
        refused = refused_refund(request)
        if refused is not None:
            return refused
        params = {
            "money": yuan(request.amount_minor),
            "out_refund_no": request.refund_no,
            **trade_reference(request),
        }
        answer, text = self._call("/api/pay/refund", params)
        if answer["code"] == "0":
            return self._refunded(request, answer, text, RefundStatus.SUCCEEDED, None)
        message = answer.get("msg", "refused without a message")[:500]
        again = self.query_refund(request)
        if again.status is RefundStatus.SUCCEEDED:
            return again  # the refund number was used before, and that refund went through
        return RefundResult(
            request.refund_no, RefundStatus.FAILED, request.amount_minor, None, text, message
        )

    def query_refund(self, request: RefundRequest) -> RefundResult:
        answer, text = self._call("/api/pay/refundquery", {"out_refund_no": request.refund_no})
        if answer["code"] != "0":
            # The platform knows no refund under this number: it was never made.
            message = answer.get("msg", "no such refund")[:500]
            return RefundResult(
                request.refund_no, RefundStatus.FAILED, request.amount_minor, None, text, message
            )
        status = {"1": RefundStatus.SUCCEEDED, "0": RefundStatus.FAILED}.get(
            answer.get("status", ""), RefundStatus.PROCESSING
        )
        detail = "the platform reports the refund failed" if status is RefundStatus.FAILED else None
        return self._refunded(request, answer, text, status, detail)

    def _refunded(
        self,
        request: RefundRequest,
        answer: Mapping[str, str],
        text: str,
        status: RefundStatus,
        detail: str | None,
    ) -> RefundResult:
        if answer.get("out_refund_no", request.refund_no) != request.refund_no:
            raise _error("易支付 answered about another refund number")
        try:
            amount = fen(answer["money"], "money") if "money" in answer else request.amount_minor
        except NotificationRejected:
            raise _error("易支付 answered the refund with a malformed money") from None
        channel_id = answer.get("refund_no") or None
        return RefundResult(request.refund_no, status, amount, channel_id, text, detail)
