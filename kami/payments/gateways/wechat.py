"""WeChat Pay API v3 (微信支付), direct merchant: Native (QR), H5 and JSAPI payments, notifications,
order query, refunds.

Every request carries `Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…,nonce_str=…,signature=…,
timestamp=…,serial_no=…`, the signature being SHA256withRSA (PKCS#1 v1.5) with the merchant API key
over `METHOD\\npath?query\\ntimestamp\\nnonce\\nbody\\n`. Answers and notifications are signed by
WeChat over `timestamp\\nnonce\\nbody\\n` (headers Wechatpay-Timestamp/-Nonce/-Signature/-Serial);
the key is chosen by Wechatpay-Serial: a platform certificate's serial (upper-case hex; several
certificates may be configured for rotation) or the id `PUB_KEY_ID_…` of the WeChat Pay public key.
Both forms may be configured at once (WeChat's migration period). Unlike WeChat's SDKs, Kami also
refuses a signature whose timestamp is more than 5 minutes away from now, in either direction, on
notifications and on answers. The notification's `resource` is AES-256-GCM under the APIv3 key.
A 2xx answer must be signed; a 4xx business error is checked when signed (WeChat does not sign
every error, e.g. 401 SIGN_ERROR); 401, 429, 5xx and transport errors raise Unavailable.

The payment instruction per product: Native → kind "qr" with the `weixin://` code_url; H5 →
kind "redirect" to the h5_url (with `redirect_url` back to the order page); JSAPI → kind "jsapi"
with `qr` holding the JSON object to pass as-is to `WeixinJSBridge.invoke("getBrandWCPayRequest",
…)` (appId, timeStamp, nonceStr, package, signType "RSA", paySign).

H5 sends the buyer's IP (`PaymentRequest.payer_ip`, from checkout) as `scene_info.payer_client_ip`,
falling back to the account's `h5_client_ip`; JSAPI needs `payer_openid` (the buyer's openid under
the AppID) and refuses a request without it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import secrets
import string
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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

API_BASE = "https://api.mch.weixin.qq.com"
SCHEME = "WECHATPAY2-SHA256-RSA2048"
TOLERANCE = 300
PRODUCTS = ("native", "h5", "jsapi")
CHINA = timezone(timedelta(hours=8))
_TRADE_STATES = {
    "SUCCESS": TradeStatus.PAID,
    "REFUND": TradeStatus.REFUNDED,
    "NOTPAY": TradeStatus.PENDING,
    "USERPAYING": TradeStatus.PENDING,
    "CLOSED": TradeStatus.CLOSED,
    "REVOKED": TradeStatus.CLOSED,
    "PAYERROR": TradeStatus.CLOSED,
}
_REFUND_STATES = {
    "SUCCESS": RefundStatus.SUCCEEDED,
    "PROCESSING": RefundStatus.PROCESSING,
    "ABNORMAL": RefundStatus.FAILED,
    "CLOSED": RefundStatus.FAILED,
}
_REFUND_EVENTS = ("REFUND.SUCCESS", "REFUND.ABNORMAL", "REFUND.CLOSED")


def sign(key: RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def signed_message(*lines: str | bytes) -> bytes:
    """WeChat's signing string: every line, the last included, terminated by a newline."""
    return b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)


def serial_of(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "X")


def _failure(detail: str, slug: str = "gateway-error") -> Unavailable:
    return Unavailable(detail, where="wechat", slug=slug)


def _malformed(detail: str, where: str) -> NotificationRejected:
    return NotificationRejected(detail, where=where, slug="malformed-notification")


def _text(obj: Mapping[str, Any], name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value or len(value) > 64 or not value.isprintable():
        raise _malformed(f"{name} must be a non-empty printable string", f"{where}.{name}")
    return value


def _fen(obj: Mapping[str, Any], name: str, where: str) -> int:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _malformed(f"{name} must be a non-negative integer of fen", f"{where}.{name}")
    return value


def _amount(data: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    amount = data.get("amount")
    if not isinstance(amount, dict):
        raise _malformed("amount must be an object", f"{where}.amount")
    return amount


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """WeChat Pay's API never redirects; following one would send signed requests elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WechatGateway:
    refund_idempotent = True  # out_refund_no
    currencies: frozenset[str] | None = frozenset({"CNY"})

    def __init__(
        self,
        name: str,
        *,
        mchid: str,
        appid: str,
        apiv3_key: str,
        merchant_key: RSAPrivateKey,
        merchant_serial_no: str,
        public_url: str,
        certificates: Mapping[int, RSAPublicKey] | None = None,
        public_keys: Mapping[str, RSAPublicKey] | None = None,
        product: str = "native",
        api_base: str = API_BASE,
        h5_client_ip: str | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not certificates and not public_keys:
            raise ValueError("platform_certificate: a platform certificate or public key is needed")
        if product not in PRODUCTS:
            raise ValueError(f"product: must be one of {', '.join(PRODUCTS)}")
        self.name = name
        self._mchid = mchid
        self._appid = appid
        self._aes = AESGCM(apiv3_key.encode())
        self._key = merchant_key
        self._serial = merchant_serial_no
        self._certificates = dict(certificates or {})
        self._public_keys = dict(public_keys or {})
        self._product = product
        self._api_base = api_base.rstrip("/")
        self._public_url = public_url.rstrip("/")
        self._h5_client_ip = h5_client_ip
        self._timeout = timeout
        self._clock = clock
        self._opener = urllib.request.build_opener(_NoRedirect)

    @property
    def notify_url(self) -> str:
        return f"{self._public_url}/api/v1/payments/{self.name}/notify"

    # -- WeChat's signatures (notifications and answers) ---------------------------------------
    def _platform_key(self, serial: str, where: str) -> RSAPublicKey:
        key = self._public_keys.get(serial)
        if key is None and 0 < len(serial) <= 64:
            try:
                key = self._certificates.get(int(serial, 16))
            except ValueError:
                key = None
        if key is None:
            raise NotificationRejected(
                f"Wechatpay-Serial {serial[:70]!r} is neither a configured platform certificate's "
                "serial nor the configured WeChat Pay public key id",
                where=where,
                slug="unknown-serial",
            )
        return key

    def _check_signature(
        self, headers: Mapping[str, str], body: bytes, *, typed: bool = True
    ) -> None:
        # Notifications always name the signature type; API answers may leave it out.
        kind = headers.get("wechatpay-signature-type", "" if typed else SCHEME)
        if kind != SCHEME:
            raise NotificationRejected(
                f"signature type {kind[:40]!r} is not {SCHEME}",
                where="Wechatpay-Signature-Type",
                slug="bad-signature",
            )
        stamp = headers.get("wechatpay-timestamp", "")
        nonce = headers.get("wechatpay-nonce", "")
        given = headers.get("wechatpay-signature", "")
        serial = headers.get("wechatpay-serial", "")
        if not (stamp and nonce and given and serial):
            raise NotificationRejected(
                "a Wechatpay-Timestamp, -Nonce, -Signature or -Serial header is missing",
                where="Wechatpay-Signature",
                slug="bad-signature",
            )
        key = self._platform_key(serial, "Wechatpay-Serial")
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise NotificationRejected(
                "Wechatpay-Timestamp must be unix seconds",
                where="Wechatpay-Timestamp",
                slug="bad-signature",
            )
        try:
            signature = base64.b64decode(given, validate=True)
            key.verify(
                signature, signed_message(stamp, nonce, body), padding.PKCS1v15(), hashes.SHA256()
            )
        except (binascii.Error, ValueError, InvalidSignature):
            raise NotificationRejected(
                "Wechatpay-Signature does not verify over the timestamp, nonce and body "
                f"with the key of serial {serial[:70]!r}",
                where="Wechatpay-Signature",
                slug="bad-signature",
            ) from None
        skew = int(stamp) - self._clock()
        if abs(skew) > TOLERANCE:
            when = "in the future" if skew > 0 else "old"
            raise NotificationRejected(
                f"Wechatpay-Timestamp {stamp} is {abs(int(skew))} s {when}; "
                f"the tolerance is {TOLERANCE} s",
                where="Wechatpay-Timestamp",
                slug="stale-timestamp",
            )

    # -- notifications -------------------------------------------------------------------------
    def verify_notification(self, raw: RawNotification) -> PaymentNotice | RefundNotice:
        if raw.method != "POST":
            raise _malformed("WeChat Pay notifies with POST", "method")
        self._check_signature(raw.headers, raw.body)
        try:
            event: Any = json.loads(raw.body)
        except ValueError:
            raise _malformed("body is not JSON", "body") from None
        if not isinstance(event, dict) or not isinstance(event.get("event_type"), str):
            raise _malformed("body must be an object with an event_type", "event_type")
        kind: str = event["event_type"]
        if kind != "TRANSACTION.SUCCESS" and kind not in _REFUND_EVENTS:
            raise NotificationRejected(
                f"event type {kind[:40]!r} is not handled",
                where="event_type",
                slug="unsupported-event",
            )
        data = self._decrypt(event.get("resource"))
        if kind == "TRANSACTION.SUCCESS":
            return self._transaction(data, "resource")
        return self._refund_notice(data)

    def _decrypt(self, resource: Any) -> dict[str, Any]:
        if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise _malformed("resource must be an AEAD_AES_256_GCM object", "resource")
        nonce, text, extra = (resource.get(k) for k in ("nonce", "ciphertext", "associated_data"))
        if not isinstance(nonce, str) or not isinstance(text, str):
            raise _malformed("resource needs a nonce and a ciphertext", "resource")
        try:
            plain = self._aes.decrypt(
                nonce.encode(), base64.b64decode(text, validate=True), str(extra or "").encode()
            )
            data: Any = json.loads(plain)
        except (binascii.Error, ValueError, InvalidTag):
            raise NotificationRejected(
                "resource does not decrypt under the APIv3 key (wrong apiv3_key, or altered)",
                where="resource.ciphertext",
                slug="undecryptable",
            ) from None
        if not isinstance(data, dict):
            raise _malformed("the decrypted resource is not an object", "resource")
        return data

    def _merchant(self, data: Mapping[str, Any], where: str, *, app: bool) -> None:
        mchid = data.get("mchid")
        if not isinstance(mchid, str) or not hmac.compare_digest(mchid, self._mchid):
            raise NotificationRejected(
                f"mchid {str(mchid)[:40]!r} is not this account's",
                where=f"{where}.mchid",
                slug="merchant-mismatch",
            )
        appid = data.get("appid")
        if app and (not isinstance(appid, str) or not hmac.compare_digest(appid, self._appid)):
            raise NotificationRejected(
                f"appid {str(appid)[:40]!r} is not this account's",
                where=f"{where}.appid",
                slug="app-mismatch",
            )

    def _transaction(self, data: Mapping[str, Any], where: str) -> PaymentNotice:
        self._merchant(data, where, app=True)
        state = data.get("trade_state")
        status = _TRADE_STATES.get(state) if isinstance(state, str) else None
        if status is None:
            raise _malformed(f"trade_state {str(state)[:20]!r} is unknown", f"{where}.trade_state")
        amount = _amount(data, where)
        return PaymentNotice(
            gateway=self.name,
            order_no=_text(data, "out_trade_no", where),
            trade_no=_text(data, "transaction_id", where),
            amount_minor=_fen(amount, "total", f"{where}.amount"),
            currency=str(amount.get("currency") or "CNY")[:3],
            status=status,
            merchant_id=self._mchid,
        )

    def _refund_notice(self, data: Mapping[str, Any]) -> RefundNotice:
        self._merchant(data, "resource", app=False)
        state = data.get("refund_status")
        status = _REFUND_STATES.get(state) if isinstance(state, str) else None
        if status is None:
            raise _malformed(f"refund_status {str(state)[:20]!r} is unknown", "refund_status")
        amount = _amount(data, "resource")
        return RefundNotice(
            gateway=self.name,
            order_no=_text(data, "out_trade_no", "resource"),
            trade_no=_text(data, "transaction_id", "resource"),
            refund_no=_text(data, "out_refund_no", "resource"),
            channel_refund_id=_text(data, "refund_id", "resource"),
            amount_minor=_fen(amount, "refund", "resource.amount"),
            currency=str(amount.get("currency") or "CNY")[:3],
            status=status,
            merchant_id=self._mchid,
        )

    def acknowledge(self, rejection: NotificationRejected | None) -> Ack:
        # A payment that is not (yet) SUCCESS or an event Kami does not act on is acknowledged so
        # WeChat stops retrying a message that cannot change; it is recorded with its reason.
        if rejection is None or rejection.slug in ("not-paid-status", "unsupported-event"):
            return Ack(204, b"", "text/plain")
        # Only the slug goes back: the detail stays in Kami's record of the notification.
        body = {"code": "FAIL", "message": f"rejected: {rejection.slug}"}
        return Ack(400, json.dumps(body).encode(), "application/json")

    # -- API calls -----------------------------------------------------------------------------
    def authorization(self, method: str, url: str, body: bytes) -> str:
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        stamp, nonce = str(int(self._clock())), secrets.token_hex(16).upper()
        signature = sign(self._key, signed_message(method, target, stamp, nonce, body))
        return (
            f'{SCHEME} mchid="{self._mchid}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{stamp}",serial_no="{self._serial}"'
        )

    def _call(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any], str]:
        """Send a signed request; answer (status, JSON object, text) for a 2xx or a business
        error (4xx but 401/429), each with a valid signature when one is present (2xx: always)."""
        body = json.dumps(payload, ensure_ascii=False).encode() if payload is not None else b""
        url = f"{self._api_base}{path}"
        headers = {
            "Authorization": self.authorization(method, url, body),
            "Accept": "application/json",
            "User-Agent": "kami-wechatpay",
        }
        if body:
            headers["Content-Type"] = "application/json"
        if self._public_keys:  # so WeChat signs its answer with the public key's pair
            headers["Wechatpay-Serial"] = next(iter(self._public_keys))
        request = urllib.request.Request(url, body or None, headers, method=method)  # noqa: S310
        where = f"{method} {path.split('?')[0]}"
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                status, answer, raw = response.status, response.headers, response.read(1 << 20)
        except urllib.error.HTTPError as exc:
            status, answer, raw = exc.code, exc.headers, exc.read(1 << 20)
        except OSError as exc:
            raise _failure(
                f"WeChat Pay could not be reached for {where}: {type(exc).__name__}",
                "gateway-unavailable",
            ) from None
        text = raw.decode("utf-8", "replace")
        try:
            data: Any = json.loads(text) if text else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        if not 200 <= status < 500 or status in (401, 429):
            code, message = str(data.get("code", ""))[:40], str(data.get("message", ""))[:200]
            raise _failure(
                f"WeChat Pay answered {where} with HTTP {status} {code}: {message}".rstrip(": ")
            )
        lower = {k.lower(): v for k, v in answer.items()}
        if 200 <= status < 300 or "wechatpay-signature" in lower:
            try:
                self._check_signature(lower, raw, typed=False)
            except NotificationRejected as exc:
                raise _failure(
                    f"WeChat Pay's answer to {where} is not trustworthy: {exc.detail}",
                    "bad-response-signature",
                ) from None
        return status, data, text

    def _business_error(self, data: Mapping[str, Any]) -> str:
        return f"{str(data.get('code', 'ERROR'))[:40]}: {str(data.get('message', ''))[:200]}"

    def create_payment(self, request: PaymentRequest) -> PaymentInstruction:
        if request.currency != "CNY":
            raise Unavailable(
                "WeChat Pay takes CNY only", where="currency", slug="currency-unsupported"
            )
        payload: dict[str, Any] = {
            "appid": self._appid,
            "mchid": self._mchid,
            "description": request.subject.encode()[:127].decode(errors="ignore")
            or request.order_no,
            "out_trade_no": request.order_no,
            "time_expire": request.expires_at.astimezone(CHINA).isoformat(timespec="seconds"),
            "notify_url": self.notify_url,
            "amount": {"total": request.amount_minor, "currency": "CNY"},
        }
        if self._product == "h5":
            payer_ip = request.payer_ip or self._h5_client_ip
            payload["scene_info"] = {"payer_client_ip": payer_ip, "h5_info": {"type": "Wap"}}
        openid = request.payer_openid
        if self._product == "jsapi":
            if not isinstance(openid, str) or not openid:
                raise Unavailable(
                    "WeChat Pay JSAPI needs the buyer's openid, which this order does not carry",
                    where="product",
                    slug="payer-required",
                )
            payload["payer"] = {"openid": openid}
        status, data, _ = self._call("POST", f"/v3/pay/transactions/{self._product}", payload)
        if status != 200:
            raise _failure(f"WeChat Pay refused the order: {self._business_error(data)}")
        if self._product == "native":
            return PaymentInstruction(kind="qr", qr=self._answer(data, "code_url", "weixin://"))
        if self._product == "h5":
            url = self._answer(data, "h5_url", "https://")
            back = urllib.parse.quote(f"{self._public_url}/orders/{request.order_no}", safe="")
            joint = "&" if "?" in url else "?"
            return PaymentInstruction(kind="redirect", url=f"{url}{joint}redirect_url={back}")
        return PaymentInstruction(
            kind="jsapi", qr=self.jsapi_parameters(self._answer(data, "prepay_id", ""))
        )

    @staticmethod
    def _answer(data: Mapping[str, Any], name: str, prefix: str) -> str:
        value = data.get(name)
        if not isinstance(value, str) or not value.startswith(prefix) or len(value) <= len(prefix):
            raise _failure(f"WeChat Pay created the order without a usable {name}")
        return value

    def jsapi_parameters(self, prepay_id: str) -> str:
        """The getBrandWCPayRequest object for a prepay_id, signed with the merchant key."""
        stamp, nonce = str(int(self._clock())), secrets.token_hex(16)
        package = f"prepay_id={prepay_id}"
        pay_sign = sign(self._key, signed_message(self._appid, stamp, nonce, package))
        params = {
            "appId": self._appid,
            "timeStamp": stamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": pay_sign,
        }
        return json.dumps(params, separators=(",", ":"))

    def query(self, request: PaymentRequest) -> QueryResult:
        order = urllib.parse.quote(request.order_no, safe="")
        mchid = urllib.parse.quote(self._mchid, safe="")
        path = f"/v3/pay/transactions/out-trade-no/{order}?mchid={mchid}"
        status, data, text = self._call("GET", path)
        if status == 404 or (status != 200 and data.get("code") == "ORDER_NOT_EXIST"):
            return QueryResult(None, text)
        if status != 200:
            raise _failure(f"WeChat Pay refused the query: {self._business_error(data)}")
        if not data.get("transaction_id"):  # created but never paid: no WeChat trade yet
            return QueryResult(None, text)
        try:
            notice = self._transaction(data, "answer")
        except NotificationRejected as exc:
            raise _failure(f"WeChat Pay's answer to the query is unusable: {exc}") from None
        if notice.order_no != request.order_no:
            raise _failure("WeChat Pay answered the query about another order")
        return QueryResult(notice, text)

    # -- refunds -------------------------------------------------------------------------------
    def refund(self, request: RefundRequest) -> RefundResult:
        payload: dict[str, Any] = {
            "out_trade_no": request.order_no,
            "out_refund_no": request.refund_no,
            "notify_url": self.notify_url,
            "amount": {
                "refund": request.amount_minor,
                "total": request.order_amount_minor,
                "currency": request.currency,
            },
        }
        if request.reason:
            payload["reason"] = request.reason[:80]
        status, data, text = self._call("POST", "/v3/refund/domestic/refunds", payload)
        if status >= 400:  # _call raised for 401, 429 and 5xx: the outcome of those is unknown
            # A business refusal (NOT_ENOUGH, INVALID_REQUEST, ORDER_NOT_EXIST …): nothing moved.
            return RefundResult(
                request.refund_no,
                RefundStatus.FAILED,
                request.amount_minor,
                None,
                text,
                self._business_error(data),
            )
        return self._refund_result(request, data, text)

    def query_refund(self, request: RefundRequest) -> RefundResult:
        path = f"/v3/refund/domestic/refunds/{urllib.parse.quote(request.refund_no, safe='')}"
        status, data, text = self._call("GET", path)
        if status == 404:
            # WeChat records a refund when it accepts the request: none means it never did.
            detail = f"WeChat Pay has no refund {request.refund_no}: {self._business_error(data)}"
            return RefundResult(
                request.refund_no, RefundStatus.FAILED, request.amount_minor, None, text, detail
            )
        if status != 200:
            raise _failure(f"WeChat Pay refused the refund query: {self._business_error(data)}")
        return self._refund_result(request, data, text)

    def _refund_result(
        self, request: RefundRequest, data: dict[str, Any], text: str
    ) -> RefundResult:
        state = data.get("status")
        status = _REFUND_STATES.get(state) if isinstance(state, str) else None
        try:
            if status is None:
                raise _malformed(f"refund status {str(state)[:20]!r} is unknown", "status")
            if _text(data, "out_refund_no", "answer") != request.refund_no:
                raise _malformed("the answer is about another refund", "out_refund_no")
            refund_id = _text(data, "refund_id", "answer")
            amount = _fen(_amount(data, "answer"), "refund", "answer.amount")
        except NotificationRejected as exc:
            raise _failure(f"WeChat Pay's refund answer is unusable: {exc}") from None
        detail = None
        if state == "ABNORMAL":
            detail = (
                "ABNORMAL: the buyer's account could not take the money; see the WeChat Pay console"
            )
        elif state == "CLOSED":
            detail = "CLOSED: WeChat Pay closed the refund"
        return RefundResult(request.refund_no, status, amount, refund_id, text, detail)


# -- configuration -----------------------------------------------------------------------------
def _private_key(pem: str) -> RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.strip().encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, RSAPrivateKey) or key.key_size < 2048:
        raise ValueError(
            "merchant_private_key: not a PEM RSA private key of at least 2048 bits "
            "(the apiclient_key.pem of the merchant API certificate)"
        )
    return key


def _certificates(pem: str) -> list[tuple[x509.Certificate, RSAPublicKey]]:
    try:
        certificates = x509.load_pem_x509_certificates(pem.strip().encode())
    except ValueError:
        certificates = []
    if not certificates or pem.count("-----BEGIN CERTIFICATE-----") != len(certificates):
        raise ValueError(
            "platform_certificate: not one or more PEM X.509 certificates "
            "(-----BEGIN CERTIFICATE----- …)"
        )
    found = []
    for certificate in certificates:
        public = certificate.public_key()
        if not isinstance(public, RSAPublicKey):
            raise ValueError(
                f"platform_certificate: certificate {serial_of(certificate)} has no RSA key"
            )
        found.append((certificate, public))
    return found


def _public_key(pem: str) -> RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem.strip().encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, RSAPublicKey):
        raise ValueError(
            "wechatpay_public_key: not a PEM RSA public key (-----BEGIN PUBLIC KEY----- …)"
        )
    return key


def _same(a: RSAPublicKey, b: RSAPublicKey) -> bool:
    return a.public_numbers() == b.public_numbers()


def from_options(name: str, options: Mapping[str, str], public_url: str) -> WechatGateway:
    def get(option: str) -> str:
        return (options.get(option) or "").strip()

    mchid, appid, serial = get("mchid"), get("appid"), get("merchant_serial_no")
    if not (mchid.isascii() and mchid.isdigit() and len(mchid) <= 32):
        raise ValueError("mchid: must be the merchant number (digits), e.g. 1900000109")
    if not (appid.isascii() and appid.isalnum() and len(appid) <= 32):
        raise ValueError("appid: must be the AppID bound to the merchant, e.g. wxd678efh567hg6787")
    apiv3_key = options.get("apiv3_key") or ""
    if len(apiv3_key.encode()) != 32:
        raise ValueError(
            f"apiv3_key: must be exactly 32 bytes (the APIv3 key), not {len(apiv3_key.encode())}"
        )
    key = _private_key(options.get("merchant_private_key") or "")
    if not serial or len(serial) > 64 or any(c not in string.hexdigits for c in serial):
        raise ValueError(
            "merchant_serial_no: must be the merchant API certificate's serial number in hex"
        )
    certificates: dict[int, RSAPublicKey] = {}
    if get("platform_certificate"):
        for certificate, public in _certificates(get("platform_certificate")):
            if _same(public, key.public_key()):
                raise ValueError(
                    f"platform_certificate: certificate {serial_of(certificate)} holds the public "
                    "half of merchant_private_key: that is the merchant's own apiclient_cert.pem, "
                    "not a WeChat Pay platform certificate"
                )
            certificates[certificate.serial_number] = public
    public_keys: dict[str, RSAPublicKey] = {}
    key_id = get("wechatpay_public_key_id")
    if get("wechatpay_public_key") or key_id:
        if not key_id.startswith("PUB_KEY_ID_") or not key_id.isprintable():
            raise ValueError("wechatpay_public_key_id: must be the key's id, PUB_KEY_ID_…")
        if not get("wechatpay_public_key"):
            raise ValueError("wechatpay_public_key: missing (wechatpay_public_key_id is given)")
        public = _public_key(get("wechatpay_public_key"))
        if _same(public, key.public_key()):
            raise ValueError(
                "wechatpay_public_key: is the public half of merchant_private_key, not the "
                "WeChat Pay public key (pub_key.pem from the merchant platform)"
            )
        public_keys[key_id] = public
    if not certificates and not public_keys:
        raise ValueError(
            "platform_certificate: give platform_certificate, or wechatpay_public_key with "
            "wechatpay_public_key_id, to verify WeChat Pay's signatures"
        )
    product = get("product") or "native"
    if product not in PRODUCTS:
        raise ValueError(f"product: must be one of {', '.join(PRODUCTS)}, not {product[:20]!r}")
    api_base = get("api_base") or API_BASE
    if urllib.parse.urlsplit(api_base).scheme not in ("http", "https"):
        raise ValueError("api_base: must be an http(s) URL")
    client_ip = get("h5_client_ip") or None
    if client_ip is not None:
        try:
            ipaddress.ip_address(client_ip)
        except ValueError:
            raise ValueError("h5_client_ip: must be an IP address") from None
    elif product == "h5":
        raise ValueError(
            "h5_client_ip: required for product h5 (WeChat wants scene_info.payer_client_ip)"
        )
    try:
        timeout = float(get("timeout") or "10")
    except ValueError:
        timeout = 0.0
    if not 0 < timeout <= 120:
        raise ValueError("timeout: must be a number of seconds between 0 and 120")
    return WechatGateway(
        name,
        mchid=mchid,
        appid=appid,
        apiv3_key=apiv3_key,
        merchant_key=key,
        merchant_serial_no=serial.upper(),
        public_url=public_url,
        certificates=certificates,
        public_keys=public_keys,
        product=product,
        api_base=api_base,
        h5_client_ip=client_ip,
        timeout=timeout,
    )


def remarks(options: Mapping[str, str]) -> list[str]:
    """Non-fatal remarks for `kami gateways check`."""
    found = []
    now = datetime.now(UTC)
    try:
        certificates = _certificates(options.get("platform_certificate") or "")
    except ValueError:
        certificates = []
    for certificate, _ in certificates:
        if certificate.not_valid_after_utc < now:
            found.append(
                f"platform_certificate: certificate {serial_of(certificate)} expired on "
                f"{certificate.not_valid_after_utc:%Y-%m-%d}; download the current one"
            )
        elif certificate.not_valid_before_utc > now:
            found.append(
                f"platform_certificate: certificate {serial_of(certificate)} is not valid "
                f"before {certificate.not_valid_before_utc:%Y-%m-%d}"
            )
    if (options.get("product") or "").strip() == "h5":
        found.append(
            "h5_client_ip: every H5 order reports this address as the buyer's, not the real one"
        )
    if urllib.parse.urlsplit(options.get("api_base") or API_BASE).scheme != "https":
        found.append("api_base: not https")
    return found


SPEC = ChannelSpec(
    channel="wechat",
    required=("mchid", "appid", "apiv3_key", "merchant_private_key", "merchant_serial_no"),
    optional=(
        "platform_certificate",
        "wechatpay_public_key",
        "wechatpay_public_key_id",
        "product",
        "api_base",
        "h5_client_ip",
        "timeout",
    ),
    secrets=frozenset({"apiv3_key", "merchant_private_key"}),
    build=from_options,
    warnings=remarks,
)
