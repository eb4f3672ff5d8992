"""The built-in sandbox channel, for the demo and tests.

Notification: `POST /api/v1/payments/sandbox/notify`, JSON body
`{"order_no", "trade_no", "amount_minor", "currency", "status"}`, header `X-Sandbox-Signature`:
hex HMAC-SHA256 of the raw body under the sandbox secret. Like a real channel, the signature
covers the raw bytes, so nothing is re-serialised before it is checked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

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
    RefundUnsupported,
    TradeStatus,
)

HEADER = "x-sandbox-signature"
_STATUSES = {"paid": TradeStatus.PAID, "pending": TradeStatus.PENDING, "closed": TradeStatus.CLOSED}


def sign(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


TradeLookup = Callable[[str], "PaymentNotice | None"]
RefundBook = Callable[[RefundRequest], RefundResult]


class SandboxGateway:
    refund_idempotent = True
    currencies: frozenset[str] | None = None

    name = "sandbox"

    def __init__(
        self,
        secret: bytes,
        public_url: str,
        lookup: TradeLookup | None = None,
        *,
        refund_book: RefundBook | None = None,
        refund_lookup: RefundBook | None = None,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the sandbox secret must be at least 16 bytes")
        self._secret = secret
        self._public_url = public_url.rstrip("/")
        # The channel's side of a query: the sandbox keeps its books in payments_sandbox_trade.
        self._lookup = lookup
        self._refund_book = refund_book
        self._refund_lookup = refund_lookup

    def sign(self, body: bytes) -> str:
        return sign(self._secret, body)

    def create_payment(self, request: PaymentRequest) -> PaymentInstruction:
        return PaymentInstruction(
            kind="redirect", url=f"{self._public_url}/pay/sandbox/{request.order_no}"
        )

    def verify_notification(self, raw: RawNotification) -> PaymentNotice:
        given = raw.headers.get(HEADER, "")
        if not given:
            raise NotificationRejected(
                "missing X-Sandbox-Signature header",
                where="X-Sandbox-Signature",
                slug="bad-signature",
            )
        if not hmac.compare_digest(given.strip().lower(), self.sign(raw.body)):
            raise NotificationRejected(
                "signature does not match the body",
                where="X-Sandbox-Signature",
                slug="bad-signature",
            )
        try:
            data: Any = json.loads(raw.body)
        except ValueError:
            raise NotificationRejected(
                "body is not JSON", where="body", slug="malformed-notification"
            ) from None
        if not isinstance(data, dict):
            raise NotificationRejected(
                "body must be a JSON object", where="body", slug="malformed-notification"
            )
        for name, kind in (
            ("order_no", str),
            ("trade_no", str),
            ("currency", str),
            ("status", str),
        ):
            if not isinstance(data.get(name), kind) or not data[name]:
                raise NotificationRejected(
                    f"{name} must be a non-empty string", where=name, slug="malformed-notification"
                )
            if not data[name].isprintable():
                raise NotificationRejected(
                    f"{name} must not contain control characters",
                    where=name,
                    slug="malformed-notification",
                )
        amount = data.get("amount_minor")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise NotificationRejected(
                "amount_minor must be an integer",
                where="amount_minor",
                slug="malformed-notification",
            )
        if len(data["trade_no"]) > 64 or len(data["order_no"]) > 64:
            raise NotificationRejected(
                "order_no and trade_no are at most 64 characters",
                where="trade_no",
                slug="malformed-notification",
            )
        status = _STATUSES.get(data["status"])
        if status is None:
            raise NotificationRejected(
                f"unknown status {data['status']!r}", where="status", slug="not-paid-status"
            )
        return PaymentNotice(
            gateway=self.name,
            order_no=data["order_no"],
            trade_no=data["trade_no"],
            amount_minor=amount,
            currency=data["currency"],
            status=status,
        )

    def query(self, request: PaymentRequest) -> QueryResult:
        notice = self._lookup(request.order_no) if self._lookup else None
        if notice is None:
            return QueryResult(
                None, json.dumps({"order_no": request.order_no, "status": "not_found"})
            )
        raw = {
            "order_no": notice.order_no,
            "trade_no": notice.trade_no,
            "amount_minor": notice.amount_minor,
            "currency": notice.currency,
            "status": notice.status.value,
        }
        return QueryResult(notice, json.dumps(raw))

    def acknowledge(self, rejection: NotificationRejected | None) -> Ack:
        if rejection is None:
            return Ack(200, b'{"status":"ok"}', "application/json")
        problem = {
            "type": f"/problems/{rejection.slug}",
            "title": rejection.title,
            "status": 400,
            "detail": rejection.detail,
            "where": rejection.where,
        }
        return Ack(400, json.dumps(problem).encode(), "application/problem+json")

    def refund(self, request: RefundRequest) -> RefundResult:
        if self._refund_book is None:
            raise RefundUnsupported("this sandbox has no refund book", where="gateway")
        return self._refund_book(request)

    def query_refund(self, request: RefundRequest) -> RefundResult:
        if self._refund_lookup is None:
            raise RefundUnsupported("this sandbox has no refund book", where="gateway")
        return self._refund_lookup(request)
