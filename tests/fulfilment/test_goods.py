"""Every kind of good, end to end through the sandbox channel, on both databases: reusable keys
and text, licenses, manual goods with buyer input, webhook delivery, and bundles whose failed
component is refunded while the others stand."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kami import bootstrap, catalog, fulfilment, licenses, orders, payments, vault
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput
from kami.worker.runner import run_once
from tests.conftest import add_keys, make_sku, raw_notification, sandbox_body


def goods_sku(
    shop: fulfilment.Shop,
    code: str,
    kind: str,
    *,
    price: int = 1000,
    config: dict[str, Any] | None = None,
    fields: list[dict[str, Any]] | None = None,
) -> catalog.SkuView:
    base = make_sku(shop, f"{code}-BASE")  # brings the category and a product along
    with shop.db.write() as s:
        return catalog.create_sku(
            s,
            catalog.SkuIn(
                code=code,
                product=base.product_slug,
                name=code,
                price_minor=price,
                delivery_kind=catalog.DeliveryKind(kind),
                delivery_config=config,
                input_fields=fields,
                max_quantity=10,
            ),
        )


def buy(
    shop: fulfilment.Shop,
    sku: str,
    *,
    quantity: int = 1,
    email: str = "buyer@example.com",
    buyer_input: dict[str, str] | None = None,
) -> str:
    placed = fulfilment.place_order(
        shop,
        orders.OrderIn(
            sku=sku, quantity=quantity, email=email, gateway="sandbox", buyer_input=buyer_input
        ),
    )
    no, amount = placed.order.order_no, placed.order.amount_minor
    with shop.db.write() as s:
        trade = payments.record_sandbox_trade(s, no, amount, "CNY")
    fulfilment.handle_notification(shop, raw_notification(sandbox_body(no, amount, trade_no=trade)))
    return no


def status(shop: fulfilment.Shop, order_no: str) -> str:
    with shop.db.read() as s:
        return orders.get_order(s, order_no).status


def revealed(shop: fulfilment.Shop, order_no: str) -> list[str]:
    token = orders.access_token(shop.token_secret(), order_no)
    _, items = fulfilment.reveal(shop, order_no, token, ip=None, user_agent=None)
    return [i.card for i in items]


# -- reusable keys and text --------------------------------------------------------------------
def test_reusable_key_is_sold_up_to_its_limit_and_once_per_buyer(shop: fulfilment.Shop) -> None:
    sku = goods_sku(shop, "ACCT", "reusable_key", config={"max_sales": 2, "per_buyer_limit": 1})
    add_keys(shop, sku, ["shared-account:pass"])
    a = buy(shop, "ACCT", email="a@example.com")
    with pytest.raises(Conflict) as limit:
        fulfilment.place_order(
            shop, orders.OrderIn(sku="ACCT", email="a@example.com", gateway="sandbox")
        )
    assert limit.value.slug == "limit-reached"
    b = buy(shop, "ACCT", email="b@example.com")
    with pytest.raises(Conflict) as gone:
        fulfilment.place_order(
            shop, orders.OrderIn(sku="ACCT", email="c@example.com", gateway="sandbox")
        )
    assert gone.value.slug == "sold-out"
    assert revealed(shop, a) == revealed(shop, b) == ["shared-account:pass"]
    assert status(shop, a) == status(shop, b) == "delivered"


def test_text_goes_to_everyone_and_a_refund_frees_a_unit(shop: fulfilment.Shop) -> None:
    sku = goods_sku(shop, "GUIDE", "text", config={"max_sales": 1, "per_buyer_limit": 5})
    add_keys(shop, sku, ["https://example.com/guide.pdf"])
    first = buy(shop, "GUIDE", email="x@example.com")
    fulfilment.request_refund(
        shop, first, amount_minor=None, reason="r", request_key="k", keys="void"
    )
    second = buy(shop, "GUIDE", email="y@example.com")
    assert revealed(shop, second) == ["https://example.com/guide.pdf"]
    with shop.db.read() as s:  # the one key itself was never voided: it is everyone's
        assert vault.shared_key(s, sku.id, utcnow()) is not None


# -- licenses ------------------------------------------------------------------------------------
def test_license_is_issued_at_payment_and_activates(shop: fulfilment.Shop) -> None:
    sku = goods_sku(shop, "APP", "license")
    with shop.db.write() as s:
        licenses.set_policy(
            s, sku.id, licenses.PolicyIn(activation_limit=1, product_code="acme-app")
        )
    no = buy(shop, "APP", quantity=2)
    assert status(shop, no) == "delivered"
    keys = revealed(shop, no)
    assert len(keys) == 2 and keys[0] != keys[1]
    with shop.db.write() as s:
        answer = licenses.activate(
            s, shop.cipher, licenses.LicenseRequest(license_key=keys[0], machine_id="pc-1")
        )
    assert answer.payload["ok"] is True


def test_license_without_policy_fails_and_is_refunded(container: bootstrap.Container) -> None:
    shop = container.shop
    goods_sku(shop, "NOPOL", "license")
    no = buy(shop, "NOPOL")
    assert status(shop, no) == "failed"
    run_once(container, sweep=False)  # the refund job
    assert status(shop, no) == "refunded"


# -- manual goods and buyer input ------------------------------------------------------------
PHONE = [{"name": "phone", "label": "Phone", "rule": "phone"}]


def test_manual_goods_with_buyer_input(shop: fulfilment.Shop) -> None:
    goods_sku(shop, "TOPUP", "manual", fields=PHONE, config={"instructions": "charge it"})
    with pytest.raises(InvalidInput) as bad:
        buy(shop, "TOPUP", buyer_input={"phone": "12345"})
    assert bad.value.where == "buyer_input.phone"
    with pytest.raises(InvalidInput) as missing:
        buy(shop, "TOPUP")
    assert missing.value.where == "buyer_input.phone"
    no = buy(shop, "TOPUP", buyer_input={"phone": "13800138000"})
    assert status(shop, no) == "paid"
    (task,) = fulfilment.manual_queue(shop)
    assert task.order_no == no and task.buyer_input == {"phone": "13800138000"}
    assert task.instructions == "charge it"
    with pytest.raises(InvalidInput):
        fulfilment.fulfil_by_hand(shop, task.line.id, [], "ops")
    fulfilment.fulfil_by_hand(shop, task.line.id, [vault.Secret("charged 13800138000")], "ops")
    assert status(shop, no) == "delivered" and revealed(shop, no) == ["charged 13800138000"]
    assert fulfilment.manual_queue(shop) == []
    with pytest.raises(Conflict):
        fulfilment.fail_by_hand(shop, task.line.id, "too late", "ops")


# -- webhook delivery --------------------------------------------------------------------------
class Receiver(BaseHTTPRequestHandler):
    """The seller's endpoint: checks the signature and freshness, answers the same goods for
    the same idempotency key, and fails the first `fail_first` calls."""

    secret = ""
    fail_first = 0
    calls: list[dict[str, Any]]
    made: dict[str, list[dict[str, str]]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ts = self.headers["X-Kami-Timestamp"]
        expected = (
            "v1="
            + hmac.new(self.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        ok = hmac.compare_digest(expected, self.headers["X-Kami-Signature"])
        key = self.headers["Idempotency-Key"]
        data = json.loads(body)
        self.calls.append({"ok": ok, "key": key, "data": data})
        if not ok or abs(int(ts) - utcnow().timestamp()) > 300:
            self._send(401, {"error": "bad signature"})
        elif len(self.calls) <= self.fail_first:
            self._send(503, {"error": "busy"})
        else:
            n = data["quantity"]
            items = self.made.setdefault(key, [{"card": f"GEN-{key}-{i}"} for i in range(n)])
            self._send(200, {"items": items})

    def _send(self, code: int, data: object) -> None:
        raw = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    handler = type("R", (Receiver,), {"calls": [], "made": {}, "fail_first": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/deliver", handler
    server.shutdown()
    server.server_close()


def drive(shop: fulfilment.Shop, rounds: int) -> None:
    """Run the worker's attempts as if time passed between them (backoff is minutes)."""
    for n in range(1, rounds + 1):
        fulfilment.drive_due(shop, now=utcnow() + timedelta(hours=n))


def test_webhook_fails_twice_then_delivers_exactly_once(
    shop: fulfilment.Shop, receiver: tuple[str, type[Receiver]]
) -> None:
    url, handler = receiver
    goods_sku(shop, "HOOK", "webhook", config={"url": url, "max_attempts": 5})
    handler.secret = fulfilment.webhook_secret(shop, "HOOK")
    handler.fail_first = 2
    no = buy(shop, "HOOK", quantity=2, buyer_input=None)
    assert status(shop, no) == "paid"
    drive(shop, 5)
    assert status(shop, no) == "delivered"
    assert [c["ok"] for c in handler.calls] == [True, True, True]  # stopped once delivered
    assert {c["key"] for c in handler.calls} == {f"{no}-1"}  # one idempotency key throughout
    assert [c["data"]["attempt"] for c in handler.calls] == [1, 2, 3]
    assert revealed(shop, no) == [f"GEN-{no}-1-0", f"GEN-{no}-1-1"]
    events = [e.event for e in fulfilment.admin_detail(shop, no).timeline]
    assert events.count("line_attempt_failed") == 2 and "line_delivered" in events


def test_webhook_that_never_answers_well_fails_and_refunds(
    container: bootstrap.Container, receiver: tuple[str, type[Receiver]]
) -> None:
    shop = container.shop
    url, handler = receiver
    goods_sku(shop, "HOOK2", "webhook", config={"url": url, "max_attempts": 2})
    handler.secret = "whk_wrong"  # the seller configured the wrong secret: every call refused
    no = buy(shop, "HOOK2")
    drive(shop, 4)
    assert len(handler.calls) == 2 and status(shop, no) == "failed"
    run_once(container, sweep=False)
    assert status(shop, no) == "refunded"


# -- bundles ----------------------------------------------------------------------------------
def test_bundle_delivers_the_rest_and_refunds_the_failed_share(
    container: bootstrap.Container,
) -> None:
    shop = container.shop
    video = make_sku(shop, "VIDEO", price=1500)
    add_keys(shop, video, ["VID-1", "VID-2"])
    goods_sku(shop, "FOOD", "manual", price=500)
    bundle = {
        "components": [
            {"sku": "VIDEO", "quantity": 1, "share_minor": 1500},
            {"sku": "FOOD", "quantity": 1, "share_minor": 500},
        ]
    }
    with pytest.raises(InvalidInput) as wrong:
        goods_sku(shop, "BAD-JOINT", "bundle", price=1999, config=bundle)
    assert "add up to 2000" in wrong.value.detail
    goods_sku(shop, "JOINT", "bundle", price=2000, config=bundle)
    no = buy(shop, "JOINT")
    assert status(shop, no) == "paid"  # the video key is out; the food coupon waits
    (task,) = fulfilment.manual_queue(shop)
    fulfilment.fail_by_hand(shop, task.line.id, "supplier has none left", "ops")
    assert status(shop, no) == "delivered"
    run_once(container, sweep=False)  # the share refund
    assert status(shop, no) == "partially_refunded"
    (refund,) = fulfilment.list_order_refunds(shop, no)
    assert refund.amount_minor == 500 and "FOOD could not be delivered" in refund.reason
    assert revealed(shop, no) == ["VID-1"]
    events = [(e.event, e.detail.get("detail")) for e in fulfilment.admin_detail(shop, no).timeline]
    assert ("line_failed", "ops: supplier has none left") in events
    run_once(container, sweep=False)  # a second run refunds nothing more
    assert len(fulfilment.list_order_refunds(shop, no)) == 1


def test_bundle_component_out_of_stock_waits_for_keys(shop: fulfilment.Shop) -> None:
    a = make_sku(shop, "PART-A", price=300)
    add_keys(shop, a, ["A-1"])
    make_sku(shop, "PART-B", price=700)  # no keys: refused at order time
    config = {
        "components": [
            {"sku": "PART-A", "quantity": 1, "share_minor": 300},
            {"sku": "PART-B", "quantity": 1, "share_minor": 700},
        ]
    }
    goods_sku(shop, "PAIR", "bundle", config=config)
    with pytest.raises(Conflict) as out:
        buy(shop, "PAIR")
    assert out.value.slug == "sold-out"
    with shop.db.read() as s:  # the reservation of PART-A was rolled back with the order
        assert vault.has_stock(s, a.id, 1, utcnow())
