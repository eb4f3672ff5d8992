"""Alipay as a Kami gateway: payments, notifications, trade query, refunds and refund query."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from kami.kernel.errors import Unavailable
from kami.payments.gateways.alipay.client import AlipayClient, trusted
from kami.payments.gateways.alipay.notifications import (
    payment_notice,
    reject,
    short_text,
    verified_params,
)
from kami.payments.gateways.alipay.protocol import (
    BEIJING,
    GATEWAY_URL,
    PRODUCTS,
    STATUSES,
    to_fen,
)
from kami.payments.gateways.amounts import yuan
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


class AlipayGateway:
    refund_idempotent = True  # out_request_no
    currencies: frozenset[str] | None = frozenset({"CNY"})

    def __init__(
        self,
        name: str,
        app_id: str,
        app_private_key: RSAPrivateKey,
        alipay_public_key: RSAPublicKey,
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
        self._alipay_key = alipay_public_key
        self._public_url = public_url.rstrip("/")
        self._seller_id = seller_id
        self._product = product
        self._return_url = return_url
        self._api = AlipayClient(
            app_id,
            app_private_key,
            alipay_public_key,
            gateway_url=gateway_url,
            notify_url=f"{self._public_url}/api/v1/payments/{name}/notify",
            timeout=timeout,
            clock=clock,
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
            answer, _ = self._api.answer(method, biz)
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
        params = self._api.signed_params(method, biz, return_url=back.replace("{order_no}", order))
        return PaymentInstruction(
            kind="redirect", url=f"{self._api.gateway_url}?{urllib.parse.urlencode(params)}"
        )

    def verify_notification(self, raw: RawNotification) -> PaymentNotice | RefundNotice:
        params = verified_params(raw, self._alipay_key, self._app_id, self._seller_id)
        order_no, trade_no = (
            short_text(params.get("out_trade_no")),
            short_text(params.get("trade_no")),
        )
        if order_no is None or trade_no is None:
            raise reject("out_trade_no and trade_no are required (at most 64 chars)", "trade_no")
        refund_fee = to_fen(params["refund_fee"]) if "refund_fee" in params else 0
        if refund_fee is None:
            raise reject("refund_fee is not an amount in yuan", "refund_fee")
        if params.get("out_biz_no") or params.get("gmt_refund") or refund_fee > 0:
            return self._refund_notice(params, order_no, trade_no, refund_fee)
        return payment_notice(self.name, params, order_no, trade_no, self._app_id)

    def _refund_notice(
        self, params: Mapping[str, str], order_no: str, trade_no: str, refund_fee: int
    ) -> RefundNotice:
        """The notify only tells the trade's cumulative `refund_fee`. With `out_biz_no` the
        amount of this refund is asked of Alipay (a signed answer), so `amount_minor` is this
        refund's; without it (rare: no refund number echoed) it is the cumulative figure."""
        refund_no = short_text(params.get("out_biz_no"))
        amount, status = refund_fee, RefundStatus.SUCCEEDED
        if refund_no is not None:
            probe = RefundRequest(order_no, trade_no, refund_no, 0, 0, "CNY", "")
            try:
                found = self.query_refund(probe)
            except Unavailable as exc:
                raise reject(
                    f"the refund could not be confirmed with Alipay: {exc.detail}",
                    "out_biz_no",
                    "gateway-unavailable",
                ) from None
            if found.status is not RefundStatus.SUCCEEDED:
                raise reject(
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
        answer, body, signed = self._api.call(method, {"out_trade_no": request.order_no})
        if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
            return QueryResult(None, body)  # "no such trade" moves no money, signed or not
        answer, body = trusted(method, answer, body, signed)
        if answer.get("code") != "10000":
            raise Unavailable(
                f"Alipay alipay.trade.query: {answer.get('sub_code')}",
                where="alipay",
                slug="gateway-error",
            )
        status = STATUSES.get(str(answer.get("trade_status")))
        amount = to_fen(answer.get("total_amount"))
        trade_no = short_text(answer.get("trade_no"))
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
        answer, body = self._api.answer("alipay.trade.refund", biz)
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
        answer, body = self._api.answer("alipay.trade.fastpay.refund.query", biz)
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
