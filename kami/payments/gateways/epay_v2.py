"""易支付 V2 (the newer 彩虹易支付 API): RSA-signed requests, responses and notifications.

Field names follow the V2 document (payments.md §4.4, a summary of epay.qcjy.cc/doc):
form-encoded POST requests to `/api/pay/{submit,create,query,refund,refundquery}`, JSON answers
with `code` 0 for success (V1 used 1), every request and answer carrying `timestamp` (unix
seconds), `sign` and `sign_type`. Where the document is silent this module follows V1: the
notification's `trade_status=TRADE_SUCCESS` is the only paid state, the reply is the bare word
`success`, `return_url` is the order page, and the page payment is a GET of the signed
parameters (like `submit.php`).

Signature: the V1 string (non-empty values but `sign`/`sign_type`, byte-sorted keys, `k=v&…`,
raw values) signed SHA256WithRSA (PKCS#1 v1.5) with the merchant private key, base64; we send
`sign_type=RSA` as the 彩虹 SDK does, and accept `RSA` or `SHA256WithRSA`. Answers and
notifications are verified with the platform public key, and their `timestamp` must be within
five minutes of our clock in either direction (slug `stale-timestamp` for notifications).
JSON values are signed as PHP prints them: numbers as digits, true as "1"; false, null, arrays
and objects are left out.

An error answer (`code` ≠ 0) may come unsigned, as error paths of the platform often do; a
signature on it must still verify. Such an answer is only ever read as "no" (no trade, refund
refused) and never as a payment or a refund that happened. A success answer must be signed.

Refunds are idempotent at the platform on `out_refund_no` (Kami's refund number), so a resent
refund is safe; a transport failure raises Unavailable and the caller asks `refundquery`. The
platform refunds synchronously (the refund query knows only 0 failed / 1 succeeded), so `code`
0 is SUCCEEDED. A refusal is checked once with `refundquery` on the same `out_refund_no`, so a
platform that answers a repeated refund number with an error still reports the first refund.
The platform sends no refund notifications.

The `submit` page URL carries the timestamp it was signed at, which the platform checks:
it is for an immediate redirect, and a later attempt needs a new `create_payment`.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kami.kernel.errors import Unavailable
from kami.payments.gateways.base import (
    Ack,
    ChannelSpec,
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
from kami.payments.gateways.epay import (
    MAX_RESPONSE,
    NoRedirect,
    check_base_url,
    check_pid,
    fen,
    refused_refund,
    sign_content,
    yuan,
)

SIGN_TYPES = ("RSA", "SHA256WithRSA")
MODES = ("submit", "create")
# /api/pay/query `status`: 0 unpaid, 1 paid, 2 refunded, 3 frozen, 4 pre-authorised.
_QUERY_STATUS = {"1": TradeStatus.PAID, "2": TradeStatus.REFUNDED}


def rsa_sign(params: Mapping[str, str], key: rsa.RSAPrivateKey) -> str:
    signature = key.sign(sign_content(params).encode(), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


def rsa_verify(params: Mapping[str, str], key: rsa.RSAPublicKey) -> bool:
    given = params.get("sign", "").strip().replace(" ", "+")  # a '+' decoded as a space
    try:
        signature = base64.b64decode(given, validate=True)
        key.verify(signature, sign_content(params).encode(), padding.PKCS1v15(), hashes.SHA256())
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def _php_text(value: Any) -> str | None:
    """A JSON value as the platform's PHP signs it, or None when it is not signed."""
    if value is True:
        return "1"
    if value is None or value is False or isinstance(value, list | dict):
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _error(detail: str, slug: str = "gateway-error") -> Unavailable:
    return Unavailable(detail, where="gateway", slug=slug)


class EpayV2Gateway:
    refund_idempotent = True  # out_refund_no
    currencies: frozenset[str] | None = frozenset({"CNY"})

    def __init__(
        self,
        base_url: str,
        pid: str,
        merchant_private_key: rsa.RSAPrivateKey,
        platform_public_key: rsa.RSAPublicKey,
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
        self._opener = urllib.request.build_opener(NoRedirect)

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
        fields = {k: v for k, v in ((k, _php_text(v)) for k, v in data.items()) if v is not None}
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
        if request.currency != "CNY":
            raise Unavailable(
                "易支付 takes CNY only", where="currency", slug="currency-unsupported"
            )
        params = {
            "out_trade_no": request.order_no,
            "notify_url": f"{self._public_url}/api/v1/payments/{self.name}/notify",
            "return_url": f"{self._public_url}/orders/{request.order_no}",
            "name": request.subject.encode()[:127].decode(errors="ignore"),
            "money": yuan(request.amount_minor),
        }
        if self._type:
            params["type"] = self._type
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
        params = dict(raw.query)
        if raw.method == "POST" and raw.body:
            params.update(urllib.parse.parse_qsl(raw.body.decode(errors="replace")))
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
            when = "in the future" if skew > 0 else "old"
            raise NotificationRejected(
                f"timestamp {timestamp} is {abs(int(skew))} s {when}; "
                f"the tolerance is {self._tolerance} s",
                where="timestamp",
                slug="stale-timestamp",
            )
        if params.get("pid") != self._pid:
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
        params = {"money": yuan(request.amount_minor), "out_refund_no": request.refund_no}
        if request.trade_no:
            params["trade_no"] = request.trade_no
        else:
            params["out_trade_no"] = request.order_no
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


# -- configuration ---------------------------------------------------------------------------
def _der(text: str) -> bytes | None:
    """Bare base64 (as the merchant console shows keys), or None when it is not."""
    try:
        return base64.b64decode("".join(text.split()), validate=True) or None
    except (binascii.Error, ValueError):
        return None


def load_private_key(text: str, option: str) -> rsa.RSAPrivateKey:
    problem = f"{option}: not a PEM RSA private key (PKCS#1 or PKCS#8, unencrypted)"
    data = text.strip()
    try:
        if data.startswith("-----BEGIN"):
            key: Any = serialization.load_pem_private_key(data.encode(), password=None)
        elif (der := _der(data)) is not None:
            key = serialization.load_der_private_key(der, password=None)
        else:
            raise ValueError(problem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(problem) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{option}: not an RSA key")
    return key


def load_public_key(text: str, option: str) -> rsa.RSAPublicKey:
    problem = f"{option}: not a PEM RSA public key (or certificate)"
    data = text.strip()
    if "PRIVATE KEY" in data:
        raise ValueError(f"{option}: is a private key; give the platform's public key")
    try:
        if data.startswith("-----BEGIN CERTIFICATE"):
            key: Any = x509.load_pem_x509_certificate(data.encode()).public_key()
        elif data.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(data.encode())
        elif (der := _der(data)) is not None:
            key = serialization.load_der_public_key(der)
        else:
            raise ValueError(problem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(problem) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{option}: not an RSA key")
    return key


def from_options(name: str, options: Mapping[str, str], public_url: str) -> EpayV2Gateway:
    """An account from its options (see SPEC); errors name the option, never its value."""
    for option in SPEC.required:
        if not options.get(option):
            raise ValueError(f"{option}: is missing")
    private = load_private_key(options["merchant_private_key"], "merchant_private_key")
    platform = load_public_key(options["platform_public_key"], "platform_public_key")
    if platform.public_numbers() == private.public_key().public_numbers():
        raise ValueError(
            "platform_public_key: is the public half of merchant_private_key; give the "
            "platform's public key from the merchant console's API page"
        )
    mode = options.get("mode") or "submit"
    if mode not in MODES:
        raise ValueError(f"mode: must be {' or '.join(MODES)}")
    pay_type = options.get("pay_type") or None
    if pay_type is not None and not (pay_type.isascii() and pay_type.isprintable()):
        raise ValueError("pay_type: must be a payment method name such as alipay or wxpay")
    if mode == "create" and pay_type is None:
        raise ValueError("pay_type: required when mode is create (the create API needs it)")
    try:
        timeout = float(options.get("timeout") or "10")
    except ValueError:
        timeout = 0.0
    if not 1 <= timeout <= 60:
        raise ValueError("timeout: seconds, from 1 to 60")
    return EpayV2Gateway(
        check_base_url(options["base_url"]),
        check_pid(options["pid"]),
        private,
        platform,
        public_url,
        name=name,
        pay_type=pay_type,
        mode=mode,
        timeout=timeout,
    )


def _warnings(options: Mapping[str, str]) -> list[str]:
    if urllib.parse.urlsplit(options.get("base_url", "")).scheme != "https":
        return ["base_url is not https: orders and refunds travel readable (signed, not secret)"]
    return []


SPEC = ChannelSpec(
    channel="epay_v2",
    required=("base_url", "pid", "merchant_private_key", "platform_public_key"),
    optional=("pay_type", "mode", "timeout"),
    secrets=frozenset({"merchant_private_key"}),
    build=from_options,
    warnings=_warnings,
)
