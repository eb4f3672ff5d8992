"""Stripe Checkout: hosted payment page, signed webhook events, session listing for queries.

Notification: `POST` of an Event, header `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, each
v1 the hex HMAC-SHA256 of `f"{t}.{raw body}"` keyed with the endpoint secret string (`whsec_…`,
used as-is). Any v1 may match (secret rotation); other schemes (v0) are ignored. Unlike Stripe's
own library, a timestamp too far in the *future* is refused as well as a stale one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

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

HEADER = "stripe-signature"
WHERE = "Stripe-Signature"
# Stripe accepts a Checkout Session expiry between 30 minutes and 24 hours from creation.
MIN_EXPIRY = 30 * 60 + 60
MAX_EXPIRY = 24 * 60 * 60 - 60
_EVENTS = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "charge.refunded",
    "charge.refund.updated",
)
_REFUND_STATUS = {
    "succeeded": RefundStatus.SUCCEEDED,
    "pending": RefundStatus.PROCESSING,
    "requires_action": RefundStatus.PROCESSING,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.FAILED,
}
_COMPLETED = {"paid": TradeStatus.PAID, "unpaid": TradeStatus.PENDING}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The v1 signature Stripe puts in the header for this body at this time."""
    payload = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def _malformed(detail: str, where: str) -> NotificationRejected:
    return NotificationRejected(detail, where=where, slug="malformed-notification")


def _api_error(detail: str, slug: str = "gateway-error") -> Unavailable:
    return Unavailable(detail, where="stripe", slug=slug)


def _parse_header(header: str) -> tuple[int, list[str]]:
    items = [item.strip().partition("=") for item in header.split(",")]
    timestamps = [value for key, _, value in items if key == "t"]
    signatures = [value for key, _, value in items if key == "v1" and value]
    if any(not sep or not value for _, sep, value in items):
        raise NotificationRejected(
            "every item of the header must be key=value", where=WHERE, slug="bad-signature"
        )
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit():
        raise NotificationRejected(
            "the header needs exactly one numeric t=<unix seconds>",
            where=WHERE,
            slug="bad-signature",
        )
    if not signatures:
        raise NotificationRejected(
            "the header has no v1 signature", where=WHERE, slug="bad-signature"
        )
    return int(timestamps[0]), signatures


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Stripe's API never redirects; following one would resend the secret key elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


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
        self._opener = urllib.request.build_opener(_NoRedirect)

    # -- notifications -------------------------------------------------------------------------
    def verify_notification(self, raw: RawNotification) -> PaymentNotice | RefundNotice:
        header = raw.headers.get(HEADER, "").strip()
        if not header:
            raise NotificationRejected(
                "missing Stripe-Signature header", where=WHERE, slug="bad-signature"
            )
        timestamp, given = _parse_header(header)
        expected = sign(self._webhook_secret, timestamp, raw.body)
        # Every v1 is compared (no early exit), each in constant time.
        matches = [hmac.compare_digest(expected.encode(), g.encode("utf-8")) for g in given]
        if not any(matches):
            raise NotificationRejected(
                "no v1 signature matches the body and timestamp under the endpoint secret",
                where=WHERE,
                slug="bad-signature",
            )
        skew = timestamp - self._clock()
        if skew < -self._tolerance or skew > self._tolerance:
            when = "in the future" if skew > 0 else "old"
            raise NotificationRejected(
                f"signature timestamp {timestamp} is {abs(int(skew))} s {when}; "
                f"the tolerance is {self._tolerance} s",
                where=WHERE,
                slug="stale-timestamp",
            )
        try:
            event: Any = json.loads(raw.body)
        except ValueError:
            raise _malformed("body is not JSON", "body") from None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise _malformed("body must be an event object with a string type", "type")
        kind: str = event["type"]
        if kind not in _EVENTS:
            raise NotificationRejected(
                f"event type {kind[:80]!r} is not handled (send only {', '.join(_EVENTS)})",
                where="type",
                slug="unsupported-event",
            )
        data = event.get("data")
        account = event.get("account")
        merchant = account if isinstance(account, str) else None
        if kind.startswith("charge."):
            obj = data.get("object") if isinstance(data, dict) else None
            return self._refund_event(kind, obj, merchant)
        session = data.get("object") if isinstance(data, dict) else None
        if not isinstance(session, dict) or session.get("object") != "checkout.session":
            raise _malformed("data.object must be a checkout.session", "data.object")
        if kind == "checkout.session.completed":
            payment_status = session.get("payment_status")
            status = _COMPLETED.get(payment_status) if isinstance(payment_status, str) else None
            if status is None:
                raise NotificationRejected(
                    f"payment_status {payment_status!r} is neither paid nor unpaid",
                    where="session.payment_status",
                    slug="not-paid-status",
                )
        elif kind == "checkout.session.async_payment_succeeded":
            status = TradeStatus.PAID
        else:
            status = TradeStatus.CLOSED
        return self._notice(session, status, merchant)

    def _refund_event(self, kind: str, obj: Any, merchant_id: str | None) -> RefundNotice:
        """`charge.refund.updated` carries the refund; `charge.refunded` the charge, whose
        refunds list (newest first) names the refund that caused it."""
        if kind == "charge.refunded":
            if not isinstance(obj, dict) or obj.get("object") != "charge":
                raise _malformed("data.object must be a charge", "data.object")
            listed = obj.get("refunds")
            items = listed.get("data") if isinstance(listed, dict) else None
            if not isinstance(items, list) or not items or not isinstance(items[0], dict):
                # Newer API versions leave the list out; the refund's own event
                # (charge.refund.updated) or Kami's query settles it instead.
                raise NotificationRejected(
                    "charge.refunded without its refunds list: subscribe to "
                    "charge.refund.updated as well",
                    where="data.object.refunds",
                    slug="unsupported-event",
                )
            refund: dict[str, Any] = items[0]
            charge_meta = obj.get("metadata")
        else:
            if not isinstance(obj, dict) or obj.get("object") != "refund":
                raise _malformed("data.object must be a refund", "data.object")
            refund, charge_meta = obj, None
        return self._refund_notice(refund, charge_meta, merchant_id)

    def _refund_notice(
        self, refund: Mapping[str, Any], charge_meta: Any, merchant_id: str | None
    ) -> RefundNotice:
        refund_id, amount, currency = refund.get("id"), refund.get("amount"), refund.get("currency")
        if not isinstance(refund_id, str) or not refund_id.startswith("re_"):
            raise _malformed("the refund id must start with re_", "refund.id")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise _malformed("refund amount must be a positive integer", "refund.amount")
        if not isinstance(currency, str) or not currency.isalpha():
            raise _malformed("refund currency must be a currency code", "refund.currency")
        status = _REFUND_STATUS.get(str(refund.get("status")))
        if status is None:
            raise _malformed(f"unknown refund status {refund.get('status')!r}", "refund.status")
        given = refund.get("metadata")
        meta: dict[str, Any] = given if isinstance(given, dict) else {}
        order_no = meta.get("kami_order_no") or (
            charge_meta.get("kami_order_no") if isinstance(charge_meta, dict) else None
        )
        refund_no = meta.get("kami_refund_no")
        intent = refund.get("payment_intent")
        return RefundNotice(
            gateway=self.name,
            order_no=order_no if isinstance(order_no, str) and order_no else None,
            trade_no=intent if isinstance(intent, str) and intent else None,
            refund_no=refund_no if isinstance(refund_no, str) and refund_no else None,
            channel_refund_id=refund_id,
            amount_minor=amount,
            currency=currency.upper(),
            status=status,
            merchant_id=merchant_id,
        )

    def _notice(
        self, session: Mapping[str, Any], status: TradeStatus, merchant_id: str | None
    ) -> PaymentNotice:
        fields = {}
        for name in ("id", "client_reference_id", "currency"):
            value = session.get(name)
            if not isinstance(value, str) or not value or not value.isprintable():
                raise _malformed(f"{name} must be a non-empty printable string", f"session.{name}")
            fields[name] = value
        if not fields["id"].startswith("cs_"):
            raise _malformed("the session id must start with cs_", "session.id")
        amount = session.get("amount_total")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise _malformed("amount_total must be a non-negative integer", "session.amount_total")
        return PaymentNotice(
            gateway=self.name,
            order_no=fields["client_reference_id"],
            trade_no=fields["id"],
            amount_minor=amount,
            currency=fields["currency"].upper(),
            status=status,
            merchant_id=merchant_id,
        )

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
        for _ in range(self._query_pages):
            page = self._call("GET", "/v1/checkout/sessions", params)
            items = page.get("data")
            if not isinstance(items, list):
                raise _api_error("Stripe's session list has no data array")
            sessions = [s for s in items if isinstance(s, dict)]
            scanned += len(sessions)
            for session in sessions:
                if session.get("client_reference_id") != request.order_no:
                    continue
                if best is None:
                    best = session
                if session.get("payment_status") == "paid":
                    return self._found(session)
            last = sessions[-1].get("id") if sessions else None
            if page.get("has_more") is not True or not isinstance(last, str):
                break
            params["starting_after"] = last
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
        for _ in range(self._query_pages):
            page = self._call("GET", "/v1/refunds", params)
            items = page.get("data")
            if not isinstance(items, list):
                raise _api_error("Stripe's refund list has no data array")
            refunds = [r for r in items if isinstance(r, dict)]
            for refund in refunds:
                meta = refund.get("metadata")
                if isinstance(meta, dict) and meta.get("kami_refund_no") == refund_no:
                    return refund
            last = refunds[-1].get("id") if refunds else None
            if page.get("has_more") is not True or not isinstance(last, str):
                return None
            params["starting_after"] = last
        return None

    def _refund_result(self, refund_no: str, refund: dict[str, Any]) -> RefundResult:
        status = _REFUND_STATUS.get(str(refund.get("status")))
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
            return QueryResult(self._notice(session, status, None), raw)
        except NotificationRejected:
            return QueryResult(None, raw)


def from_options(name: str, options: Mapping[str, str], public_url: str) -> StripeGateway:
    """An account from its options (see SPEC); errors name the option, never its value."""
    lookback = options.get("query_lookback_hours", "48")
    if not lookback.isdigit() or not 1 <= int(lookback) <= 24 * 30:
        raise ValueError("query_lookback_hours: a whole number of hours from 1 to 720")
    secret_key = options.get("secret_key", "")
    if not secret_key.startswith(("sk_", "rk_")):
        raise ValueError("secret_key: must be a secret (sk_…) or restricted (rk_…) key")
    if not options.get("webhook_secret", "").startswith("whsec_"):
        raise ValueError("webhook_secret: must be the endpoint's signing secret (whsec_…)")
    api_base = options.get("api_base", "https://api.stripe.com")
    if urllib.parse.urlsplit(api_base).scheme not in ("http", "https"):
        raise ValueError("api_base: must be an http(s) URL")
    return StripeGateway(
        secret_key,
        options["webhook_secret"],
        public_url,
        name=name,
        api_base=api_base,
        query_lookback=timedelta(hours=int(lookback)),
    )


def _warnings(options: Mapping[str, str]) -> list[str]:
    if options.get("secret_key", "").startswith(("sk_test_", "rk_test_")):
        return ["a test-mode key (sk_test_…): no real money moves"]
    return []


SPEC = ChannelSpec(
    channel="stripe",
    required=("secret_key", "webhook_secret"),
    optional=("api_base", "query_lookback_hours"),
    secrets=frozenset({"secret_key", "webhook_secret"}),
    build=from_options,
    warnings=_warnings,
)
