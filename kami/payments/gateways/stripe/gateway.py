"""Stripe Checkout as a Kami gateway: sessions, webhook events, session listing, refunds."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
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
    RefundNotice,
    RefundRequest,
    RefundResult,
    RefundStatus,
    TradeStatus,
)
from kami.payments.gateways.stripe.webhooks import (
    REFUND_STATUS,
    check_signature,
    event_notice,
    session_notice,
)
from kami.payments.gateways.transport import opener

# Stripe accepts a Checkout Session expiry between 30 minutes and 24 hours from creation.
MIN_EXPIRY = 30 * 60 + 60
MAX_EXPIRY = 24 * 60 * 60 - 60


def _api_error(detail: str, slug: str = "gateway-error") -> Unavailable:
    return Unavailable(detail, where="stripe", slug=slug)


class StripeGateway:
    refund_idempotent = True  # refund metadata looked up before any new refund
    currencies: frozenset[str] | None = None

    def __init__(
        self,
        secret_key: str,
        webhook_secret: str,
        public_url: str,
        *,
        name: str = "stripe",
        api_base: str = "https://api.stripe.com",
        tolerance: int = 300,
        timeout: float = 10.0,
        query_pages: int = 5,
        query_lookback: timedelta = timedelta(days=2),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret_key.startswith(("sk_", "rk_")):
            raise ValueError("the Stripe API key must be a secret (sk_…) or restricted (rk_…) key")
        if not webhook_secret.startswith("whsec_"):
            raise ValueError("the Stripe webhook secret must be the endpoint's whsec_… string")
        if urllib.parse.urlsplit(api_base).scheme not in ("http", "https"):
            raise ValueError("the Stripe API base must be an http(s) URL")
        if tolerance <= 0 or query_pages <= 0:
            raise ValueError("tolerance and query_pages must be positive")
        self.name = name
        self._secret_key = secret_key
        self._webhook_secret = webhook_secret
        self._public_url = public_url.rstrip("/")
        self._api_base = api_base.rstrip("/")
        self._tolerance = tolerance
        self._timeout = timeout
        self._query_pages = query_pages
        self._query_lookback = query_lookback
        self._clock = clock
        self._opener = opener()

    # -- notifications -------------------------------------------------------------------------
    def verify_notification(self, raw: RawNotification) -> PaymentNotice | RefundNotice:
        check_signature(raw.headers, raw.body, self._webhook_secret, self._tolerance, self._clock)
        return event_notice(self.name, raw.body)

    def acknowledge(self, rejection: NotificationRejected | None) -> Ack:
        # An event that is not (yet) a payment, or of a kind Kami does not act on, is answered
        # 2xx: Stripe would otherwise retry it for days and a retry cannot change it. It is still
        # recorded with its reason. Everything else (bad signature, stale, malformed, amount or
        # order mismatch) is refused, so a misconfiguration shows up as failed deliveries.
        if rejection is None or rejection.slug in ("not-paid-status", "unsupported-event"):
            return Ack(200, b'{"received":true}', "application/json")
        problem = {"type": f"/problems/{rejection.slug}", "title": rejection.title, "status": 400}
        problem |= {"detail": rejection.detail, "where": rejection.where}
        return Ack(400, json.dumps(problem).encode(), "application/problem+json")

    # -- API calls -----------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, params: Mapping[str, str], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        encoded = urllib.parse.urlencode(params)
        url = f"{self._api_base}{path}"
        headers = {"Authorization": f"Bearer {self._secret_key}", "Accept": "application/json"}
        body: bytes | None = None
        if method == "POST":
            body = encoded.encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            if idempotency_key:
                headers["Idempotency-Key"] = idempotency_key
        elif encoded:
            url = f"{url}?{encoded}"
        # S310: the scheme was checked in __init__ (http or https only).
        request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                text = response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            answer = exc.read().decode("utf-8", "replace")[:500]
            raise _api_error(
                f"Stripe answered {method} {path} with HTTP {exc.code}: {answer}"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            detail = f"Stripe could not be reached for {method} {path}: {exc}"
            raise _api_error(detail, "gateway-unavailable") from None
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise _api_error(f"Stripe answered {method} {path} with no JSON object")
        return data

    def _pages(
        self, path: str, params: dict[str, str], what: str
    ) -> Iterator[list[dict[str, Any]]]:
        """The objects of a Stripe list, page by page (newest first), for at most
        `query_pages` pages; stop iterating to stop asking."""
        for _ in range(self._query_pages):
            page = self._call("GET", path, params)
            items = page.get("data")
            if not isinstance(items, list):
                raise _api_error(f"Stripe's {what} list has no data array")
            found = [item for item in items if isinstance(item, dict)]
            yield found
            last = found[-1].get("id") if found else None
            if page.get("has_more") is not True or not isinstance(last, str):
                return
            params["starting_after"] = last

    def create_payment(self, request: PaymentRequest) -> PaymentInstruction:
        now = int(self._clock())
        # Stripe refuses an expiry outside [30 min, 24 h]; a shorter order TTL is stretched to
        # the minimum, so a buyer may still pay a little after Kami expired the order.
        expires = min(max(int(request.expires_at.timestamp()), now + MIN_EXPIRY), now + MAX_EXPIRY)
        order = urllib.parse.quote(request.order_no, safe="")
        params = {
            "mode": "payment",
            "client_reference_id": request.order_no,
            "metadata[kami_order_no]": request.order_no,
            "payment_intent_data[metadata][kami_order_no]": request.order_no,
            "line_items[0][quantity]": "1",
            "line_items[0][price_data][currency]": request.currency.lower(),
            "line_items[0][price_data][unit_amount]": str(request.amount_minor),
            "line_items[0][price_data][product_data][name]": request.subject,
            "success_url": f"{self._public_url}/orders/{order}?paid=stripe",
            "cancel_url": f"{self._public_url}/orders/{order}?cancelled=stripe",
            "expires_at": str(expires),
        }
        session = self._call(
            "POST", "/v1/checkout/sessions", params, f"kami-checkout-{request.order_no}"
        )
        url = session.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise _api_error("Stripe created a Checkout Session without a payment page URL")
        return PaymentInstruction(kind="redirect", url=url)

    def query(self, request: PaymentRequest) -> QueryResult:
        """Find the order's Checkout Session by listing sessions and matching client_reference_id.

        Stripe cannot filter sessions by client_reference_id, so this lists sessions created
        from `query_lookback` before the order's expiry onwards (newest first, 100 a page),
        following `has_more`/`starting_after` for at most `query_pages` pages (default 5, i.e.
        500 sessions). A paid match wins; otherwise the newest match. A shop creating more
        sessions than that in the window may miss the order here and must rely on the webhook.
        """
        since = int((request.expires_at - self._query_lookback).timestamp())
        params = {"limit": "100", "created[gte]": str(since)}
        best: dict[str, Any] | None = None
        scanned = 0
        for sessions in self._pages("/v1/checkout/sessions", params, "session"):
            scanned += len(sessions)
            for session in sessions:
                if session.get("client_reference_id") != request.order_no:
                    continue
                if best is None:
                    best = session
                if session.get("payment_status") == "paid":
                    return self._found(session)
        if best is not None:
            return self._found(best)
        raw = {"order_no": request.order_no, "status": "not_found", "scanned": scanned}
        return QueryResult(None, json.dumps(raw))

    # -- refunds -------------------------------------------------------------------------------
    def _intent(self, request: RefundRequest) -> str:
        if not request.trade_no.startswith("cs_"):
            raise _api_error(f"trade {request.trade_no[:40]!r} is not a Checkout Session id")
        session = self._call(
            "GET", f"/v1/checkout/sessions/{urllib.parse.quote(request.trade_no, safe='')}", {}
        )
        intent = session.get("payment_intent")
        if isinstance(intent, dict):
            intent = intent.get("id")
        if not isinstance(intent, str) or not intent.startswith("pi_"):
            raise _api_error(f"Checkout Session {request.trade_no} has no payment intent")
        return intent

    def _existing_refund(self, intent: str, refund_no: str) -> dict[str, Any] | None:
        """Kami's refund among the payment's refunds, found by the refund number in its
        metadata: safe at any age, where Stripe keeps idempotency keys for only 24 hours."""
        params = {"payment_intent": intent, "limit": "100"}
        for refunds in self._pages("/v1/refunds", params, "refund"):
            for refund in refunds:
                meta = refund.get("metadata")
                if isinstance(meta, dict) and meta.get("kami_refund_no") == refund_no:
                    return refund
        return None

    def _refund_result(self, refund_no: str, refund: dict[str, Any]) -> RefundResult:
        status = REFUND_STATUS.get(str(refund.get("status")))
        amount = refund.get("amount")
        if status is None or isinstance(amount, bool) or not isinstance(amount, int):
            raise _api_error("Stripe answered with a refund Kami cannot read")
        reason = refund.get("failure_reason")
        detail = f"Stripe: {reason}" if status is RefundStatus.FAILED and reason else None
        refund_id = refund.get("id")
        return RefundResult(
            refund_no,
            status,
            amount,
            refund_id if isinstance(refund_id, str) else None,
            json.dumps(refund),
            detail,
        )

    def refund(self, request: RefundRequest) -> RefundResult:
        intent = self._intent(request)
        existing = self._existing_refund(intent, request.refund_no)
        if existing is not None:
            return self._refund_result(request.refund_no, existing)
        params = {
            "payment_intent": intent,
            "amount": str(request.amount_minor),
            "metadata[kami_refund_no]": request.refund_no,
            "metadata[kami_order_no]": request.order_no,
            "metadata[reason]": request.reason[:500],
        }
        try:
            refund = self._call("POST", "/v1/refunds", params, f"kami-refund-{request.refund_no}")
        except Unavailable as exc:
            # A 400 is Stripe refusing the refund (amount too large, charge disputed …): a
            # definite no. Anything else leaves the outcome unknown.
            if " HTTP 400: " in exc.detail:
                raw = json.dumps({"refund_no": request.refund_no, "error": exc.detail})
                return RefundResult(
                    request.refund_no,
                    RefundStatus.FAILED,
                    request.amount_minor,
                    None,
                    raw,
                    exc.detail,
                )
            raise
        return self._refund_result(request.refund_no, refund)

    def query_refund(self, request: RefundRequest) -> RefundResult:
        intent = self._intent(request)
        refund = self._existing_refund(intent, request.refund_no)
        if refund is None:
            detail = f"Stripe has no refund {request.refund_no} for {intent}"
            raw = json.dumps({"refund_no": request.refund_no, "status": "not_found"})
            return RefundResult(
                request.refund_no, RefundStatus.FAILED, request.amount_minor, None, raw, detail
            )
        return self._refund_result(request.refund_no, refund)

    def _found(self, session: dict[str, Any]) -> QueryResult:
        if session.get("payment_status") == "paid":
            status = TradeStatus.PAID
        elif session.get("status") == "expired":
            status = TradeStatus.CLOSED
        else:
            status = TradeStatus.PENDING
        raw = json.dumps(session)
        try:
            return QueryResult(session_notice(self.name, session, status, None), raw)
        except NotificationRejected:
            return QueryResult(None, raw)
