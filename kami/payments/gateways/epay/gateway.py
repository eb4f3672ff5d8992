"""易支付 (epay, the 彩虹易支付 protocol), version 1: MD5-signed requests and notifications.

Signing, exactly as the gateway's PHP reference does it: drop `sign`, `sign_type` and every empty
value; sort by key; join `k=v` with `&` using the raw (decoded, untrimmed) values; append the
merchant key directly; lower-case hex MD5. Only `trade_status=TRADE_SUCCESS` means paid. The reply
the gateway waits for is the bare word `success`; anything else makes it retry.

The query (`api.php?act=order`) carries the merchant key in the URL, as the protocol requires:
configure the gateway's base URL with https.

Refunds (`api.php?act=refund`, POST pid, key, trade_no or out_trade_no, money → `{"code":1}`)
exist on many builds but not all, so an account enables them with the option `refund = true`;
otherwise refund() raises RefundUnsupported and the seller refunds in the gateway's merchant
console. V1 refunds carry no refund number, so the gateway cannot recognise a resent request:
sending one twice refunds twice. Kami's side is therefore built never to resend: when the
request went out but no clear answer came back (time-out, dropped connection, an HTTP error,
non-JSON), refund() does not raise — it returns PROCESSING with the detail "outcome unknown:
check the merchant console", which the refund flow keeps as it is (`refund_idempotent` is False,
so it must not call refund() again for that refund). There is no refund query either:
query_refund() raises RefundUnsupported, and the operator settles such a refund from the
merchant console.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kami.kernel.errors import Unavailable
from kami.payments.gateways.amounts import yuan
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
    RefundUnsupported,
    TradeStatus,
)
from kami.payments.gateways.epay.protocol import (
    MAX_RESPONSE,
    acknowledge,
    check_base_url,
    check_pay_type,
    check_pid,
    check_required,
    fen,
    notification_params,
    payment_notice,
    payment_params,
    refused_refund,
    sign_content,
    trade_reference,
)
from kami.payments.gateways.transport import opener

OUTCOME_UNKNOWN = "outcome unknown: check the merchant console"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


def sign(params: Mapping[str, str], key: str) -> str:
    text = sign_content(params) + key
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class EpayGateway:
    # V1 refunds have no refund number: a resent refund is a second refund (see the docstring).
    refund_idempotent = False
    currencies: frozenset[str] | None = frozenset({"CNY"})

    def __init__(
        self,
        base_url: str,
        pid: str,
        key: str,
        public_url: str,
        *,
        name: str = "epay",
        pay_type: str | None = None,
        refund: bool = False,
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
        self._refund = refund
        self._timeout = timeout
        self._opener = opener()

    def create_payment(self, request: PaymentRequest) -> PaymentInstruction:
        details = payment_params(self.name, self._public_url, request, self._type)
        params = {"pid": self._pid, **details}
        params["sign"] = sign(params, self._key)
        params["sign_type"] = "MD5"
        return PaymentInstruction(
            kind="redirect", url=f"{self._base}/submit.php?{urllib.parse.urlencode(params)}"
        )

    def verify_notification(self, raw: RawNotification) -> PaymentNotice:
        params = notification_params(raw)
        given = params.get("sign", "")
        if not given:
            raise NotificationRejected(
                "the sign parameter is missing", where="sign", slug="bad-signature"
            )
        if not hmac.compare_digest(given.lower().encode(), sign(params, self._key).encode()):
            raise NotificationRejected(
                "sign does not match the parameters", where="sign", slug="bad-signature"
            )
        return payment_notice(self.name, self._pid, params)

    def acknowledge(self, rejection: NotificationRejected | None) -> Ack:
        return acknowledge(rejection)

    def query(self, request: PaymentRequest) -> QueryResult:
        params = {
            "act": "order",
            "pid": self._pid,
            "key": self._key,
            "out_trade_no": request.order_no,
        }
        url = f"{self._base}/api.php?{urllib.parse.urlencode(params)}"
        try:
            with self._opener.open(url, timeout=self._timeout) as resp:
                text = resp.read(MAX_RESPONSE).decode("utf-8", errors="replace")
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

    # -- refunds -------------------------------------------------------------------------------
    def _unsupported(self, what: str) -> RefundUnsupported:
        return RefundUnsupported(
            f"{what}; refund the order in the 易支付 gateway's merchant console",
            where=self.name,
        )

    def refund(self, request: RefundRequest) -> RefundResult:
        """One POST to `api.php?act=refund`, never repeated here (see the module docstring)."""
        if not self._refund:
            raise self._unsupported(
                f"refunds through the API are not enabled for account {self.name} "
                "(set refund = true only if the gateway supports api.php?act=refund)"
            )
        refused = refused_refund(request)
        if refused is not None:
            return refused
        params = {
            "pid": self._pid,
            "key": self._key,
            "money": yuan(request.amount_minor),
            **trade_reference(request),
        }
        # The key goes in the form body, not the URL, so it stays out of access logs.
        http = urllib.request.Request(  # noqa: S310 (scheme checked in __init__)
            f"{self._base}/api.php?act=refund",
            data=urllib.parse.urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        unknown = RefundResult(
            request.refund_no,
            RefundStatus.PROCESSING,
            request.amount_minor,
            None,
            raw="",
            detail=OUTCOME_UNKNOWN,
        )
        try:
            with self._opener.open(http, timeout=self._timeout) as resp:
                text = resp.read(MAX_RESPONSE).decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            answer = exc.read(2000).decode("utf-8", errors="replace")
            return replace(unknown, raw=f"HTTP {exc.code}: {answer}")
        except (OSError, ValueError):
            return unknown
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict) or "code" not in data:
            return replace(unknown, raw=text)
        if str(data.get("code")) == "1":
            return RefundResult(
                request.refund_no, RefundStatus.SUCCEEDED, request.amount_minor, None, text
            )
        message = str(data.get("msg") or "refused without a message")[:500]
        return RefundResult(
            request.refund_no, RefundStatus.FAILED, request.amount_minor, None, text, message
        )

    def query_refund(self, request: RefundRequest) -> RefundResult:
        raise self._unsupported(
            f"易支付 V1 has no refund query, so refund {request.refund_no} cannot be checked"
        )


# -- configuration ---------------------------------------------------------------------------
def check_flag(options: Mapping[str, str], option: str) -> bool:
    text = options.get(option, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{option}: must be true or false")


def from_options(name: str, options: Mapping[str, str], public_url: str) -> EpayGateway:
    """An account from its options (see SPEC); errors name the option, never its value."""
    check_required(options, SPEC)
    pay_type = check_pay_type(options)
    return EpayGateway(
        check_base_url(options["base_url"]),
        check_pid(options["pid"]),
        options["key"],
        public_url,
        name=name,
        pay_type=pay_type,
        refund=check_flag(options, "refund"),
    )


def _warnings(options: Mapping[str, str]) -> list[str]:
    if urllib.parse.urlsplit(options.get("base_url", "")).scheme != "https":
        return ["base_url is not https: the query sends the key in it (and refunds in the body)"]
    return []


SPEC = ChannelSpec(
    channel="epay",
    required=("base_url", "pid", "key"),
    optional=("pay_type", "refund"),
    secrets=frozenset({"key"}),
    build=from_options,
    warnings=_warnings,
)
