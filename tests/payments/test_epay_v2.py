"""易支付 V2 (RSA): notifications end to end through the shop, query and fix, signed requests and
answers against the loopback platform (tests/payments/fakes/epay.py), refunds, configuration."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from kami import bootstrap, fulfilment, orders, payments
from kami.config import Settings
from kami.kernel.errors import Unavailable
from kami.payments.gateways import epay_v2
from kami.payments.gateways.base import (
    PaymentRequest,
    RawNotification,
    RefundRequest,
    RefundStatus,
    TradeStatus,
)
from kami.web.app import create_app
from tests.conftest import add_keys, make_sku
from tests.payments.fakes.epay import (
    EpayFake,
    bare_base64,
    new_key,
    private_pem,
    public_pem,
)

PID = "1001"
NAME = "epay-rsa"  # an account name, not the channel's: notify URLs and orders use it
Keys = tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]


@pytest.fixture(scope="module")
def keys() -> Keys:
    """(merchant key, platform key), both self-made."""
    return new_key(), new_key()


@pytest.fixture
def fake(keys: Keys) -> Iterator[EpayFake]:
    merchant, platform = keys
    with EpayFake(pid=PID, merchant_public_key=merchant.public_key(), platform_key=platform) as f:
        yield f


def options(fake: EpayFake, keys: Keys, **extra: str) -> dict[str, str]:
    merchant, platform = keys
    return {
        "base_url": fake.url,
        "pid": PID,
        "merchant_private_key": private_pem(merchant),
        "platform_public_key": public_pem(platform),
        **extra,
    }


def gateway(fake: EpayFake, keys: Keys, **extra: str) -> epay_v2.EpayV2Gateway:
    return epay_v2.from_options(NAME, options(fake, keys, **extra), "http://testserver")


@pytest.fixture
def v2_shop(
    settings: Settings, tmp_path: Path, keys: Keys, fake: EpayFake, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, fulfilment.Shop]]:
    merchant, platform = keys
    (tmp_path / "merchant.pem").write_text(private_pem(merchant, pkcs8=True))
    (tmp_path / "platform.pem").write_text(public_pem(platform))
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        f'[{NAME}]\nchannel = "epay_v2"\nbase_url = "{fake.url}"\npid = "{PID}"\n'
        'merchant_private_key_file = "merchant.pem"\nplatform_public_key_file = "platform.pem"\n'
    )
    container = bootstrap.build(settings.model_copy(update={"payment_accounts_file": accounts}))
    try:
        with TestClient(create_app(container, worker=False)) as client:
            yield client, container.shop
    finally:
        container.close()


def _order(client: TestClient, email: str) -> dict[str, Any]:
    r = client.post(
        "/api/v1/orders",
        json={"sku": "CNY-1", "quantity": 1, "email": email, "gateway": NAME},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _notify(client: TestClient, params: dict[str, str]) -> Any:
    return client.get(f"/api/v1/payments/{NAME}/notify?{urlencode(params)}")


def _status(shop: fulfilment.Shop, order_no: str) -> str:
    with shop.db.read() as s:
        return str(orders.get_order(s, order_no).status)


# -- end to end through the shop ---------------------------------------------------------------
def test_v2_notification_delivers_and_each_forgery_is_refused(
    v2_shop: tuple[TestClient, fulfilment.Shop], fake: EpayFake
) -> None:
    client, shop = v2_shop
    add_keys(shop, make_sku(shop, "CNY-1", price=2500), ["V-1", "V-2"])
    created = _order(client, "a@example.com")
    a = created["order_no"]
    # The page payment is a GET of parameters the platform accepts: signed by the merchant key.
    sent = fake.verify_submit(created["payment"]["url"])
    assert sent["money"] == "25.00" and sent["out_trade_no"] == a and sent["sign_type"] == "RSA"
    assert sent["notify_url"] == f"http://testserver/api/v1/payments/{NAME}/notify"

    r = _notify(client, fake.notification(a, "25.00"))
    assert (r.status_code, r.text) == (200, "success")
    assert _status(shop, a) == "delivered"
    assert _notify(client, fake.notification(a, "25.00")).text == "success"  # retry: a no-op

    b = _order(client, "b@example.com")["order_no"]
    now = int(time.time())
    tampered = {**fake.notification(b, "25.00"), "money": "0.01"}
    cases = [
        (tampered, "fail: bad-signature"),
        (fake.notification(b, "25.00", key=new_key()), "fail: bad-signature"),
        (fake.notification(b, "25.00", timestamp=str(now - 600)), "fail: stale-timestamp"),
        (fake.notification(b, "25.00", timestamp=str(now + 600)), "fail: stale-timestamp"),
        (fake.notification(b, "0.01"), "fail: amount-mismatch"),
        (fake.notification(b, "25.00", pid="9999"), "fail: merchant-mismatch"),
        (fake.notification(b, "25.00", trade_status="WAIT_BUYER_PAY"), "success"),  # not paid
    ]
    for params, answer in cases:
        assert _notify(client, params).text == answer, params
    assert _status(shop, b) == "pending"
    with shop.db.read() as s:
        reasons = sorted(str(n.reason) for n in payments.list_notifications(s) if n.reason)
    assert reasons == [
        "amount-mismatch",
        "bad-signature",
        "bad-signature",
        "merchant-mismatch",
        "not-paid-status",
        "stale-timestamp",
        "stale-timestamp",
    ]


def test_v2_lost_notification_is_found_by_query(
    v2_shop: tuple[TestClient, fulfilment.Shop], fake: EpayFake
) -> None:
    client, shop = v2_shop
    add_keys(shop, make_sku(shop, "CNY-1", price=2500), ["V-1"])
    no = _order(client, "q@example.com")["order_no"]
    assert fulfilment.sync_order(shop, no).found is False  # the platform: no such order yet
    fake.pay(no, 2500)  # paid, but the notification never comes
    result = fulfilment.sync_order(shop, no)
    assert result.found and result.status == "delivered"
    queries = [params for path, params in fake.accepted if path == "/api/pay/query"]
    assert len(queries) == 2 and all(q["out_trade_no"] == no for q in queries)
    assert fake.refused == []


# -- the gateway against the platform ----------------------------------------------------------
def _request(no: str, amount: int = 2500) -> PaymentRequest:
    expires = datetime.now(UTC) + timedelta(minutes=15)
    return PaymentRequest(no, amount, "CNY", "腾讯视频 VIP 月卡", expires)


def _refund(no: str, refund_no: str, amount: int, trade_no: str = "") -> RefundRequest:
    return RefundRequest(no, trade_no, refund_no, amount, 2500, "CNY", "buyer asked")


def test_platform_refuses_requests_not_signed_by_the_merchant_key(
    fake: EpayFake, keys: Keys
) -> None:
    fake.pay("K-1", 2500)
    assert gateway(fake, keys).query(_request("K-1")).notice is not None
    assert fake.refused == []
    impostor = (new_key(), keys[1])
    assert gateway(fake, impostor).query(_request("K-1")).notice is None
    assert fake.refused == [
        ("/api/pay/query", "signature does not verify with the merchant public key")
    ]


def test_answers_must_carry_the_platform_signature(fake: EpayFake, keys: Keys) -> None:
    gw = gateway(fake, keys)
    fake.pay("S-1", 2500)
    assert gw.query(_request("S-1")).notice is not None
    for signing in ("none", "other-key", "tampered"):
        fake.answer_signing = signing
        with pytest.raises(Unavailable) as exc:
            gw.query(_request("S-1"))
        assert exc.value.slug == "gateway-bad-signature", signing
        with pytest.raises(Unavailable):
            gw.refund(_refund("S-1", f"R-{signing}", 100))
    assert fake.refunds_of("S-1") != []  # the platform did refund; Kami refused to believe it
    fake.answer_signing = "platform"
    fake.answer_skew = -1000
    with pytest.raises(Unavailable) as exc:
        gw.query(_request("S-1"))
    assert exc.value.slug == "gateway-stale-timestamp"
    # An unsigned refusal is read as a refusal, never as a payment.
    fake.answer_skew, fake.sign_errors = 0, False
    assert gw.query(_request("NOPE")).notice is None


def test_query_reads_paid_and_refunded(fake: EpayFake, keys: Keys) -> None:
    gw = gateway(fake, keys)
    trade = fake.pay("Q-1", 2500)
    notice = gw.query(_request("Q-1")).notice
    assert notice is not None and notice.status is TradeStatus.PAID
    assert (notice.trade_no, notice.amount_minor, notice.gateway) == (trade.trade_no, 2500, NAME)
    gw.refund(_refund("Q-1", "RQ-1", 2500))
    notice = gw.query(_request("Q-1")).notice
    assert notice is not None and notice.status is TradeStatus.REFUNDED


def test_create_mode_answers_qr_or_redirect(fake: EpayFake, keys: Keys) -> None:
    gw = gateway(fake, keys, mode="create", pay_type="wxpay")
    instruction = gw.create_payment(_request("C-1"))
    assert (instruction.kind, instruction.qr) == ("qr", "weixin://wxpay/bizpayurl?pr=FAKE")
    path, sent = fake.accepted[-1]
    assert path == "/api/pay/create" and sent["type"] == "wxpay" and sent["method"] == "web"
    assert fake.trades["C-1"].status == 0
    fake.create_answer = ("jump", "/pay/cashier/C-2")
    instruction = gw.create_payment(_request("C-2"))
    assert (instruction.kind, instruction.url) == ("redirect", f"{fake.url}/pay/cashier/C-2")


def test_refunds_round_trip(fake: EpayFake, keys: Keys) -> None:
    gw = gateway(fake, keys)
    trade = fake.pay("R-1", 2500)
    first = gw.refund(_refund("R-1", "RF-A", 1000, trade.trade_no))
    assert first.status is RefundStatus.SUCCEEDED and first.amount_minor == 1000
    assert first.channel_refund_id is not None
    # Retried with the same refund number (a time-out, a crash): the platform refunds once.
    again = gw.refund(_refund("R-1", "RF-A", 1000, trade.trade_no))
    assert again.status is RefundStatus.SUCCEEDED
    assert again.channel_refund_id == first.channel_refund_id
    assert [r.money_fen for r in fake.refunds_of("R-1")] == [1000]
    sent = [p for path, p in fake.accepted if path == "/api/pay/refund"]
    assert sent[0]["out_refund_no"] == "RF-A" and sent[0]["money"] == "10.00"
    assert sent[0]["trade_no"] == trade.trade_no
    # A second, partial refund, then one more than is left.
    assert gw.refund(_refund("R-1", "RF-B", 1500)).status is RefundStatus.SUCCEEDED
    over = gw.refund(_refund("R-1", "RF-C", 1))
    assert over.status is RefundStatus.FAILED and over.detail == "退款金额超出订单可退金额"
    assert sum(r.money_fen for r in fake.refunds_of("R-1")) == 2500
    assert fake.trades["R-1"].status == 2
    # The refund query.
    found = gw.query_refund(_refund("R-1", "RF-B", 1500))
    assert (found.status, found.amount_minor) == (RefundStatus.SUCCEEDED, 1500)
    missing = gw.query_refund(_refund("R-1", "RF-NEVER", 100))
    assert missing.status is RefundStatus.FAILED and missing.detail == "退款记录不存在"
    assert fake.refused == []


def test_refund_whose_answer_was_lost_is_settled_by_query_and_retry(
    fake: EpayFake, keys: Keys
) -> None:
    gw = gateway(fake, keys)
    fake.pay("L-1", 2500)
    fake.drop_next = True
    with pytest.raises(Unavailable) as exc:
        gw.refund(_refund("L-1", "RF-L", 500))
    assert exc.value.slug == "gateway-unavailable"
    assert [r.money_fen for r in fake.refunds_of("L-1")] == [500]  # it happened
    assert gw.query_refund(_refund("L-1", "RF-L", 500)).status is RefundStatus.SUCCEEDED
    assert gw.refund(_refund("L-1", "RF-L", 500)).status is RefundStatus.SUCCEEDED
    # A build that answers a repeated refund number with an error still reports the refund.
    fake.repeat_refund = "error"
    assert gw.refund(_refund("L-1", "RF-L", 500)).status is RefundStatus.SUCCEEDED
    assert [r.money_fen for r in fake.refunds_of("L-1")] == [500]


def test_notification_parsing_without_the_shop(fake: EpayFake, keys: Keys) -> None:
    gw = gateway(fake, keys)
    params = fake.notification("N-1", "9.90", param="x y+z")
    raw = RawNotification(NAME, "GET", {}, params, b"")
    notice = gw.verify_notification(raw)
    assert (notice.order_no, notice.amount_minor, notice.status) == ("N-1", 990, TradeStatus.PAID)
    # The same parameters as a POST form body are accepted too.
    post = RawNotification(NAME, "POST", {}, {}, urlencode(params).encode())
    assert gw.verify_notification(post) == notice
    for broken, slug in (
        ({**params, "sign": ""}, "bad-signature"),
        ({**params, "sign_type": "MD5"}, "bad-signature"),
        ({k: v for k, v in params.items() if k != "timestamp"}, "bad-signature"),
    ):
        with pytest.raises(payments.NotificationRejected) as exc:
            gw.verify_notification(RawNotification(NAME, "GET", {}, broken, b""))
        assert exc.value.slug == slug
    unsigned_time = fake.notification("N-1", "9.90", timestamp="")
    with pytest.raises(payments.NotificationRejected) as exc:
        gw.verify_notification(RawNotification(NAME, "GET", {}, unsigned_time, b""))
    assert exc.value.slug == "stale-timestamp"
    assert gw.acknowledge(None).body == b"success"


# -- configuration -----------------------------------------------------------------------------
def test_spec() -> None:
    spec = epay_v2.SPEC
    assert spec.channel == "epay_v2" and spec.secrets == frozenset({"merchant_private_key"})
    assert spec.required == ("base_url", "pid", "merchant_private_key", "platform_public_key")
    assert set(spec.optional) == {"pay_type", "mode", "timeout"}
    assert spec.warnings is not None
    assert spec.warnings({"base_url": "http://pay.example"}) != []
    assert spec.warnings({"base_url": "https://pay.example"}) == []


def test_from_options_accepts_console_formats(fake: EpayFake, keys: Keys) -> None:
    merchant, platform = keys
    # Keys as the merchant console shows them: bare base64, no PEM markers.
    gw = epay_v2.from_options(
        NAME,
        {
            **options(fake, keys),
            "merchant_private_key": bare_base64(private_pem(merchant, pkcs8=True)),
            "platform_public_key": bare_base64(public_pem(platform)),
        },
        "http://testserver",
    )
    fake.pay("F-1", 100)
    assert gw.query(_request("F-1", 100)).notice is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"platform_public_key": None}, "platform_public_key: is missing"),
        ({"pid": ""}, "pid: is missing"),
        ({"merchant_private_key": "-----BEGIN RSA PRIVATE KEY-----\ngarbage\n"},
         "merchant_private_key: not a PEM RSA private key"),
        ({"merchant_private_key": "not a key at all"},
         "merchant_private_key: not a PEM RSA private key"),
        ({"platform_public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
         "platform_public_key: not a PEM RSA public key"),
        ({"base_url": "ftp://pay.example"}, "base_url: must be"),
        ({"mode": "popup"}, "mode: must be submit or create"),
        ({"mode": "create"}, "pay_type: required when mode is create"),
        ({"timeout": "0"}, "timeout: seconds"),
        ({"timeout": "soon"}, "timeout: seconds"),
    ],
)  # fmt: skip
def test_from_options_errors(
    fake: EpayFake, keys: Keys, change: dict[str, str | None], message: str
) -> None:
    given = {**options(fake, keys), **change}
    opts = {k: v for k, v in given.items() if v is not None}
    with pytest.raises(ValueError) as exc:
        epay_v2.from_options(NAME, opts, "http://testserver")
    assert str(exc.value).startswith(message), str(exc.value)


def test_from_options_refuses_swapped_keys_without_echoing_them(fake: EpayFake, keys: Keys) -> None:
    merchant, platform = keys
    secret = bare_base64(private_pem(merchant))
    cases = [
        # The merchant's own public half where the platform's belongs.
        ({"platform_public_key": public_pem(merchant)}, "platform_public_key: is the public half"),
        # A private key where a public key belongs, and the other way round.
        ({"platform_public_key": private_pem(merchant)}, "platform_public_key: is a private key"),
        ({"merchant_private_key": public_pem(platform)}, "merchant_private_key: not a PEM RSA"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError) as exc:
            epay_v2.from_options(NAME, {**options(fake, keys), **change}, "http://testserver")
        assert str(exc.value).startswith(message), str(exc.value)
        assert secret[30:60] not in str(exc.value) and "BEGIN" not in str(exc.value)


def test_submit_url_and_qs_roundtrip(fake: EpayFake, keys: Keys) -> None:
    """Values with spaces, '+', '&' and non-ASCII survive the URL and still verify."""
    gw = gateway(fake, keys, pay_type="alipay")
    request = PaymentRequest("U-1", 1999, "CNY", "月卡 A+B & C", _request("U-1").expires_at)
    url = gw.create_payment(request).url
    assert url is not None
    sent = fake.verify_submit(url)
    assert sent["name"] == "月卡 A+B & C" and sent["type"] == "alipay"
    assert dict(parse_qsl(urlsplit(url).query))["money"] == "19.99"
