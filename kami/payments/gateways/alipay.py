"""支付宝开放平台 (Alipay open platform): page / wap / precreate payments, RSA2 notifications,
trade query, refunds and refund query.

Three signing rules, all SHA256withRSA (PKCS#1 v1.5), base64:
* requests, signed with the app private key: every parameter except `sign` and empty values
  (`sign_type` included), sorted, `k=v` joined with `&`, raw values, UTF-8;
* synchronous answers, verified with the Alipay public key: the exact JSON text of the
  `<method_with_underscores>_response` member, as it stands in the body;
* notifications, verified with the Alipay public key: every parameter except `sign` and
  `sign_type` (empty ones kept), URL-decoded, sorted, joined the same way, encoded in the
  notification's own `charset` (utf-8, gbk or gb2312: the body is decoded in that charset).

Alipay resends a notification until it reads the bare word `success`, for about 25 hours, so
`notify_time` is no freshness window and is not checked. The trade notify is sent again when a
refund succeeds, carrying `out_biz_no` (the refund's `out_request_no`), `gmt_refund` and
`refund_fee`; `refund_fee` is the trade's *cumulative* refunded amount, so the amount of this one
refund is read from `alipay.trade.fastpay.refund.query` (see `_refund_notice`).
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
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

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
    RefundNotice,
    RefundRequest,
    RefundResult,
    RefundStatus,
    TradeStatus,
)

GATEWAY_URL = "https://openapi.alipay.com/gateway.do"
SANDBOX_URL = "https://openapi-sandbox.dl.alipaydev.com/gateway.do"
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")  # no daylight saving since 1991
PRODUCTS = {
    "page": ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"),
    "wap": ("alipay.trade.wap.pay", "QUICK_WAP_WAY"),
    "precreate": ("alipay.trade.precreate", "FACE_TO_FACE_PAYMENT"),
}
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gb2312"}
_STATUSES = {
    "TRADE_SUCCESS": TradeStatus.PAID,
    "TRADE_FINISHED": TradeStatus.PAID,
    "WAIT_BUYER_PAY": TradeStatus.PENDING,
    "TRADE_CLOSED": TradeStatus.CLOSED,
}
# 40004 answers that mean "try again with the same parameters", not a refusal.
_TRANSIENT = frozenset({"ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR"})
_SIGN = (padding.PKCS1v15(), hashes.SHA256())


# -- signing rules ---------------------------------------------------------------------------------
def request_content(params: Mapping[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v != "")


def notify_content(params: Mapping[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type"))


def rsa2_sign(key: rsa.RSAPrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data, *_SIGN)).decode()


def rsa2_verify(key: rsa.RSAPublicKey, data: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode("".join(signature.split()), validate=True), data, *_SIGN)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def response_members(body: str) -> dict[str, str]:
    """The exact text of each top-level member of a JSON object: Alipay signs the text of
    `<method>_response` as it was sent, so it is cut out of the body, never re-serialised."""
    decoder = json.JSONDecoder()
    members: dict[str, str] = {}

    def skip(i: int) -> int:
        while i < len(body) and body[i] in " \t\r\n":
            i += 1
        return i

    i = skip(0)
    if body[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = skip(i + 1)
    while body[i : i + 1] != "}":
        name, i = decoder.raw_decode(body, i)
        i = skip(i)
        if not isinstance(name, str) or name in members or body[i : i + 1] != ":":
            raise ValueError("bad or repeated member name")
        start = skip(i + 1)
        _, end = decoder.raw_decode(body, start)
        members[name] = body[start:end]
        i = skip(end)
        if body[i : i + 1] == ",":
            i = skip(i + 1)
        elif body[i : i + 1] != "}":
            raise ValueError("expected , or }")
    return members


def yuan(amount_minor: int) -> str:
    whole, fen = divmod(amount_minor, 100)
    return f"{whole}.{fen:02d}"


def to_fen(money: object) -> int | None:
    """Yuan as Alipay writes it ("12.34") to fen; None when it is not such an amount."""
    try:
        value = Decimal(str(money))
    except InvalidOperation:
        return None
    if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.01")):
        return None
    return int(value * 100)


# -- keys ------------------------------------------------------------------------------------------
def _der(text: str, option: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{option}: neither PEM nor base64 key text") from None


def load_private_key(text: str, option: str = "app_private_key") -> rsa.RSAPrivateKey:
    text = text.strip()
    if "PUBLIC KEY" in text or "CERTIFICATE" in text:
        raise ValueError(f"{option}: this is a public key or certificate, not the app private key")
    if "ENCRYPTED" in text:
        raise ValueError(f"{option}: the key is encrypted; give it without a passphrase")
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = serialization.load_der_private_key(_der(text, option), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            f"{option}: not an RSA private key (PEM PKCS#1 or PKCS#8, or bare base64)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ValueError(f"{option}: RSA2 needs an RSA key of at least 2048 bits")
    return key


def load_public_key(text: str, option: str = "alipay_public_key") -> rsa.RSAPublicKey:
    text = text.strip()
    if "PRIVATE KEY" in text:
        raise ValueError(f"{option}: this is a private key; paste the 支付宝公钥 from the console")
    if "CERTIFICATE" in text:
        raise ValueError(
            f"{option}: a certificate (公钥证书 mode) is not supported; use the 公钥 mode key"
        )
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(_der(text, option))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"{option}: not an RSA public key (PEM or bare base64)") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise ValueError(f"{option}: RSA2 needs an RSA key of at least 2048 bits")
    return key


# -- helpers ---------------------------------------------------------------------------------------
def _reject(detail: str, where: str, slug: str = "malformed-notification") -> NotificationRejected:
    return NotificationRejected(detail, where=where, slug=slug)


def _text(value: object, limit: int = 64) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The open platform never redirects an API call; following one would leak signed calls."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class AlipayGateway:
    refund_idempotent = True  # out_request_no
    currencies: frozenset[str] | None = frozenset({"CNY"})

    def __init__(
        self,
        name: str,
        app_id: str,
        app_private_key: rsa.RSAPrivateKey,
        alipay_public_key: rsa.RSAPublicKey,
        public_url: str,
        *,
        seller_id: str | None = None,
        product: str = "page",
        gateway_url: str = GATEWAY_URL,
        return_url: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if product not in PRODUCTS:
            raise ValueError(f"product: must be one of {', '.join(PRODUCTS)}")
        self.name = name
        self._app_id = app_id
        self._key = app_private_key
        self._alipay_key = alipay_public_key
        self._public_url = public_url.rstrip("/")
        self._seller_id = seller_id
        self._product = product
        self._gateway_url = gateway_url
        self._return_url = return_url
        self._timeout = timeout
        self._clock = clock
        self._opener = urllib.request.build_opener(_NoRedirect)

    # -- requests ----------------------------------------------------------------------------------
    def _signed_params(self, method: str, biz: Mapping[str, str], **extra: str) -> dict[str, str]:
        params = {
            "app_id": self._app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": datetime.fromtimestamp(self._clock(), BEIJING).strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "version": "1.0",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        if method in (spec[0] for spec in PRODUCTS.values()):
            params["notify_url"] = f"{self._public_url}/api/v1/payments/{self.name}/notify"
        params.update(extra)
        params["sign"] = rsa2_sign(self._key, request_content(params).encode())
        return params

    def _call(self, method: str, biz: Mapping[str, str]) -> tuple[dict[str, Any], str, bool]:
        """One API call: (the `<method>_response` object, the body, whether it was signed).

        A signed answer whose signature does not verify is never returned."""
        params = self._signed_params(method, biz)
        content = params.pop("biz_content")
        # As the official SDKs do: common parameters in the URL, the business ones in the body.
        url = f"{self._gateway_url}?{urllib.parse.urlencode(params)}"
        data = urllib.parse.urlencode({"biz_content": content}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"}
        # S310: the scheme was checked by from_options (http or https only).
        request = urllib.request.Request(  # noqa: S310
            url, data=data, headers=headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                body = response.read(1024 * 1024).decode("utf-8")
        except urllib.error.HTTPError as exc:
            raise Unavailable(
                f"Alipay answered {method} with HTTP {exc.code}",
                where="alipay",
                slug="gateway-error",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise Unavailable(
                f"Alipay could not be reached for {method}: {type(exc).__name__}",
                where="alipay",
                slug="gateway-unavailable",
            ) from None
        key = method.replace(".", "_") + "_response"
        try:
            members = response_members(body)
            text = members.get(key) or members["error_response"]
            answer: Any = json.loads(text)
            sign: Any = json.loads(members["sign"]) if "sign" in members else None
        except (ValueError, KeyError):
            answer = sign = None
        if not isinstance(answer, dict) or not (sign is None or isinstance(sign, str)):
            raise Unavailable(
                f"Alipay answered {method} with no {key} object",
                where="alipay",
                slug="gateway-error",
            )
        if sign is not None and not rsa2_verify(self._alipay_key, text.encode(), sign):
            raise Unavailable(
                f"Alipay's answer to {method} does not verify under alipay_public_key",
                where="alipay",
                slug="bad-signature",
            )
        return answer, body, sign is not None

    def _answer(self, method: str, biz: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        return self._trusted(method, *self._call(method, biz))

    def _trusted(
        self, method: str, answer: dict[str, Any], body: str, signed: bool
    ) -> tuple[dict[str, Any], str]:
        """A signed answer with code 10000 or 40004 (a business refusal); anything else is an
        error of the channel or of the configuration, and raises Unavailable."""
        code = answer.get("code")
        if signed and (
            code == "10000" or (code == "40004" and answer.get("sub_code") not in _TRANSIENT)
        ):
            return answer, body
        why = "unsigned answer " if not signed else ""
        raise Unavailable(
            f"Alipay {method}: {why}{code} {answer.get('sub_code', '')} "
            f"{str(answer.get('sub_msg') or answer.get('msg') or '')[:200]}".strip(),
            where="alipay",
            slug="gateway-error",
        )

    def create_payment(self, request: PaymentRequest) -> PaymentInstruction:
        if request.currency != "CNY":
            raise Unavailable(
                "Alipay takes CNY only", where="currency", slug="currency-unsupported"
            )
        method, product_code = PRODUCTS[self._product]
        expires = request.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        subject = "".join(" " if c in "/=&" else c for c in request.subject)[:256].strip()
        biz = {
            "out_trade_no": request.order_no,
            "total_amount": yuan(request.amount_minor),
            "subject": subject or request.order_no,
            "product_code": product_code,
            "time_expire": expires.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
        }
        if self._product == "precreate":
            answer, _ = self._answer(method, biz)
            qr = answer.get("qr_code")
            if answer.get("code") != "10000" or not isinstance(qr, str) or not qr:
                raise Unavailable(
                    f"Alipay refused the QR code: {answer.get('sub_code')} "
                    f"{str(answer.get('sub_msg') or '')[:200]}",
                    where="alipay",
                    slug="gateway-error",
                )
            if answer.get("out_trade_no") != request.order_no:
                raise Unavailable(
                    "Alipay's QR code is for another order", where="alipay", slug="gateway-error"
                )
            return PaymentInstruction(kind="qr", qr=qr)
        order = urllib.parse.quote(request.order_no, safe="")
        back = self._return_url or f"{self._public_url}/orders/{{order_no}}"
        params = self._signed_params(method, biz, return_url=back.replace("{order_no}", order))
        return PaymentInstruction(
            kind="redirect", url=f"{self._gateway_url}?{urllib.parse.urlencode(params)}"
        )

    # -- notifications -----------------------------------------------------------------------------
    def _notification_params(self, raw: RawNotification) -> dict[str, str]:
        if raw.method != "POST" or not raw.body:
            return dict(raw.query)  # a GET can only be trusted to be UTF-8
        text = raw.body.decode("latin-1")
        sniffed = dict(urllib.parse.parse_qsl(text, keep_blank_values=True, encoding="latin-1"))
        charset = CHARSETS.get(sniffed.get("charset", "utf-8").strip().lower())
        if charset is None:
            raise _reject(
                f"charset {sniffed.get('charset', '')[:20]!r} is not supported", "charset"
            )
        try:
            pairs = urllib.parse.parse_qsl(
                raw.body.decode(charset), keep_blank_values=True, encoding=charset, errors="strict"
            )
        except (UnicodeDecodeError, ValueError):
            raise _reject(f"the body is not valid {charset}", "charset") from None
        params = dict(pairs)
        if len(params) != len(pairs):
            raise _reject("a parameter is repeated", "body")
        return params

    def verify_notification(self, raw: RawNotification) -> PaymentNotice | RefundNotice:
        params = self._notification_params(raw)
        sign = params.get("sign", "")
        if not sign:
            raise _reject("the sign parameter is missing", "sign", "bad-signature")
        if params.get("sign_type", "RSA2") != "RSA2":
            raise _reject("only sign_type RSA2 is accepted", "sign_type", "bad-signature")
        charset = CHARSETS.get(params.get("charset", "utf-8").strip().lower(), "utf-8")
        try:
            content = notify_content(params).encode(charset)
        except UnicodeEncodeError:
            raise _reject(f"the parameters are not {charset}", "charset", "bad-signature") from None
        if not rsa2_verify(self._alipay_key, content, sign):
            raise _reject("sign does not verify under alipay_public_key", "sign", "bad-signature")
        if params.get("app_id") != self._app_id:
            raise _reject(
                f"app_id {params.get('app_id', '')[:32]!r} is not this account's",
                "app_id",
                "app-mismatch",
            )
        if self._seller_id is not None and params.get("seller_id") != self._seller_id:
            raise _reject(
                f"seller_id {params.get('seller_id', '')[:32]!r} is not this account's",
                "seller_id",
                "merchant-mismatch",
            )
        order_no, trade_no = _text(params.get("out_trade_no")), _text(params.get("trade_no"))
        if order_no is None or trade_no is None:
            raise _reject("out_trade_no and trade_no are required (at most 64 chars)", "trade_no")
        refund_fee = to_fen(params["refund_fee"]) if "refund_fee" in params else 0
        if refund_fee is None:
            raise _reject("refund_fee is not an amount in yuan", "refund_fee")
        if params.get("out_biz_no") or params.get("gmt_refund") or refund_fee > 0:
            return self._refund_notice(params, order_no, trade_no, refund_fee)
        status = _STATUSES.get(params.get("trade_status", ""))
        if status is None:
            raise _reject(
                f"trade_status {params.get('trade_status', '')[:32]!r} is unknown",
                "trade_status",
                "not-paid-status",
            )
        amount = to_fen(params.get("total_amount", ""))
        if amount is None:
            raise _reject("total_amount is not an amount in yuan", "total_amount")
        return PaymentNotice(
            gateway=self.name,
            order_no=order_no,
            trade_no=trade_no,
            amount_minor=amount,
            currency="CNY",
            status=status,
            merchant_id=params.get("seller_id") or self._app_id,
        )

    def _refund_notice(
        self, params: Mapping[str, str], order_no: str, trade_no: str, refund_fee: int
    ) -> RefundNotice:
        """The notify only tells the trade's cumulative `refund_fee`. With `out_biz_no` the
        amount of this refund is asked of Alipay (a signed answer), so `amount_minor` is this
        refund's; without it (rare: no refund number echoed) it is the cumulative figure."""
        refund_no = _text(params.get("out_biz_no"))
        amount, status = refund_fee, RefundStatus.SUCCEEDED
        if refund_no is not None:
            probe = RefundRequest(order_no, trade_no, refund_no, 0, 0, "CNY", "")
            try:
                found = self.query_refund(probe)
            except Unavailable as exc:
                raise _reject(
                    f"the refund could not be confirmed with Alipay: {exc.detail}",
                    "out_biz_no",
                    "gateway-unavailable",
                ) from None
            if found.status is not RefundStatus.SUCCEEDED:
                raise _reject(
                    f"Alipay has no completed refund {refund_no!r} on this trade",
                    "out_biz_no",
                    "unknown-refund",
                )
            amount = found.amount_minor
        return RefundNotice(
            gateway=self.name,
            order_no=order_no,
            trade_no=trade_no,
            refund_no=refund_no,
            channel_refund_id=None,
            amount_minor=amount,
            currency="CNY",
            status=status,
            merchant_id=params.get("seller_id") or self._app_id,
        )

    def acknowledge(self, rejection: NotificationRejected | None) -> Ack:
        # A trade that is not (yet) paid cannot become paid by resending the same notification:
        # it is recorded with its reason and answered `success` so Alipay stops retrying.
        if rejection is None or rejection.slug == "not-paid-status":
            return Ack(200, b"success", "text/plain")
        return Ack(400, b"failure", "text/plain")

    # -- queries and refunds -----------------------------------------------------------------------
    def query(self, request: PaymentRequest) -> QueryResult:
        method = "alipay.trade.query"
        answer, body, signed = self._call(method, {"out_trade_no": request.order_no})
        if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            return QueryResult(None, body)  # "no such trade" moves no money, signed or not
        answer, body = self._trusted(method, answer, body, signed)
        if answer.get("code") != "10000":
            raise Unavailable(
                f"Alipay alipay.trade.query: {answer.get('sub_code')}",
                where="alipay",
                slug="gateway-error",
            )
        status = _STATUSES.get(str(answer.get("trade_status")))
        amount = to_fen(answer.get("total_amount"))
        trade_no = _text(answer.get("trade_no"))
        if answer.get("out_trade_no") != request.order_no or None in (status, amount, trade_no):
            return QueryResult(None, body)
        assert status is not None and amount is not None and trade_no is not None
        notice = PaymentNotice(
            gateway=self.name,
            order_no=request.order_no,
            trade_no=trade_no,
            amount_minor=amount,
            currency="CNY",
            status=status,
            merchant_id=self._seller_id or self._app_id,
        )
        return QueryResult(notice, body)

    def refund(self, request: RefundRequest) -> RefundResult:
        if request.currency != "CNY":
            raise Unavailable(
                "Alipay refunds CNY only", where="currency", slug="currency-unsupported"
            )
        biz = {
            "out_trade_no": request.order_no,
            "refund_amount": yuan(request.amount_minor),
            "out_request_no": request.refund_no,
            "refund_reason": request.reason[:256],
        }
        answer, body = self._answer("alipay.trade.refund", biz)
        if answer.get("code") != "10000":
            detail = str(answer.get("sub_msg") or answer.get("sub_code") or "refused")[:200]
            return RefundResult(
                request.refund_no, RefundStatus.FAILED, request.amount_minor, None, body, detail
            )
        if answer.get("out_trade_no") not in (None, request.order_no):
            raise Unavailable("Alipay answered the refund of another trade", where="alipay")
        if answer.get("fund_change") == "Y":
            return RefundResult(
                request.refund_no, RefundStatus.SUCCEEDED, request.amount_minor, None, body
            )
        # fund_change N: this call moved no money, e.g. the retry of a refund already made.
        found = self.query_refund(request)
        if found.status is RefundStatus.SUCCEEDED:
            return found
        return RefundResult(
            request.refund_no, RefundStatus.PROCESSING, request.amount_minor, None, body
        )

    def query_refund(self, request: RefundRequest) -> RefundResult:
        """Alipay's rule: an answer carrying the refund with `refund_status` REFUND_SUCCESS (or
        none) is a completed refund; an answer without it means Alipay never made this refund,
        which is FAILED here (Alipay refunds synchronously, and caps all refunds of a trade at
        its amount, so a later attempt under a new refund number cannot over-refund)."""
        biz = {"out_trade_no": request.order_no, "out_request_no": request.refund_no}
        answer, body = self._answer("alipay.trade.fastpay.refund.query", biz)
        no = request.refund_no
        if answer.get("code") != "10000":
            detail = str(answer.get("sub_msg") or answer.get("sub_code") or "refused")[:200]
            return RefundResult(no, RefundStatus.FAILED, request.amount_minor, None, body, detail)
        amount = to_fen(answer.get("refund_amount")) if "refund_amount" in answer else None
        if answer.get("out_request_no") not in (None, no):
            raise Unavailable("Alipay answered about another refund", where="alipay")
        if amount is not None and answer.get("refund_status") in (None, "", "REFUND_SUCCESS"):
            return RefundResult(no, RefundStatus.SUCCEEDED, amount, None, body)
        detail = "Alipay has no completed refund under this refund number"
        return RefundResult(no, RefundStatus.FAILED, request.amount_minor, None, body, detail)


# -- configuration ---------------------------------------------------------------------------------
def _url(options: Mapping[str, str], option: str, default: str | None) -> str | None:
    value = options.get(option, "").strip() or default
    if value is not None:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{option}: must be an http(s) URL")
    return value


def from_options(name: str, options: Mapping[str, str], public_url: str) -> AlipayGateway:
    for option in SPEC.required:
        if not options.get(option, "").strip():
            raise ValueError(f"{option}: missing")
    app_id = options["app_id"].strip()
    if not (app_id.isascii() and app_id.isdigit() and len(app_id) <= 32):
        raise ValueError("app_id: must be the digits of the app's APPID")
    seller_id = options.get("seller_id", "").strip() or None
    if seller_id is not None and not (seller_id.isascii() and seller_id.isdigit()):
        raise ValueError("seller_id: must be the merchant's 2088… PID (digits)")
    product = options.get("product", "").strip() or "page"
    if product not in PRODUCTS:
        raise ValueError(f"product: must be one of {', '.join(PRODUCTS)}")
    try:
        timeout = float(options.get("timeout", "").strip() or "10")
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= 120:
        raise ValueError("timeout: must be a number of seconds between 0 and 120")
    private = load_private_key(options["app_private_key"])
    public = load_public_key(options["alipay_public_key"])
    if public.public_numbers() == private.public_key().public_numbers():
        raise ValueError(
            "alipay_public_key: this is the app's own public key (应用公钥); "
            "paste the 支付宝公钥 from the console"
        )
    return AlipayGateway(
        name,
        app_id,
        private,
        public,
        public_url,
        seller_id=seller_id,
        product=product,
        gateway_url=_url(options, "gateway_url", GATEWAY_URL) or GATEWAY_URL,
        return_url=_url(options, "return_url", None),
        timeout=timeout,
    )


def warnings(options: Mapping[str, str]) -> list[str]:
    url = options.get("gateway_url", "").strip() or GATEWAY_URL
    found = []
    if urllib.parse.urlsplit(url).scheme == "http":
        found.append("gateway_url is plain http: signed calls and answers travel unencrypted")
    if "alipaydev.com" in urllib.parse.urlsplit(url).netloc:
        found.append("gateway_url is Alipay's sandbox (沙箱): no real money moves")
    return found


SPEC = ChannelSpec(
    channel="alipay",
    required=("app_id", "app_private_key", "alipay_public_key"),
    optional=("seller_id", "product", "gateway_url", "return_url", "timeout"),
    secrets=frozenset({"app_private_key"}),
    build=from_options,
    warnings=warnings,
)
