"""易支付 V1 against the reference signing vector, end to end through the shop, and its query."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from kami import bootstrap, fulfilment, orders, payments
from kami.config import EpayConfig, Settings
from kami.payments.gateways.base import RefundRequest, RefundStatus, RefundUnsupported
from kami.payments.gateways.epay import SPEC, EpayGateway, from_options, sign
from kami.web.app import create_app
from tests.conftest import add_keys, make_sku
from tests.payments.fakes.epay import EpayFake as EpayFakeServer

KEY = "89unJUB8HZ54Hj7x4nUj56HN4nUzUJ8i"
PID = "1001"


def test_reference_vector() -> None:
    params = {
        "pid": "1001",
        "trade_no": "2026071914104912345",
        "out_trade_no": "FK20260719000001",
        "type": "alipay",
        "name": "视频会员 月卡",
        "money": "2.00",
        "trade_status": "TRADE_SUCCESS",
        "param": "",
        "sign_type": "MD5",
    }
    assert sign(params, KEY) == "4e6dd368ec2726fbe8590c11f05525c4"
    assert sign({**params, "name": " 视频会员 月卡"}, KEY) != sign(params, KEY)  # raw, untrimmed


class FakeEpay(BaseHTTPRequestHandler):
    orders: dict[str, dict[str, Any]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        ok = url.path == "/api.php" and q.get("act") == "order" and q.get("key") == KEY
        found = self.orders.get(q.get("out_trade_no", "")) if ok else None
        data = {"code": 1, **found} if found else {"code": -1, "msg": "not found"}
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def epay_shop(settings: Settings) -> Iterator[tuple[TestClient, fulfilment.Shop, type[FakeEpay]]]:
    handler = type("Handler", (FakeEpay,), {"orders": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = EpayConfig(
        base_url=f"http://127.0.0.1:{server.server_address[1]}", pid=PID, key=SecretStr(KEY)
    )
    container = bootstrap.build(settings.model_copy(update={"epay": config}))
    try:
        with TestClient(create_app(container, worker=False)) as client:
            yield client, container.shop, handler
    finally:
        container.close()
        server.shutdown()
        server.server_close()


def _notify(client: TestClient, params: dict[str, str], key: str = KEY) -> Any:
    signed = {**params, "sign": sign(params, key), "sign_type": "MD5"}
    return client.get(f"/api/v1/payments/epay/notify?{urlencode(signed)}")


def _params(order_no: str, money: str = "25.00", **extra: str) -> dict[str, str]:
    return {
        "pid": PID,
        "trade_no": f"E{order_no}",
        "out_trade_no": order_no,
        "type": "alipay",
        "name": "腾讯视频 VIP",
        "money": money,
        "trade_status": "TRADE_SUCCESS",
        **extra,
    }


def _status(shop: fulfilment.Shop, order_no: str) -> str:
    with shop.db.read() as s:
        return orders.get_order(s, order_no).status


def test_epay_purchase_and_rejections(epay_shop: tuple[TestClient, fulfilment.Shop, Any]) -> None:
    client, shop, _ = epay_shop
    add_keys(shop, make_sku(shop, "CNY-1", price=2500), ["E-1", "E-2", "E-3"])
    r = client.post(
        "/api/v1/orders",
        json={"sku": "CNY-1", "quantity": 1, "email": "a@example.com", "gateway": "epay"},
    )
    assert r.status_code == 201, r.text
    url = urlsplit(r.json()["payment"]["url"])
    sent = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert url.path == "/submit.php" and sent["money"] == "25.00" and sent["pid"] == PID
    assert sent["sign"] == sign(sent, KEY) and sent["notify_url"].endswith(
        "/api/v1/payments/epay/notify"
    )
    a = r.json()["order_no"]

    r = _notify(client, _params(a))
    assert (r.status_code, r.text) == (200, "success")
    assert _status(shop, a) == "delivered"
    assert _notify(client, _params(a)).text == "success"  # the gateway's retry: a no-op

    b = client.post(
        "/api/v1/orders",
        json={"sku": "CNY-1", "quantity": 1, "email": "b@example.com", "gateway": "epay"},
    ).json()["order_no"]
    tampered = {**_params(b), "sign": sign(_params(b), KEY), "sign_type": "MD5", "money": "0.01"}
    assert (
        client.get(f"/api/v1/payments/epay/notify?{urlencode(tampered)}").text
        == "fail: bad-signature"
    )
    assert _notify(client, _params(b, money="0.01")).text == "fail: amount-mismatch"
    assert _notify(client, _params(b), key="wrong-key").text == "fail: bad-signature"
    assert _notify(client, {**_params(b), "pid": "9999"}).text == "fail: merchant-mismatch"
    assert _notify(client, _params(b, trade_status="WAIT_BUYER_PAY")).text == "success"  # not paid
    assert _status(shop, b) == "pending"
    with shop.db.read() as s:
        reasons = sorted(str(n.reason) for n in payments.list_notifications(s) if n.reason)
    assert reasons == [
        "amount-mismatch",
        "bad-signature",
        "bad-signature",
        "merchant-mismatch",
        "not-paid-status",
    ]


def test_lost_notification_is_found_by_query(
    epay_shop: tuple[TestClient, fulfilment.Shop, Any],
) -> None:
    client, shop, fake = epay_shop
    add_keys(shop, make_sku(shop, "CNY-1", price=2500), ["E-1"])
    no = client.post(
        "/api/v1/orders",
        json={"sku": "CNY-1", "quantity": 1, "email": "q@example.com", "gateway": "epay"},
    ).json()["order_no"]
    assert fulfilment.sync_order(shop, no).found is False
    fake.orders[no] = {"trade_no": "E-Q1", "out_trade_no": no, "money": "25.00", "status": 1}
    result = fulfilment.sync_order(shop, no)
    assert result.found and result.status == "delivered"


# -- V1 refunds and configuration, against the loopback gateway in tests/payments/fakes ---------
def _v1(fake: EpayFakeServer, **extra: str) -> EpayGateway:
    opts = {"base_url": fake.url, "pid": PID, "key": KEY, **extra}
    return from_options("epay-main", opts, "http://testserver")


def _refund_request(no: str, refund_no: str, amount: int, trade_no: str = "") -> RefundRequest:
    return RefundRequest(no, trade_no, refund_no, amount, 2500, "CNY", "buyer asked")


@pytest.fixture
def v1_fake() -> Iterator[EpayFakeServer]:
    with EpayFakeServer(pid=PID, key=KEY) as fake:
        yield fake


def test_v1_refund_is_off_unless_enabled(v1_fake: EpayFakeServer) -> None:
    gw = _v1(v1_fake)
    v1_fake.pay("O-1", 2500)
    for call in (gw.refund, gw.query_refund):
        with pytest.raises(RefundUnsupported) as exc:
            call(_refund_request("O-1", "RF-1", 100))
        assert "merchant console" in exc.value.detail
    assert v1_fake.refunds == []
    assert _v1(v1_fake, refund="false").refund_idempotent is False


def test_v1_refund_when_enabled(v1_fake: EpayFakeServer) -> None:
    gw = _v1(v1_fake, refund="true")
    trade = v1_fake.pay("O-2", 2500)
    done = gw.refund(_refund_request("O-2", "RF-1", 1000, trade.trade_no))
    assert (done.status, done.amount_minor) == (RefundStatus.SUCCEEDED, 1000)
    by_order_no = gw.refund(_refund_request("O-2", "RF-2", 1500))  # no trade number recorded
    assert by_order_no.status is RefundStatus.SUCCEEDED
    over = gw.refund(_refund_request("O-2", "RF-3", 1))
    assert over.status is RefundStatus.FAILED and over.detail == "退款金额超出订单可退金额"
    assert [r.money_fen for r in v1_fake.refunds_of("O-2")] == [1000, 1500]
    wrong_key = from_options(
        "epay-main",
        {"base_url": v1_fake.url, "pid": PID, "key": "wrong", "refund": "true"},
        "http://testserver",
    )
    refused = wrong_key.refund(_refund_request("O-2", "RF-4", 1))
    assert refused.status is RefundStatus.FAILED and refused.detail == "KEY校验失败"
    with pytest.raises(RefundUnsupported):  # V1 has no refund query
        gw.query_refund(_refund_request("O-2", "RF-1", 1000))


def test_v1_refund_with_a_lost_answer_is_not_an_error_to_retry(v1_fake: EpayFakeServer) -> None:
    """The request went out and the answer was lost: the refund may well have happened (here it
    did), and V1 has no refund number to make a resend harmless, so the result is PROCESSING
    with a pointer to the console — not an exception a caller would answer with a retry."""
    gw = _v1(v1_fake, refund="true")
    v1_fake.pay("O-3", 2500)
    v1_fake.drop_next = True
    unknown = gw.refund(_refund_request("O-3", "RF-1", 700))
    assert unknown.status is RefundStatus.PROCESSING
    assert unknown.detail == "outcome unknown: check the merchant console"
    assert [r.money_fen for r in v1_fake.refunds_of("O-3")] == [700]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": ""}, "key: is missing"),
        ({"base_url": "pay.example"}, "base_url: must be"),
        ({"pid": "10 01"}, "pid: must be"),
        ({"refund": "maybe"}, "refund: must be true or false"),
    ],
)
def test_v1_from_options_errors(change: dict[str, str], message: str) -> None:
    opts = {"base_url": "https://pay.example", "pid": PID, "key": KEY, **change}
    with pytest.raises(ValueError) as exc:
        from_options("epay", opts, "http://testserver")
    assert str(exc.value).startswith(message) and KEY not in str(exc.value)


def test_v1_spec() -> None:
    assert SPEC.channel == "epay" and SPEC.secrets == frozenset({"key"})
    assert SPEC.required == ("base_url", "pid", "key")
    assert set(SPEC.optional) == {"pay_type", "refund"}
    assert SPEC.warnings is not None
    assert "not https" in SPEC.warnings({"base_url": "http://pay.example"})[0]
    assert SPEC.warnings({"base_url": "https://pay.example"}) == []
    gw = from_options("epay-2", {"base_url": "https://p.example", "pid": "1", "key": "k"}, "x")
    assert gw.name == "epay-2"


def test_v1_non_ascii_sign_is_a_bad_signature_not_a_crash() -> None:
    gw = EpayGateway("https://pay.example", PID, KEY, "http://testserver")
    params = {**_params("FK1"), "sign": "签名不是十六进制", "sign_type": "MD5"}
    with pytest.raises(payments.NotificationRejected) as exc:
        gw.verify_notification(payments.RawNotification("epay", "GET", {}, params, b""))
    assert exc.value.slug == "bad-signature"
