"""The Stripe adapter against the official SDK as the signing side and a loopback Stripe API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import stripe

from kami import payments
from kami.kernel.errors import Unavailable
from kami.payments.gateways.stripe import StripeGateway

SECRET = "whsec_test_0123456789abcdefghijklmnopqrstuv"
API_KEY = "sk_test_kami_0123456789"
SESSION = "cs_test_a11YYufWQzNY63zpQ6QSNRQhkUpVph4WRmzW0zWJO2znZKdVujZ0N0S22u"
ORDER = "K20261124ABCDEF"


def gateway(api_base: str = "https://api.stripe.com", **kw: Any) -> StripeGateway:
    return StripeGateway(API_KEY, SECRET, "https://shop.example/", api_base=api_base, **kw)


def session(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": SESSION,
        "object": "checkout.session",
        "mode": "payment",
        "status": "complete",
        "payment_status": "paid",
        "client_reference_id": ORDER,
        "amount_total": 1990,
        "currency": "usd",
        "payment_intent": "pi_3Test",
    }
    base.update(fields)
    return base


def event(kind: str = "checkout.session.completed", **fields: Any) -> str:
    envelope = {
        "id": "evt_1Test",
        "object": "event",
        "api_version": "2025-01-27",
        "created": int(time.time()),
        "livemode": False,
        "type": kind,
        "data": {"object": session(**fields)},
    }
    return json.dumps(envelope)


def raw(body: str | bytes, header: str | None) -> payments.RawNotification:
    return payments.RawNotification(
        gateway="stripe",
        method="POST",
        headers={} if header is None else {"stripe-signature": header},
        query={},
        body=body.encode() if isinstance(body, str) else body,
    )


def signed(body: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    header: str = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp)
    return header


def rejected(note: payments.RawNotification, g: StripeGateway | None = None) -> Any:
    with pytest.raises(payments.NotificationRejected) as info:
        (g or gateway()).verify_notification(note)
    assert info.value.detail and info.value.where
    return info.value


# -- notifications -----------------------------------------------------------------------------
def test_paid_checkout_session_gives_the_notice() -> None:
    body = event()
    notice = gateway().verify_notification(raw(body, signed(body)))
    assert notice == payments.PaymentNotice(
        gateway="stripe",
        order_no=ORDER,
        trade_no=SESSION,
        amount_minor=1990,
        currency="USD",
        status=payments.TradeStatus.PAID,
        merchant_id=None,
    )


def test_connect_account_is_the_merchant_and_any_v1_may_match() -> None:
    body = json.dumps({**json.loads(event()), "account": "acct_1Connected"})
    header = signed(body)
    t = header.split(",")[0]
    rotated = f"{t},v1={'0' * 64},{header.split(',')[1]},v0=deadbeef"
    notice = gateway().verify_notification(raw(body, rotated))
    assert notice.merchant_id == "acct_1Connected"


@pytest.mark.parametrize(
    ("kind", "payment_status", "status"),
    [
        ("checkout.session.completed", "unpaid", payments.TradeStatus.PENDING),
        ("checkout.session.async_payment_succeeded", "paid", payments.TradeStatus.PAID),
        ("checkout.session.async_payment_failed", "unpaid", payments.TradeStatus.CLOSED),
    ],
)
def test_other_session_events(kind: str, payment_status: str, status: Any) -> None:
    body = event(kind, payment_status=payment_status)
    assert gateway().verify_notification(raw(body, signed(body))).status is status


def test_tampered_body_is_a_bad_signature() -> None:
    body = event()
    forged = body.replace('"amount_total": 1990', '"amount_total": 1')
    assert forged != body
    assert rejected(raw(forged, signed(body))).slug == "bad-signature"


def test_wrong_secret_is_a_bad_signature() -> None:
    body = event()
    assert rejected(raw(body, signed(body, "whsec_someone_else"))).slug == "bad-signature"


@pytest.mark.parametrize(
    "header",
    [None, "", "v1=abc", "t=notanumber,v1=abc", "t=1,t=2,v1=abc", "t=123", "garbage", "t=,v1="],
)
def test_missing_or_malformed_header(header: str | None) -> None:
    problem = rejected(raw(event(), header))
    assert problem.slug == "bad-signature"
    assert problem.where == "Stripe-Signature"


def test_stale_timestamp() -> None:
    body = event()
    old = int(time.time()) - 301
    problem = rejected(raw(body, signed(body, timestamp=old)))
    assert problem.slug == "stale-timestamp"
    assert "old" in problem.detail


def test_future_timestamp_beyond_tolerance_is_refused_though_the_sdk_accepts_it() -> None:
    body = event()
    header = signed(body, timestamp=int(time.time()) + 3600)
    # Stripe's own library takes it (it only checks the past side) ...
    assert stripe.Webhook.construct_event(body, header, SECRET).type == "checkout.session.completed"
    # ... Kami does not.
    problem = rejected(raw(body, header))
    assert problem.slug == "stale-timestamp"
    assert "future" in problem.detail


def test_timestamp_inside_tolerance_and_a_custom_tolerance() -> None:
    body = event()
    now = int(time.time())
    for t in (now - 240, now + 240):
        assert gateway().verify_notification(raw(body, signed(body, timestamp=t)))
    tight = gateway(tolerance=60, clock=lambda: now)
    assert rejected(raw(body, signed(body, timestamp=now + 61)), tight).slug == "stale-timestamp"


def test_hand_built_header_matches_the_sdk() -> None:
    import hashlib
    import hmac

    body = event()
    t = int(time.time())
    v1 = hmac.new(SECRET.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    assert f"t={t},v1={v1}" == signed(body, timestamp=t)
    assert gateway().verify_notification(raw(body, f"t={t}, v1={v1}")).order_no == ORDER


def test_unsupported_event() -> None:
    body = json.dumps({"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {}}})
    problem = rejected(raw(body, signed(body)))
    assert problem.slug == "unsupported-event"
    assert problem.where == "type"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("not json", "body"),
        ("[1, 2]", "type"),
        (json.dumps({"type": "checkout.session.completed", "data": {}}), "data.object"),
        (event(client_reference_id=None), "session.client_reference_id"),
        (event(amount_total="1990"), "session.amount_total"),
        (event(amount_total=True), "session.amount_total"),
        (event(currency=""), "session.currency"),
        (event(id="pi_123"), "session.id"),
    ],
)
def test_malformed_notification(body: str, where: str) -> None:
    problem = rejected(raw(body, signed(body)))
    assert (problem.slug, problem.where) == ("malformed-notification", where)


def test_unknown_payment_status_is_not_paid() -> None:
    body = event(payment_status="no_payment_required")
    assert rejected(raw(body, signed(body))).slug == "not-paid-status"


def test_acknowledge() -> None:
    ok = gateway().acknowledge(None)
    assert (ok.status_code, ok.content_type) == (200, "application/json")
    assert json.loads(ok.body) == {"received": True}
    problem = rejected(raw(event(), None))
    no = gateway().acknowledge(problem)
    assert (no.status_code, no.content_type) == (400, "application/problem+json")
    assert json.loads(no.body)["type"] == "/problems/bad-signature"


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError):
        StripeGateway("pk_test_public", SECRET, "https://shop.example")
    with pytest.raises(ValueError):
        StripeGateway(API_KEY, "sk_test_not_a_webhook_secret", "https://shop.example")
    with pytest.raises(ValueError):
        StripeGateway(API_KEY, SECRET, "https://shop.example", api_base="file:///etc")


# -- the API, against a loopback Stripe ----------------------------------------------------------
class FakeStripe(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    refunds: list[dict[str, Any]]
    idempotent: dict[str, dict[str, Any]]
    refund_status: str = "succeeded"
    fail_with: int | None = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        url = urlsplit(self.path)
        seen = {
            "method": self.command,
            "path": url.path,
            "query": {k: v[0] for k, v in parse_qs(url.query).items()},
            "form": {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()},
            "headers": dict(self.headers),
        }
        self.requests.append(seen)
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self._answer(401, {"error": {"type": "invalid_request_error"}})
            return None
        if self.fail_with in (301, 302, 307):
            self.send_response(self.fail_with)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if self.fail_with:
            self._answer(self.fail_with, {"error": {"message": "boom"}})
            return None
        return seen

    def do_POST(self) -> None:
        seen = self._record()
        if seen is None:
            return
        if seen["path"] == "/v1/refunds":
            self._refund(seen)
            return
        assert seen["path"] == "/v1/checkout/sessions"
        created = session(status="open", payment_status="unpaid", url=f"https://pay.test/{SESSION}")
        self._answer(200, created)

    def _refund(self, seen: dict[str, Any]) -> None:
        """Like Stripe: an Idempotency-Key replays the first answer; never more back than paid."""
        key = seen["headers"].get("Idempotency-Key")
        if key in self.idempotent:
            self._answer(200, self.idempotent[key])
            return
        form = seen["form"]
        intent = form["payment_intent"]
        paid = sum(x["amount_total"] for x in self.sessions if x.get("payment_intent") == intent)
        back = sum(r["amount"] for r in self.refunds if r["payment_intent"] == intent)
        amount = int(form["amount"])
        if back + amount > paid:
            self._answer(
                400,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"Refund amount ({amount}) is greater than unrefunded "
                        f"amount on charge ({paid - back})",
                    }
                },
            )
            return
        metadata = {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}
        refund = {
            "id": f"re_{len(self.refunds) + 1}",
            "object": "refund",
            "amount": amount,
            "currency": "usd",
            "payment_intent": intent,
            "status": self.refund_status,
            "metadata": metadata,
        }
        self.refunds.append(refund)
        if key:
            self.idempotent[key] = refund
        self._answer(200, refund)

    def do_GET(self) -> None:
        seen = self._record()
        if seen is None:
            return
        if seen["path"] == "/v1/refunds":
            intent = seen["query"]["payment_intent"]
            found = [r for r in reversed(self.refunds) if r["payment_intent"] == intent]
            self._answer(200, {"object": "list", "data": found, "has_more": False})
            return
        if seen["path"].startswith("/v1/checkout/sessions/"):
            wanted = seen["path"].rsplit("/", 1)[1]
            match = [x for x in self.sessions if x["id"] == wanted]
            if match:
                self._answer(200, match[0])
            else:
                self._answer(404, {"error": {"message": "No such checkout.session"}})
            return
        after = seen["query"].get("starting_after")
        start = 0 if after is None else [s["id"] for s in self.sessions].index(after) + 1
        limit = int(seen["query"]["limit"])
        page = self.sessions[start : start + limit]
        self._answer(
            200,
            {"object": "list", "data": page, "has_more": start + limit < len(self.sessions)},
        )


@contextmanager
def serve_fake() -> Iterator[tuple[str, type[FakeStripe]]]:
    """A loopback Stripe API with its own request log and sessions: (base URL, handler)."""
    handler = type(
        "Handler",
        (FakeStripe,),
        {"requests": [], "sessions": [], "refunds": [], "idempotent": {}, "fail_with": None},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def fake() -> Iterator[tuple[str, type[FakeStripe]]]:
    with serve_fake() as served:
        yield served


def request(expires_in: timedelta = timedelta(hours=1)) -> payments.PaymentRequest:
    return payments.PaymentRequest(
        order_no=ORDER,
        amount_minor=1990,
        currency="USD",
        subject="Game key × 1",
        expires_at=datetime.now(UTC) + expires_in,
    )


def test_create_payment_posts_a_checkout_session(fake: tuple[str, type[FakeStripe]]) -> None:
    base, handler = fake
    req = request()
    instruction = gateway(base).create_payment(req)
    assert instruction == payments.PaymentInstruction(
        kind="redirect", url=f"https://pay.test/{SESSION}"
    )
    (seen,) = handler.requests
    assert seen["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert seen["headers"]["Idempotency-Key"] == f"kami-checkout-{ORDER}"
    assert seen["form"] == {
        "mode": "payment",
        "client_reference_id": ORDER,
        "metadata[kami_order_no]": ORDER,
        "payment_intent_data[metadata][kami_order_no]": ORDER,
        "line_items[0][quantity]": "1",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "1990",
        "line_items[0][price_data][product_data][name]": "Game key × 1",
        "success_url": f"https://shop.example/orders/{ORDER}?paid=stripe",
        "cancel_url": f"https://shop.example/orders/{ORDER}?cancelled=stripe",
        "expires_at": str(int(req.expires_at.timestamp())),
    }


def test_short_order_expiry_is_stretched_to_stripes_minimum(
    fake: tuple[str, type[FakeStripe]],
) -> None:
    base, handler = fake
    gateway(base).create_payment(request(timedelta(minutes=15)))
    expires = int(handler.requests[0]["form"]["expires_at"])
    assert 30 * 60 < expires - time.time() < 32 * 60


def test_api_errors_are_unavailable(fake: tuple[str, type[FakeStripe]]) -> None:
    base, handler = fake
    with pytest.raises(Unavailable) as info:
        StripeGateway("sk_test_wrong", SECRET, "https://x", api_base=base).create_payment(request())
    assert info.value.slug == "gateway-error" and "401" in info.value.detail
    handler.fail_with = 500
    with pytest.raises(Unavailable):
        gateway(base).query(request())
    handler.fail_with = 307
    handler.requests.clear()
    with pytest.raises(Unavailable) as info:
        gateway(base).create_payment(request())
    # A redirect is not followed: the secret key is never sent anywhere else.
    assert info.value.slug == "gateway-error" and "307" in info.value.detail
    assert [r["path"] for r in handler.requests] == ["/v1/checkout/sessions"]
    with pytest.raises(Unavailable) as info:
        gateway("http://127.0.0.1:9", timeout=2).create_payment(request())
    assert info.value.slug == "gateway-unavailable"


def _others(n: int) -> list[dict[str, Any]]:
    return [session(id=f"cs_test_other{i}", client_reference_id=f"K-OTHER-{i}") for i in range(n)]


def test_query_follows_pages_to_the_order(fake: tuple[str, type[FakeStripe]]) -> None:
    base, handler = fake
    handler.sessions = [*_others(150), session(), *_others(20)]
    req = request()
    result = gateway(base).query(req)
    assert result.notice is not None
    assert (result.notice.trade_no, result.notice.status) == (SESSION, payments.TradeStatus.PAID)
    assert json.loads(result.raw)["id"] == SESSION
    first, second = handler.requests
    assert first["query"] == {
        "limit": "100",
        "created[gte]": str(int((req.expires_at - timedelta(days=2)).timestamp())),
    }
    assert second["query"]["starting_after"] == "cs_test_other99"
    assert all(r["headers"]["Authorization"] == f"Bearer {API_KEY}" for r in handler.requests)


def test_query_prefers_a_paid_session_and_maps_expired(fake: tuple[str, type[FakeStripe]]) -> None:
    base, handler = fake
    handler.sessions = [session(id="cs_test_newer", status="expired", payment_status="unpaid")]
    result = gateway(base).query(request())
    assert result.notice is not None and result.notice.status is payments.TradeStatus.CLOSED
    handler.sessions.append(session())
    result = gateway(base).query(request())
    assert result.notice is not None and result.notice.trade_no == SESSION


def test_query_not_found_and_the_page_bound(fake: tuple[str, type[FakeStripe]]) -> None:
    base, handler = fake
    handler.sessions = _others(30)
    result = gateway(base).query(request())
    assert result.notice is None
    assert json.loads(result.raw) == {"order_no": ORDER, "status": "not_found", "scanned": 30}
    handler.sessions = [*_others(250), session()]
    handler.requests.clear()
    assert gateway(base, query_pages=2).query(request()).notice is None
    assert len(handler.requests) == 2
