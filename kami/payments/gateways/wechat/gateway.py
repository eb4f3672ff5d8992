"""WeChat Pay as a Kami gateway: Native, H5 and JSAPI orders, notifications, query, refunds."""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import timedelta, timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kami.kernel.errors import Unavailable
from kami.payments.gateways.base import (
    Ack,
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
)
from kami.payments.gateways.wechat.client import WechatClient, business_error, failure
from kami.payments.gateways.wechat.payloads import (
    REFUND_EVENTS,
    REFUND_STATES,
    Account,
    amount_of,
    decrypt,
    fen_field,
    malformed,
    text_field,
)
from kami.payments.gateways.wechat.signing import PlatformKeys, sign, signed_message

API_BASE = "https://api.mch.weixin.qq.com"
PRODUCTS = ("native", "h5", "jsapi")
CHINA = timezone(timedelta(hours=8))


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
        self._key = merchant_key  # signs the JSAPI parameters
        self._platform = PlatformKeys(certificates, public_keys)
        self._account = Account(name, mchid, appid)
        self._product = product
        self._public_url = public_url.rstrip("/")
        self._h5_client_ip = h5_client_ip
        self._clock = clock
        self._api = WechatClient(
            mchid=mchid,
            merchant_key=merchant_key,
            merchant_serial_no=merchant_serial_no,
            platform=self._platform,
            api_base=api_base,
            timeout=timeout,
            clock=clock,
        )

    @property
    def notify_url(self) -> str:
        return f"{self._public_url}/api/v1/payments/{self.name}/notify"

    # -- notifications -------------------------------------------------------------------------
    def verify_notification(self, raw: RawNotification) -> PaymentNotice | RefundNotice:
        if raw.method != "POST":
            raise malformed("WeChat Pay notifies with POST", "method")
        self._platform.check(raw.headers, raw.body, self._clock)
        try:
            event: Any = json.loads(raw.body)
        except ValueError:
            raise malformed("body is not JSON", "body") from None
        if not isinstance(event, dict) or not isinstance(event.get("event_type"), str):
            raise malformed("body must be an object with an event_type", "event_type")
        kind: str = event["event_type"]
        if kind != "TRANSACTION.SUCCESS" and kind not in REFUND_EVENTS:
            raise NotificationRejected(
                f"event type {kind[:40]!r} is not handled",
                where="event_type",
                slug="unsupported-event",
            )
        data = decrypt(self._aes, event.get("resource"))
        if kind == "TRANSACTION.SUCCESS":
            return self._account.transaction(data, "resource")
        return self._account.refund_notice(data)

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
        """The Authorization header of a request, signed with the merchant API key."""
        return self._api.authorization(method, url, body)

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
        status, data, _ = self._api.call("POST", f"/v3/pay/transactions/{self._product}", payload)
        if status != 200:
            raise failure(f"WeChat Pay refused the order: {business_error(data)}")
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
            raise failure(f"WeChat Pay created the order without a usable {name}")
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
        status, data, text = self._api.call("GET", path)
        if status == 404 or (status != 200 and data.get("code") == "ORDER_NOT_EXIST"):
            return QueryResult(None, text)
        if status != 200:
            raise failure(f"WeChat Pay refused the query: {business_error(data)}")
        if not data.get("transaction_id"):  # created but never paid: no WeChat trade yet
            return QueryResult(None, text)
        try:
            notice = self._account.transaction(data, "answer")
        except NotificationRejected as exc:
            raise failure(f"WeChat Pay's answer to the query is unusable: {exc}") from None
        if notice.order_no != request.order_no:
            raise failure("WeChat Pay answered the query about another order")
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
        status, data, text = self._api.call("POST", "/v3/refund/domestic/refunds", payload)
        if status >= 400:  # _call raised for 401, 429 and 5xx: the outcome of those is unknown
            # A business refusal (NOT_ENOUGH, INVALID_REQUEST, ORDER_NOT_EXIST …): nothing moved.
            return RefundResult(
                request.refund_no,
                RefundStatus.FAILED,
                request.amount_minor,
                None,
                text,
                business_error(data),
            )
        return self._refund_result(request, data, text)

    def query_refund(self, request: RefundRequest) -> RefundResult:
        path = f"/v3/refund/domestic/refunds/{urllib.parse.quote(request.refund_no, safe='')}"
        status, data, text = self._api.call("GET", path)
        if status == 404:
            # WeChat records a refund when it accepts the request: none means it never did.
            detail = f"WeChat Pay has no refund {request.refund_no}: {business_error(data)}"
            return RefundResult(
                request.refund_no, RefundStatus.FAILED, request.amount_minor, None, text, detail
            )
        if status != 200:
            raise failure(f"WeChat Pay refused the refund query: {business_error(data)}")
        return self._refund_result(request, data, text)

    def _refund_result(
        self, request: RefundRequest, data: dict[str, Any], text: str
    ) -> RefundResult:
        state = data.get("status")
        status = REFUND_STATES.get(state) if isinstance(state, str) else None
        try:
            if status is None:
                raise malformed(f"refund status {str(state)[:20]!r} is unknown", "status")
            if text_field(data, "out_refund_no", "answer") != request.refund_no:
                raise malformed("the answer is about another refund", "out_refund_no")
            refund_id = text_field(data, "refund_id", "answer")
            amount = fen_field(amount_of(data, "answer"), "refund", "answer.amount")
        except NotificationRejected as exc:
            raise failure(f"WeChat Pay's refund answer is unusable: {exc}") from None
        detail = None
        if state == "ABNORMAL":
            detail = (
                "ABNORMAL: the buyer's account could not take the money; see the WeChat Pay console"
            )
        elif state == "CLOSED":
            detail = "CLOSED: WeChat Pay closed the refund"
        return RefundResult(request.refund_no, status, amount, refund_id, text, detail)
