"""支付宝 (Alipay open platform): the real SDK and a loopback gateway play Alipay's side.

`python-alipay-sdk` proves the two Alipay-side tools used here are faithful: it verifies the
notifications the fake signs (so they are signed exactly as Alipay signs them), and as a client
it gets its request signatures accepted and its answers' signatures verified by the fake (so the
fake checks Kami's requests and signs its answers the way the gateway does). Kami is then tested
against those two, end to end through the shop on both databases.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from alipay import AliPay
from alipay.exceptions import AliPayException, AliPayValidationError
from fastapi.testclient import TestClient

from kami import bootstrap, fulfilment, orders, payments
from kami.config import Settings
from kami.kernel.errors import Unavailable
from kami.payments.gateways import alipay
from kami.payments.gateways.alipay import AlipayGateway, from_options
from kami.web.app import create_app
from tests.conftest import add_keys, make_sku
from tests.payments.fakes.alipay import (
    SELLER_ID,
    FakeAlipay,
    form,
    new_key,
    private_pem,
    public_base64,
    public_pem,
    sign_notification,
)

APP_ID = "2021000000000001"
APP_KEY = new_key()
PLATFORM_KEY = new_key()
OTHER_KEY = new_key()
PUBLIC_URL = "http://testserver"


@pytest.fixture
def fake() -> Iterator[FakeAlipay]:
    server = FakeAlipay(APP_ID, APP_KEY.public_key(), platform_key=PLATFORM_KEY).start()
    yield server
    server.close()


def options(fake: FakeAlipay, **extra: str) -> dict[str, str]:
    return {
        "app_id": APP_ID,
        "app_private_key": private_pem(APP_KEY),
        "alipay_public_key": fake.platform_public_pem,
        "seller_id": SELLER_ID,
        "gateway_url": fake.url,
        **extra,
    }


def gateway(fake: FakeAlipay, **extra: str) -> AlipayGateway:
    return from_options("alipay", options(fake, **extra), PUBLIC_URL)


def sdk(fake: FakeAlipay, app_key: Any = APP_KEY) -> Any:
    client = AliPay(
        appid=APP_ID,
        app_notify_url=None,
        app_private_key_string=private_pem(app_key),
        alipay_public_key_string=fake.platform_public_pem,
        sign_type="RSA2",
    )
    client._gateway = fake.url  # the SDK's test hook (payments.md §6.1)
    return client


def payment(order_no: str, amount: int = 2500, subject: str = "腾讯视频 VIP 月卡") -> Any:
    expires = datetime.now(UTC) + timedelta(minutes=15)
    return payments.PaymentRequest(order_no, amount, "CNY", subject, expires)


def raw(params: dict[str, str], charset: str = "utf-8", name: str = "alipay") -> Any:
    return payments.RawNotification(
        gateway=name,
        method="POST",
        headers={"content-type": "application/x-www-form-urlencoded"},
        query={},
        body=form(params, charset),
    )


def rejected(gw: AlipayGateway, params: dict[str, str], charset: str = "utf-8") -> str:
    with pytest.raises(payments.NotificationRejected) as caught:
        gw.verify_notification(raw(params, charset))
    assert gw.acknowledge(caught.value).body == b"failure"
    return caught.value.slug


# -- the Alipay side is faithful ------------------------------------------------------------------
def test_the_sdk_verifies_what_the_fake_signs(fake: FakeAlipay) -> None:
    fake.pay("N1", 46000, subject="大乐透2.1")
    params = fake.notification("N1")
    client = sdk(fake)
    data = dict(params)
    signature = data.pop("sign")
    assert client.verify(data, signature) is True  # (the SDK pops sign_type from data)
    tampered = {**params, "total_amount": "0.01"}
    del tampered["sign"]
    assert client.verify(tampered, signature) is False
    forged = sign_notification({k: v for k, v in params.items() if k != "sign"}, OTHER_KEY)
    assert client.verify({k: v for k, v in forged.items() if k != "sign"}, forged["sign"]) is False


def test_the_sdk_as_client_against_the_fake(fake: FakeAlipay) -> None:
    client = sdk(fake)
    answer = client.api_alipay_trade_precreate(
        subject="视频会员", out_trade_no="SDK-1", total_amount="12.34"
    )
    assert answer["code"] == "10000" and answer["qr_code"].startswith("https://qr.alipay.com/")
    assert fake.calls[-1].signature_ok and fake.calls[-1].http == "GET"
    assert client.api_alipay_trade_query(out_trade_no="SDK-1")["trade_status"] == "WAIT_BUYER_PAY"
    fake.pay("SDK-1")
    refund = client.api_alipay_trade_refund("2.00", out_trade_no="SDK-1", out_request_no="R1")
    assert (refund["code"], refund["fund_change"]) == ("10000", "Y")
    # A client holding another app key is refused, as the gateway refuses a bad signature.
    with pytest.raises(AliPayException, match=r"isv\.invalid-signature"):
        sdk(fake, OTHER_KEY).api_alipay_trade_query(out_trade_no="SDK-1")
    assert not fake.calls[-1].signature_ok
    # An answer changed after it was signed fails the SDK's own check.
    fake.fault = "tamper"
    with pytest.raises(AliPayValidationError):
        client.api_alipay_trade_query(out_trade_no="SDK-1")


# -- creating payments ---------------------------------------------------------------------------
def test_precreate_returns_the_qr_code(fake: FakeAlipay) -> None:
    gw = gateway(fake, product="precreate")
    instruction = gw.create_payment(payment("Q-1", 1234, subject="a/b=c&d"))
    trade = fake.trades["Q-1"]
    assert instruction.kind == "qr" and instruction.url is None
    assert instruction.qr == f"https://qr.alipay.com/bax{trade.trade_no[-12:]}"
    call = fake.calls[-1]
    assert call.signature_ok and call.method == "alipay.trade.precreate" and call.http == "POST"
    assert (trade.total, trade.product_code, trade.subject) == (
        1234,
        "FACE_TO_FACE_PAYMENT",
        "a b c d",
    )
    assert call.params["notify_url"] == f"{PUBLIC_URL}/api/v1/payments/alipay/notify"
    assert (call.params["format"], call.params["charset"], call.params["version"]) == (
        "JSON",
        "utf-8",
        "1.0",
    )
    # timestamp and time_expire are Beijing wall-clock time, yyyy-MM-dd HH:mm:ss
    stamp = datetime.strptime(call.params["timestamp"], "%Y-%m-%d %H:%M:%S")
    beijing = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=8)
    assert abs(stamp - beijing) < timedelta(minutes=5)
    assert trade.time_expire is not None and trade.time_expire > call.params["timestamp"]


@pytest.mark.parametrize(
    ("product", "method", "code"),
    [
        ("page", "alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"),
        ("wap", "alipay.trade.wap.pay", "QUICK_WAP_WAY"),
    ],
)
def test_page_and_wap_redirect_to_a_signed_url(
    fake: FakeAlipay, product: str, method: str, code: str
) -> None:
    gw = gateway(fake, product=product, return_url="https://shop.example/thanks/{order_no}")
    instruction = gw.create_payment(payment("P-1"))
    assert instruction.kind == "redirect" and instruction.url is not None
    assert instruction.url.startswith(fake.url + "?")
    sent = dict(parse_qsl(urlsplit(instruction.url).query, keep_blank_values=True))
    assert sent["method"] == method and sent["return_url"] == "https://shop.example/thanks/P-1"
    assert fake.verify_request(sent)
    assert not fake.verify_request(
        {**sent, "biz_content": sent["biz_content"].replace("25.00", "0.01")}
    )
    # The buyer's browser opens it: the gateway accepts the signature and shows its cashier.
    with urllib.request.urlopen(instruction.url) as page:
        assert "收银台 P-1" in page.read().decode()
    trade = fake.trades["P-1"]
    assert (trade.total, trade.product_code, trade.status) == (2500, code, "WAIT_BUYER_PAY")


def test_a_tampered_or_unsigned_answer_is_not_trusted(fake: FakeAlipay) -> None:
    gw = gateway(fake, product="precreate")
    for fault in ("tamper", "unsigned", "garbage", "drop"):
        fake.fault = fault
        with pytest.raises(Unavailable) as caught:
            gw.create_payment(payment(f"T-{fault}"))
        assert caught.value.slug in ("bad-signature", "gateway-error", "gateway-unavailable")
    fake.fault = "tamper"
    with pytest.raises(Unavailable, match="does not verify"):
        gw.query(payment("T-x"))
    # The console's 支付宝公钥 of another account: Alipay's answers do not verify.
    stranger = from_options(
        "alipay",
        options(fake, product="precreate", alipay_public_key=public_pem(OTHER_KEY)),
        PUBLIC_URL,
    )
    with pytest.raises(Unavailable, match="does not verify under alipay_public_key"):
        stranger.create_payment(payment("T-2"))
    with pytest.raises(Unavailable, match="CNY only"):
        gw.create_payment(payments.PaymentRequest("T-3", 100, "USD", "x", datetime.now(UTC)))


# -- notifications ---------------------------------------------------------------------------------
def test_notification_verifies_and_maps_statuses(fake: FakeAlipay) -> None:
    gw = gateway(fake)
    fake.pay("N-1", 2500)
    # notify_time a day old: Alipay retries for 25 hours, so it is no freshness window.
    day_old = (datetime.now(UTC) + timedelta(hours=8 - 24)).strftime("%Y-%m-%d %H:%M:%S")
    notice = gw.verify_notification(raw(fake.notification("N-1", notify_time=day_old)))
    assert notice == payments.PaymentNotice(
        "alipay",
        "N-1",
        fake.trades["N-1"].trade_no,
        2500,
        "CNY",
        payments.TradeStatus.PAID,
        SELLER_ID,
    )
    assert gw.acknowledge(None) == payments.Ack(200, b"success", "text/plain")
    for status, expected in [
        ("TRADE_FINISHED", payments.TradeStatus.PAID),
        ("WAIT_BUYER_PAY", payments.TradeStatus.PENDING),
        ("TRADE_CLOSED", payments.TradeStatus.CLOSED),
    ]:
        found = gw.verify_notification(raw(fake.notification("N-1", trade_status=status)))
        assert isinstance(found, payments.PaymentNotice) and found.status is expected
    # A payment notify may carry refund_fee=0.00 (Alipay's own example does): still a payment.
    assert isinstance(
        gw.verify_notification(raw(fake.notification("N-1", refund_fee="0.00"))),
        payments.PaymentNotice,
    )
    # GET with the parameters in the query string is accepted too.
    get = payments.RawNotification("alipay", "GET", {}, fake.notification("N-1"), b"")
    got = gw.verify_notification(get)
    assert isinstance(got, payments.PaymentNotice) and got.status is payments.TradeStatus.PAID


def test_gbk_notification_verifies(fake: FakeAlipay) -> None:
    gw = gateway(fake)
    fake.pay("G-1", 990, subject="爱奇艺黄金会员 年卡")
    params = fake.notification("G-1", charset="gbk", body="视频会员·直充")
    notice = gw.verify_notification(raw(params, "gbk"))
    assert isinstance(notice, payments.PaymentNotice) and notice.amount_minor == 990
    # The SDK always encodes UTF-8, so it cannot verify this one (payments.md §1.4) …
    data = {k: v for k, v in params.items() if k != "sign"}
    assert sdk(fake).verify(data, params["sign"]) is False
    # … and the same bytes read as UTF-8 do not verify for Kami either.
    utf8 = {**params, "charset": "utf-8"}
    assert rejected(gw, utf8, "gbk") in ("bad-signature", "malformed-notification")


def test_each_rejection_names_its_reason(fake: FakeAlipay) -> None:
    gw = gateway(fake)
    fake.pay("R-1", 2500)
    good = fake.notification("R-1")
    assert rejected(gw, {**good, "total_amount": "0.01"}) == "bad-signature"
    assert rejected(gw, {k: v for k, v in good.items() if k != "sign"}) == "bad-signature"
    assert rejected(gw, {**good, "extra": ""}) == "bad-signature"  # empty values are signed too
    forged = sign_notification({k: v for k, v in good.items() if k != "sign"}, OTHER_KEY)
    assert rejected(gw, forged) == "bad-signature"
    assert rejected(gw, {**good, "sign_type": "RSA"}) == "bad-signature"
    assert rejected(gw, fake.notification("R-1", app_id="2021000000009999")) == "app-mismatch"
    assert rejected(gw, fake.notification("R-1", seller_id="2088000000000000")) == (
        "merchant-mismatch"
    )
    assert rejected(gw, fake.notification("R-1", total_amount="25.001")) == "malformed-notification"
    assert (
        rejected(gw, fake.notification("R-1", charset="iso-8859-1", subject="x"))
        == "malformed-notification"
    )
    unknown = fake.notification("R-1", trade_status="TRADE_PENDING")
    with pytest.raises(payments.NotificationRejected) as caught:
        gw.verify_notification(raw(unknown))
    assert caught.value.slug == "not-paid-status"
    assert gw.acknowledge(caught.value).body == b"success"  # a retry could not change it
    # Without a configured seller_id, any seller of this app is accepted.
    lenient = gateway(fake, seller_id="")
    assert lenient.verify_notification(raw(fake.notification("R-1", seller_id="2088000000000000")))


# -- query ---------------------------------------------------------------------------------------
def test_query_maps_the_trade(fake: FakeAlipay) -> None:
    gw = gateway(fake, product="precreate")
    assert gw.query(payment("Q-404")).notice is None
    gw.create_payment(payment("Q-1", 1990))
    result = gw.query(payment("Q-1", 1990))
    assert result.notice is not None and result.notice.status is payments.TradeStatus.PENDING
    assert '"trade_status":"WAIT_BUYER_PAY"' in result.raw
    fake.pay("Q-1")
    notice = gw.query(payment("Q-1", 1990)).notice
    assert notice == payments.PaymentNotice(
        "alipay",
        "Q-1",
        fake.trades["Q-1"].trade_no,
        1990,
        "CNY",
        payments.TradeStatus.PAID,
        SELLER_ID,
    )
    assert fake.calls[-1].signature_ok and fake.calls[-1].method == "alipay.trade.query"
    fake.fault = "drop"
    with pytest.raises(Unavailable):
        gw.query(payment("Q-1"))


# -- refunds ------------------------------------------------------------------------------------
def refund(no: str, amount: int, order_no: str = "F-1") -> payments.RefundRequest:
    return payments.RefundRequest(order_no, "T", no, amount, 10000, "CNY", "买家申请退款")


def test_refunds_partial_idempotent_and_capped(fake: FakeAlipay) -> None:
    gw = gateway(fake)
    fake.pay("F-1", 10000)
    first = gw.refund(refund("RF-1", 3000))
    assert (first.status, first.amount_minor, first.refund_no) == (
        payments.RefundStatus.SUCCEEDED,
        3000,
        "RF-1",
    )
    sent = fake.calls[-1]
    assert sent.signature_ok and sent.method == "alipay.trade.refund"
    assert '"out_request_no":"RF-1"' in sent.params["biz_content"]
    assert '"refund_amount":"30.00"' in sent.params["biz_content"]
    # A retry with the same refund number (after a time-out, say): Alipay answers fund_change=N,
    # the refund query confirms it, and the money went back once.
    again = gw.refund(refund("RF-1", 3000))
    assert again.status is payments.RefundStatus.SUCCEEDED and again.amount_minor == 3000
    assert [c.method for c in fake.calls[-2:]] == [
        "alipay.trade.refund",
        "alipay.trade.fastpay.refund.query",
    ]
    assert list(fake.refunds) == [("F-1", "RF-1")] and fake.refunded_total("F-1") == 3000
    assert gw.refund(refund("RF-2", 5000)).status is payments.RefundStatus.SUCCEEDED
    over = gw.refund(refund("RF-3", 2001))
    assert (over.status, over.detail) == (payments.RefundStatus.FAILED, "退款金额超限")
    assert "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL" in over.raw
    assert fake.refunded_total("F-1") == 8000
    assert gw.refund(refund("RF-4", 2000)).status is payments.RefundStatus.SUCCEEDED
    assert fake.trades["F-1"].status == "TRADE_CLOSED"  # fully refunded
    closed = gw.refund(refund("RF-5", 1))
    assert (closed.status, closed.detail) == (payments.RefundStatus.FAILED, "交易已经关闭")
    assert fake.refunded_total("F-1") == 10000 and len(fake.refunds) == 3

    found = gw.query_refund(refund("RF-2", 5000))
    assert (found.status, found.amount_minor) == (payments.RefundStatus.SUCCEEDED, 5000)
    missing = gw.query_refund(refund("RF-9", 100))
    assert missing.status is payments.RefundStatus.FAILED and missing.detail
    unknown = gw.query_refund(refund("RF-1", 100, order_no="F-404"))
    assert (unknown.status, unknown.detail) == (payments.RefundStatus.FAILED, "交易不存在")

    fake.pay("F-2", 500)
    fake.fault = "drop"  # the outcome is unknown: Unavailable, never FAILED
    with pytest.raises(Unavailable):
        gw.refund(refund("RF-6", 100, order_no="F-2"))
    fake.fault = "tamper"
    with pytest.raises(Unavailable):
        gw.refund(refund("RF-6", 100, order_no="F-2"))
    assert fake.refunded_total("F-2") == 100  # the tampered answer's refund did happen …
    assert gw.refund(refund("RF-6", 100, order_no="F-2")).status is (
        payments.RefundStatus.SUCCEEDED  # … and asking again with its number refunds no more
    )
    assert fake.refunded_total("F-2") == 100


def test_refund_notification_is_a_refund_notice(fake: FakeAlipay) -> None:
    gw = gateway(fake)
    trade = fake.pay("F-1", 10000)
    gw.refund(refund("RF-1", 3000))
    gw.refund(refund("RF-2", 2500))
    params = fake.refund_notification("F-1", "RF-2")
    assert params["refund_fee"] == "55.00" and params["trade_status"] == "TRADE_SUCCESS"
    notice = gw.verify_notification(raw(params))
    # refund_fee is cumulative (55.00): the amount of this refund is asked of Alipay.
    assert notice == payments.RefundNotice(
        gateway="alipay",
        order_no="F-1",
        trade_no=trade.trade_no,
        refund_no="RF-2",
        channel_refund_id=None,
        amount_minor=2500,
        currency="CNY",
        status=payments.RefundStatus.SUCCEEDED,
        merchant_id=SELLER_ID,
    )
    gw.refund(refund("RF-3", 4500))
    closing = gw.verify_notification(raw(fake.refund_notification("F-1", "RF-3")))
    assert isinstance(closing, payments.RefundNotice) and closing.amount_minor == 4500
    # A refund notify for a refund Alipay does not know is refused, and retried by Alipay.
    assert rejected(gw, fake.notification("F-1", out_biz_no="RF-X", refund_fee="1.00")) == (
        "unknown-refund"
    )


# -- configuration --------------------------------------------------------------------------------
def test_from_options_accepts_the_console_formats(fake: FakeAlipay) -> None:
    der = "".join(private_pem(APP_KEY, pkcs8=True).strip().splitlines()[1:-1])
    for private in (private_pem(APP_KEY), private_pem(APP_KEY, pkcs8=True), der):
        for public in (fake.platform_public_pem, public_base64(PLATFORM_KEY)):
            gw = from_options(
                "alipay-hk",
                options(fake, app_private_key=private, alipay_public_key=public),
                PUBLIC_URL,
            )
            assert gw.name == "alipay-hk"
    assert gateway(fake).query(payment("none")).notice is None  # and it speaks with that key
    assert alipay.SPEC.channel == "alipay" and alipay.SPEC.secrets == {"app_private_key"}
    assert alipay.warnings({}) == []
    assert any("http" in w for w in alipay.warnings({"gateway_url": fake.url}))
    assert any("sandbox" in w for w in alipay.warnings({"gateway_url": alipay.SANDBOX_URL}))


def test_from_options_errors_name_the_option_and_hide_the_key(fake: FakeAlipay) -> None:
    good = options(fake)
    secret_lines = set(private_pem(APP_KEY).splitlines()[1:-1])

    def error(**changed: str) -> str:
        given = {k: v for k, v in {**good, **changed}.items() if v != "<drop>"}
        with pytest.raises(ValueError) as caught:
            from_options("alipay", given, PUBLIC_URL)
        message = str(caught.value)
        assert not any(line in message for line in secret_lines)
        assert "MII" not in message  # no base64 key material of any kind
        return message

    for option in ("app_id", "app_private_key", "alipay_public_key"):
        assert error(**{option: "<drop>"}) == f"{option}: missing"
    assert error(
        app_private_key="-----BEGIN RSA PRIVATE KEY-----\ngarbage\n-----END RSA PRIVATE KEY-----"
    ).startswith("app_private_key: not an RSA private key")
    assert error(app_private_key="not a key at all").startswith("app_private_key:")
    assert error(app_private_key=public_pem(APP_KEY)).startswith(
        "app_private_key: this is a public key"
    )
    assert error(alipay_public_key="garbage!").startswith("alipay_public_key:")
    assert error(alipay_public_key=private_pem(PLATFORM_KEY)).startswith(
        "alipay_public_key: this is a private key"
    )
    assert error(alipay_public_key=public_pem(APP_KEY)) == (
        "alipay_public_key: this is the app's own public key (应用公钥); "
        "paste the 支付宝公钥 from the console"
    )
    assert error(alipay_public_key=public_base64(APP_KEY)).startswith(
        "alipay_public_key: this is the app's own public key"
    )
    assert error(app_id="abc").startswith("app_id:")
    assert error(seller_id="x").startswith("seller_id:")
    assert error(product="app").startswith("product:")
    assert error(gateway_url="ftp://x").startswith("gateway_url:")
    assert error(return_url="javascript:x").startswith("return_url:")
    assert error(timeout="soon").startswith("timeout:")


# -- end to end through the shop -------------------------------------------------------------------
@pytest.fixture
def alipay_shop(
    settings: Settings, fake: FakeAlipay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, fulfilment.Shop]]:
    (tmp_path / "app.pem").write_text(private_pem(APP_KEY))
    (tmp_path / "alipay_public.txt").write_text(public_base64(PLATFORM_KEY))  # as the console shows
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        "[alipay-main]\n"
        'channel = "alipay"\n'
        f'app_id = "{APP_ID}"\n'
        f'seller_id = "{SELLER_ID}"\n'
        f'gateway_url = "{fake.url}"\n'
        'app_private_key_file = "app.pem"\n'
        'alipay_public_key_file = "alipay_public.txt"\n'
    )
    container = bootstrap.build(settings.model_copy(update={"payment_accounts_file": accounts}))
    try:
        with TestClient(create_app(container, worker=False)) as client:
            yield client, container.shop
    finally:
        container.close()


NOTIFY = "/api/v1/payments/alipay-main/notify"


def _order(client: TestClient, email: str) -> tuple[str, str]:
    r = client.post(
        "/api/v1/orders",
        json={"sku": "CNY-1", "quantity": 1, "email": email, "gateway": "alipay-main"},
    )
    assert r.status_code == 201, r.text
    return r.json()["order_no"], r.json()["payment"]["url"]


def _post(client: TestClient, params: dict[str, str], charset: str = "utf-8") -> Any:
    content_type = f"application/x-www-form-urlencoded; charset={charset}"
    return client.post(
        NOTIFY, content=form(params, charset), headers={"Content-Type": content_type}
    )


def _status(shop: fulfilment.Shop, order_no: str) -> str:
    with shop.db.read() as s:
        return orders.get_order(s, order_no).status


def test_alipay_purchase_and_rejections(
    alipay_shop: tuple[TestClient, fulfilment.Shop], fake: FakeAlipay
) -> None:
    client, shop = alipay_shop
    add_keys(shop, make_sku(shop, "CNY-1", price=2500), ["A-1", "A-2", "A-3"])
    a, url = _order(client, "a@example.com")
    sent = dict(parse_qsl(urlsplit(url).query))
    assert url.startswith(fake.url) and fake.verify_request(sent)
    assert sent["notify_url"] == f"http://testserver{NOTIFY}"
    with urllib.request.urlopen(url) as page:  # the buyer opens the cashier …
        assert page.status == 200
    fake.pay(a)  # … and pays; Alipay posts the notification
    r = _post(client, fake.notification(a))
    assert (r.status_code, r.text, r.headers["content-type"].split(";")[0]) == (
        200,
        "success",
        "text/plain",
    )
    assert _status(shop, a) == "delivered"
    assert _post(client, fake.notification(a)).text == "success"  # Alipay's retry: a no-op
    assert _post(client, fake.notification(a, trade_status="TRADE_FINISHED")).text == "success"

    b, _ = _order(client, "b@example.com")
    fake.pay(b, 2500)
    good = fake.notification(b)
    assert _post(client, {**good, "total_amount": "0.01"}).text == "failure"
    forged = sign_notification({k: v for k, v in good.items() if k != "sign"}, OTHER_KEY)
    assert _post(client, forged).text == "failure"
    assert _post(client, fake.notification(b, total_amount="0.01")).text == "failure"
    assert _post(client, fake.notification(b, app_id="2021000000009999")).text == "failure"
    assert _post(client, fake.notification(b, seller_id="2088000000000000")).text == "failure"
    assert _post(client, fake.notification(b, trade_status="WAIT_BUYER_PAY")).text == "success"
    assert _status(shop, b) == "pending"
    with shop.db.read() as s:
        reasons = sorted(
            str(n.reason) for n in payments.list_notifications(s, order_no=None) if n.reason
        )
    assert reasons == [
        "amount-mismatch",
        "app-mismatch",
        "bad-signature",
        "bad-signature",
        "merchant-mismatch",
        "not-paid-status",
    ]

    # A GBK notification (Chinese subject and body) is verified over its GBK bytes.
    c, _ = _order(client, "c@example.com")
    fake.pay(c, 2500, subject="腾讯视频 VIP 月卡")
    gbk = fake.notification(c, charset="gbk", body="视频会员·卡密")
    assert _post(client, gbk, "gbk").text == "success"
    assert _status(shop, c) == "delivered"


def test_lost_notification_is_found_by_query(
    alipay_shop: tuple[TestClient, fulfilment.Shop], fake: FakeAlipay
) -> None:
    client, shop = alipay_shop
    add_keys(shop, make_sku(shop, "CNY-1", price=2500), ["A-1"])
    no, _ = _order(client, "q@example.com")
    assert fulfilment.sync_order(shop, no).found is False  # the cashier was never opened
    fake.pay(no, 2500)  # paid, but the notification never arrives
    result = fulfilment.sync_order(shop, no)
    assert result.found and result.status == "delivered"
    assert fake.calls[-1].method == "alipay.trade.query" and fake.calls[-1].signature_ok


def test_refund_through_the_shop(
    alipay_shop: tuple[TestClient, fulfilment.Shop], fake: FakeAlipay
) -> None:
    client, shop = alipay_shop
    add_keys(shop, make_sku(shop, "CNY-1", price=2500), ["A-1"])
    no, _ = _order(client, "r@example.com")
    fake.pay(no, 2500)
    assert _post(client, fake.notification(no)).text == "success"
    first = fulfilment.request_refund(
        shop, no, amount_minor=1000, reason="买家申请退款", request_key="refund-1"
    )
    assert first.status == "succeeded"
    again = fulfilment.request_refund(
        shop, no, amount_minor=1000, reason="买家申请退款", request_key="refund-1"
    )
    assert again.refund_no == first.refund_no and again.status == "succeeded"
    assert list(fake.refunds) == [(no, first.refund_no)] and fake.refunded_total(no) == 1000
    # Alipay's trade notify after the refund (cumulative refund_fee) settles nothing twice.
    assert _post(client, fake.refund_notification(no, first.refund_no)).text == "success"
    with shop.db.read() as s:
        last = payments.list_notifications(s, order_no=no, limit=1)[0]
    assert (last.verdict, last.reason) == ("duplicate", None)  # already settled by the answer
    assert fake.refunded_total(no) == 1000
