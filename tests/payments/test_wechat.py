"""WeChat Pay API v3: the WeChat side is built the way WeChat builds it (self-made platform keys and
certificates, AES-GCM resource, the five headers) and cross-checked with the real SDK
(`wechatpayv3`) in both directions, then Kami's adapter is tested against it: notifications end
to end through the shop, query-and-fix, Native/H5/JSAPI orders, refunds and configuration."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from wechatpayv3 import WeChatPay, WeChatPayType

from kami import bootstrap, fulfilment, orders, payments
from kami.config import Settings
from kami.kernel.errors import Unavailable
from kami.payments.gateways import wechat
from kami.web.app import create_app
from tests.conftest import add_keys, make_sku
from tests.payments.fakes.wechat import (
    FakeWechatPay,
    certificate_pem,
    make_certificate,
    new_key,
    private_pem,
    public_pem,
    rfc3339,
    rsa_ok,
    serial_of,
)

MCHID = "1900000109"
APPID = "wxd678efh567hg6787"
APIV3_KEY = "Kami0APIv3Key0for0Tests012345678"  # 32 bytes, as WeChat requires
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
PUB_KEY_ID = "PUB_KEY_ID_0119000001092025061600112233445566"
PUBLIC_URL = "https://shop.example"


@dataclass(frozen=True)
class Keys:
    merchant: rsa.RSAPrivateKey
    old_platform: rsa.RSAPrivateKey  # the older of two platform certificates (rotation)
    platform: rsa.RSAPrivateKey
    wechatpay: rsa.RSAPrivateKey  # the pair of the "WeChat Pay public key"
    old_certificate: x509.Certificate
    certificate: x509.Certificate


@pytest.fixture(scope="module")
def keys() -> Keys:
    old, new = new_key(), new_key()
    return Keys(new_key(), old, new, new_key(), make_certificate(old), make_certificate(new))


@pytest.fixture
def fake(keys: Keys) -> Iterator[FakeWechatPay]:
    server = FakeWechatPay(
        mchid=MCHID,
        appid=APPID,
        apiv3_key=APIV3_KEY,
        merchant_keys={MERCHANT_SERIAL: keys.merchant.public_key()},
        platform_keys={
            serial_of(keys.certificate): keys.platform,
            serial_of(keys.old_certificate): keys.old_platform,
            PUB_KEY_ID: keys.wechatpay,
        },
    )
    with server.running():
        yield server


def options(keys: Keys, fake: FakeWechatPay, **changes: str) -> dict[str, str]:
    given = {
        "mchid": MCHID,
        "appid": APPID,
        "apiv3_key": APIV3_KEY,
        "merchant_private_key": private_pem(keys.merchant),
        "merchant_serial_no": MERCHANT_SERIAL,
        "platform_certificate": certificate_pem(keys.old_certificate)
        + certificate_pem(keys.certificate),
        "wechatpay_public_key": public_pem(keys.wechatpay),
        "wechatpay_public_key_id": PUB_KEY_ID,
        "api_base": fake.url,
    }
    given.update(changes)
    return {k: v for k, v in given.items() if v}


def gateway(keys: Keys, fake: FakeWechatPay, **changes: str) -> wechat.WechatGateway:
    return wechat.from_options("wechat", options(keys, fake, **changes), PUBLIC_URL)


def request(
    order_no: str = "K260719ABCDEFGHJKMNPQRSTVW", amount: int = 2500
) -> payments.PaymentRequest:
    expires = datetime(2026, 7, 19, 6, 30, tzinfo=UTC)
    return payments.PaymentRequest(order_no, amount, "CNY", "腾讯视频 VIP 月卡", expires)


def transaction(fake: FakeWechatPay, order_no: str, **changes: Any) -> dict[str, Any]:
    """The decrypted payload of TRANSACTION.SUCCESS for a paid trade of the fake's ledger."""
    trade = {k: v for k, v in fake.transactions[order_no].items() if k != "notify_url"}
    return {**trade, **changes}


def raw(headers: dict[str, str], body: bytes) -> payments.RawNotification:
    lower = {k.lower(): v for k, v in headers.items()}
    return payments.RawNotification("wechat", "POST", lower, {}, body)


def sdk(
    keys: Keys, tmp_path: Path, *, public_key: bool, merchant: rsa.RSAPrivateKey | None = None
) -> Any:
    """The real SDK as the merchant: platform-certificate mode (cert_dir) or public-key mode."""
    mode: dict[str, Any]
    if public_key:
        mode = {"public_key": public_pem(keys.wechatpay), "public_key_id": PUB_KEY_ID}
    else:
        certs = tmp_path / "wechat-certs"
        certs.mkdir(exist_ok=True)
        for cert in (keys.old_certificate, keys.certificate):
            (certs / f"{serial_of(cert)}.pem").write_text(certificate_pem(cert))
        mode = {"cert_dir": str(certs)}
    return WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=MCHID,
        private_key=private_pem(merchant or keys.merchant),
        cert_serial_no=MERCHANT_SERIAL,
        appid=APPID,
        apiv3_key=APIV3_KEY,
        notify_url=f"{PUBLIC_URL}/api/v1/payments/wechat/notify",
        **mode,
    )


def reject(gw: wechat.WechatGateway, headers: dict[str, str], body: bytes) -> str:
    with pytest.raises(payments.NotificationRejected) as caught:
        gw.verify_notification(raw(headers, body))
    return caught.value.slug


# -- the test's WeChat side is faithful: the real SDK accepts what it builds --------------------
def test_sdk_accepts_our_notifications_in_both_serial_forms(
    keys: Keys, fake: FakeWechatPay, tmp_path: Path
) -> None:
    gw = gateway(keys, fake)
    no = "K260719SDKNOTIFY0000000001"
    gw.create_payment(request(no))
    fake.pay(no)
    by_certificate, by_public_key = (
        sdk(keys, tmp_path, public_key=False),
        sdk(keys, tmp_path, public_key=True),
    )
    for client, serial in (
        (by_certificate, serial_of(keys.certificate)),
        (by_certificate, serial_of(keys.old_certificate)),
        (by_public_key, PUB_KEY_ID),
    ):
        headers, body = fake.notification(
            "TRANSACTION.SUCCESS", transaction(fake, no), serial=serial
        )
        # FastAPI hands the SDK lower-case names, exactly as Kami's route receives them.
        decoded = client.callback({k.lower(): v for k, v in headers.items()}, body)
        assert decoded["event_type"] == "TRANSACTION.SUCCESS"
        assert decoded["resource"]["out_trade_no"] == no
        assert decoded["resource"]["amount"]["total"] == 2500
        notice = gw.verify_notification(raw(headers, body))
        assert notice == payments.PaymentNotice(
            "wechat",
            no,
            fake.transactions[no]["transaction_id"],
            2500,
            "CNY",
            payments.TradeStatus.PAID,
            MCHID,
        )
        tampered = body.replace(b'"resource_type"', b' "resource_type"')
        assert client.callback(headers, tampered) is None
        assert reject(gw, headers, tampered) == "bad-signature"
    # The SDK has no freshness check (a 10-minute-old callback passes); Kami refuses it.
    stale = fake.notification(
        "TRANSACTION.SUCCESS", transaction(fake, no), timestamp=int(time.time()) - 600
    )
    assert by_certificate.callback(*stale)["resource"]["out_trade_no"] == no
    assert reject(gw, *stale) == "stale-timestamp"
    # Refund callbacks too.
    result = gw.refund(payments.RefundRequest(no, "", "R-SDK-1", 500, 2500, "CNY", "test"))
    assert result.status is payments.RefundStatus.SUCCEEDED
    headers, body = fake.notification("REFUND.SUCCESS", fake.refund_resource("R-SDK-1"))
    assert by_certificate.callback(headers, body)["resource"]["out_refund_no"] == "R-SDK-1"


def test_fake_checks_request_signatures_the_way_wechat_does(
    keys: Keys, fake: FakeWechatPay, tmp_path: Path
) -> None:
    for public_key in (True, False):
        client = sdk(keys, tmp_path, public_key=public_key)
        client._core._gate_way = fake.url
        no = f"SDKORDER{int(public_key)}000000000001"
        expires = rfc3339(datetime.now(UTC) + timedelta(minutes=30))
        code, text = client.pay(
            description="测试",
            out_trade_no=no,
            amount={"total": 100, "currency": "CNY"},
            time_expire=expires,
        )
        # The SDK verified the fake's answer with the platform key (it raises otherwise).
        assert code == 200 and json.loads(text)["code_url"].startswith("weixin://wxpay/")
        assert fake.seen[-1].target == "/v3/pay/transactions/native"
        code, text = client.query(out_trade_no=no)
        assert code == 200 and json.loads(text)["trade_state"] == "NOTPAY"
        assert fake.seen[-1].target == f"/v3/pay/transactions/out-trade-no/{no}?mchid={MCHID}"
        fake.pay(no)
        code, text = client.refund(
            out_refund_no=f"R{no}",
            amount={"refund": 40, "total": 100, "currency": "CNY"},
            out_trade_no=no,
        )
        assert code == 200 and json.loads(text)["status"] == "SUCCESS"
        code, text = client.query_refund(out_refund_no=f"R{no}")
        assert code == 200 and json.loads(text)["amount"]["refund"] == 40
    assert fake.refused == []
    # A request signed with another key under the merchant's serial: WeChat's 401 SIGN_ERROR.
    impostor = sdk(keys, tmp_path, public_key=True, merchant=new_key())
    impostor._core._gate_way = fake.url
    code, text = impostor.query(out_trade_no="SDKORDER1000000000001")
    assert code == 401 and json.loads(text)["code"] == "SIGN_ERROR"
    assert fake.refused[-1][1] == "signature does not verify"
    # And the SDK really checks the answers it accepted above.
    fake.response_signing = "wrong-key"
    checking = sdk(keys, tmp_path, public_key=True)
    checking._core._gate_way = fake.url
    with pytest.raises(Exception, match="failed to verify the signature"):
        checking.query(out_trade_no="SDKORDER1000000000001")


# -- orders: Native, H5, JSAPI; Kami's requests pass the fake's signature check -----------------
def test_native_answers_the_code_url_as_qr(keys: Keys, fake: FakeWechatPay) -> None:
    instruction = gateway(keys, fake).create_payment(request())
    assert instruction.kind == "qr" and instruction.qr is not None
    assert instruction.qr.startswith("weixin://wxpay/bizpayurl?pr=")
    assert fake.refused == []
    seen = fake.seen[-1]
    assert (seen.method, seen.target, seen.serial_no) == (
        "POST",
        "/v3/pay/transactions/native",
        MERCHANT_SERIAL,
    )
    assert seen.body == {
        "appid": APPID,
        "mchid": MCHID,
        "description": "腾讯视频 VIP 月卡",
        "out_trade_no": "K260719ABCDEFGHJKMNPQRSTVW",
        "time_expire": "2026-07-19T14:30:00+08:00",
        "notify_url": f"{PUBLIC_URL}/api/v1/payments/wechat/notify",
        "amount": {"total": 2500, "currency": "CNY"},
    }
    # With the public key configured Kami names it, so WeChat signs the answer with its pair.
    assert seen.headers["Wechatpay-Serial"] == PUB_KEY_ID


def test_h5_redirects_to_the_h5_url(keys: Keys, fake: FakeWechatPay) -> None:
    gw = gateway(keys, fake, product="h5", h5_client_ip="203.0.113.7")
    instruction = gw.create_payment(request())
    assert instruction.kind == "redirect" and instruction.url is not None
    url = urlsplit(instruction.url)
    assert url.netloc == "wx.tenpay.com" and url.path == "/cgi-bin/mmpayweb-bin/checkmweb"
    query = parse_qs(url.query)
    assert query["redirect_url"] == [f"{PUBLIC_URL}/orders/K260719ABCDEFGHJKMNPQRSTVW"]
    assert "prepay_id" in query
    body = fake.seen[-1].body
    assert fake.seen[-1].target == "/v3/pay/transactions/h5" and body is not None
    assert body["scene_info"] == {"payer_client_ip": "203.0.113.7", "h5_info": {"type": "Wap"}}


def test_jsapi_answers_signed_bridge_parameters(
    keys: Keys, fake: FakeWechatPay, tmp_path: Path
) -> None:
    gw = gateway(keys, fake, product="jsapi")
    with pytest.raises(Unavailable) as caught:
        gw.create_payment(request())
    assert caught.value.slug == "payer-required"
    plain = request()
    with_payer = payments.PaymentRequest(
        plain.order_no,
        plain.amount_minor,
        plain.currency,
        plain.subject,
        plain.expires_at,
        payer_openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
    )
    instruction = gw.create_payment(with_payer)
    assert instruction.kind == "jsapi" and instruction.qr is not None and instruction.url is None
    params = json.loads(instruction.qr)
    assert fake.seen[-1].body is not None
    assert fake.seen[-1].body["payer"] == {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}
    assert params["appId"] == APPID and params["signType"] == "RSA"
    assert params["package"].startswith("prepay_id=wx")
    message = f"{APPID}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n"
    assert rsa_ok(keys.merchant.public_key(), message.encode(), params["paySign"])
    # The SDK computes the same paySign for the same four lines (PKCS#1 v1.5 is deterministic).
    fields = [APPID, params["timeStamp"], params["nonceStr"], params["package"]]
    assert sdk(keys, tmp_path, public_key=True).sign(fields) == params["paySign"]


@pytest.mark.parametrize("misbehaviour", ["none", "wrong-key", "stale"])
def test_an_unsigned_or_badly_signed_answer_is_refused(
    keys: Keys, fake: FakeWechatPay, misbehaviour: str
) -> None:
    fake.response_signing = misbehaviour
    with pytest.raises(Unavailable) as caught:
        gateway(keys, fake).create_payment(request())
    assert caught.value.slug == "bad-response-signature"


def test_the_fake_refuses_kami_when_kami_signs_wrongly(keys: Keys, fake: FakeWechatPay) -> None:
    impostor = gateway(keys, fake, merchant_private_key=private_pem(new_key()))
    with pytest.raises(Unavailable) as caught:
        impostor.create_payment(request())
    assert "401 SIGN_ERROR" in caught.value.detail
    late = wechat.WechatGateway(
        "wechat",
        mchid=MCHID,
        appid=APPID,
        apiv3_key=APIV3_KEY,
        merchant_key=keys.merchant,
        merchant_serial_no=MERCHANT_SERIAL,
        public_url=PUBLIC_URL,
        public_keys={PUB_KEY_ID: keys.wechatpay.public_key()},
        api_base=fake.url,
        clock=lambda: time.time() - 600,
    )
    with pytest.raises(Unavailable):
        late.create_payment(request())
    assert [why for _, why in fake.refused] == [
        "signature does not verify",
        "timestamp more than 5 minutes away",
    ]
    assert fake.transactions == {}


def test_query_answers_the_trade(keys: Keys, fake: FakeWechatPay) -> None:
    gw = gateway(keys, fake)
    assert gw.query(request()).notice is None  # ORDER_NOT_EXIST
    gw.create_payment(request())
    assert gw.query(request()).notice is None  # NOTPAY: no WeChat trade yet
    trade = fake.pay(request().order_no)
    result = gw.query(request())
    assert result.notice == payments.PaymentNotice(
        "wechat",
        request().order_no,
        trade["transaction_id"],
        2500,
        "CNY",
        payments.TradeStatus.PAID,
        MCHID,
    )
    assert json.loads(result.raw)["trade_state"] == "SUCCESS"
    fake.transactions[request().order_no]["trade_state"] = "REFUND"
    notice = gw.query(request()).notice
    assert notice is not None and notice.status is payments.TradeStatus.REFUNDED


def test_unreachable_wechat_is_unavailable(keys: Keys, fake: FakeWechatPay) -> None:
    gw = gateway(keys, fake, api_base="http://127.0.0.1:9")
    refund = payments.RefundRequest("K1", "", "R1", 100, 100, "CNY", "")
    for call in (lambda: gw.create_payment(request()), lambda: gw.refund(refund)):
        with pytest.raises(Unavailable) as caught:
            call()
        assert caught.value.slug == "gateway-unavailable"


# -- refunds ------------------------------------------------------------------------------------
def _paid(gw: wechat.WechatGateway, fake: FakeWechatPay, no: str) -> str:
    gw.create_payment(request(no))
    return str(fake.pay(no)["transaction_id"])


def _refund(no: str, trade: str, refund_no: str, amount: int) -> payments.RefundRequest:
    return payments.RefundRequest(no, trade, refund_no, amount, 2500, "CNY", "买家申请退款")


def test_refund_round_trip_and_a_retry_refunds_once(keys: Keys, fake: FakeWechatPay) -> None:
    gw = gateway(keys, fake)
    no = "K260719REFUND0000000000001"
    trade = _paid(gw, fake, no)
    first = gw.refund(_refund(no, trade, "RF-1", 2500))
    assert (first.status, first.amount_minor, first.refund_no) == (
        payments.RefundStatus.SUCCEEDED,
        2500,
        "RF-1",
    )
    assert first.channel_refund_id == fake.refunds["RF-1"]["refund_id"]
    sent = fake.seen[-1].body
    assert sent is not None and sent["amount"] == {"refund": 2500, "total": 2500, "currency": "CNY"}
    assert sent["out_refund_no"] == "RF-1" and sent["reason"] == "买家申请退款"
    assert sent["notify_url"] == f"{PUBLIC_URL}/api/v1/payments/wechat/notify"
    again = gw.refund(_refund(no, trade, "RF-1", 2500))  # e.g. after a time-out
    assert again.status is payments.RefundStatus.SUCCEEDED
    assert again.channel_refund_id == first.channel_refund_id
    assert list(fake.refunds) == ["RF-1"] and fake.refunded(no) == 2500
    assert (
        gw.query_refund(_refund(no, trade, "RF-1", 2500)).status is payments.RefundStatus.SUCCEEDED
    )


def test_partial_refunds_and_over_refund(keys: Keys, fake: FakeWechatPay) -> None:
    gw = gateway(keys, fake)
    no = "K260719REFUND0000000000002"
    trade = _paid(gw, fake, no)
    for refund_no in ("RP-1", "RP-2"):
        result = gw.refund(_refund(no, trade, refund_no, 1000))
        assert result.status is payments.RefundStatus.SUCCEEDED and result.amount_minor == 1000
    over = gw.refund(_refund(no, trade, "RP-3", 1000))
    assert over.status is payments.RefundStatus.FAILED and over.channel_refund_id is None
    assert over.detail == "INVALID_REQUEST: 申请退款金额超过订单可退金额"
    assert fake.refunded(no) == 2000 and "RP-3" not in fake.refunds
    fake.balance = 100
    short = gw.refund(_refund(no, trade, "RP-4", 500))
    assert short.status is payments.RefundStatus.FAILED
    assert short.detail is not None and short.detail.startswith("NOT_ENOUGH: ")


@pytest.mark.parametrize("outage", [500, 429])
def test_a_refund_during_an_outage_is_unavailable(
    keys: Keys, fake: FakeWechatPay, outage: int
) -> None:
    gw = gateway(keys, fake)
    no = "K260719REFUND0000000000005"
    ask = _refund(no, _paid(gw, fake, no), "RO-1", 2500)
    fake.outage = outage
    for call in (gw.refund, gw.query_refund):
        with pytest.raises(Unavailable) as caught:
            call(ask)
        assert caught.value.slug == "gateway-error" and f"HTTP {outage}" in caught.value.detail
    fake.outage = None
    assert fake.refunds == {}
    assert gw.refund(ask).status is payments.RefundStatus.SUCCEEDED  # the retry, same refund_no


def test_processing_refund_then_query(keys: Keys, fake: FakeWechatPay) -> None:
    gw = gateway(keys, fake)
    no = "K260719REFUND0000000000003"
    trade = _paid(gw, fake, no)
    fake.refund_outcome = "PROCESSING"
    ask = _refund(no, trade, "RQ-1", 2500)
    assert gw.refund(ask).status is payments.RefundStatus.PROCESSING
    assert gw.query_refund(ask).status is payments.RefundStatus.PROCESSING
    assert fake.seen[-1].target == "/v3/refund/domestic/refunds/RQ-1"
    fake.finish_refund("RQ-1")
    done = gw.query_refund(ask)
    assert done.status is payments.RefundStatus.SUCCEEDED and done.amount_minor == 2500
    missing = gw.query_refund(_refund(no, trade, "RQ-404", 100))
    assert missing.status is payments.RefundStatus.FAILED
    assert missing.detail is not None and "RESOURCE_NOT_EXISTS" in missing.detail


def test_refund_notifications_become_refund_notices(keys: Keys, fake: FakeWechatPay) -> None:
    gw = gateway(keys, fake)
    no = "K260719REFUND0000000000004"
    trade = _paid(gw, fake, no)
    gw.refund(_refund(no, trade, "RN-1", 800))
    notice = gw.verify_notification(
        raw(*fake.notification("REFUND.SUCCESS", fake.refund_resource("RN-1")))
    )
    assert notice == payments.RefundNotice(
        gateway="wechat",
        order_no=no,
        trade_no=trade,
        refund_no="RN-1",
        channel_refund_id=fake.refunds["RN-1"]["refund_id"],
        amount_minor=800,
        currency="CNY",
        status=payments.RefundStatus.SUCCEEDED,
        merchant_id=MCHID,
    )
    abnormal = {**fake.refund_resource("RN-1"), "refund_status": "ABNORMAL"}
    notice = gw.verify_notification(raw(*fake.notification("REFUND.ABNORMAL", abnormal)))
    assert (
        isinstance(notice, payments.RefundNotice) and notice.status is payments.RefundStatus.FAILED
    )
    other = {**fake.refund_resource("RN-1"), "mchid": "1900000999"}
    assert reject(gw, *fake.notification("REFUND.SUCCESS", other)) == "merchant-mismatch"


def test_acknowledgements(keys: Keys, fake: FakeWechatPay) -> None:
    gw = gateway(keys, fake)
    assert gw.acknowledge(None) == payments.Ack(204, b"", "text/plain")
    refused = gw.acknowledge(payments.NotificationRejected("secret detail", slug="bad-signature"))
    assert refused.status_code == 400
    assert json.loads(refused.body) == {"code": "FAIL", "message": "rejected: bad-signature"}
    headers, body = fake.notification("TRANSACTION.SUCCESS", {"mchid": MCHID})
    undecryptable = fake.notification("TRANSACTION.SUCCESS", {"mchid": MCHID}, apiv3_key="x" * 32)
    assert reject(gw, *undecryptable) == "undecryptable"
    assert (
        reject(gw, {**headers, "Wechatpay-Signature-Type": "WECHATPAY2-SM2-WITH-SM3"}, body)
        == "bad-signature"
    )
    missing = {k: v for k, v in headers.items() if k != "Wechatpay-Signature-Type"}
    assert reject(gw, missing, body) == "bad-signature"
    event = fake.notification("MCHTRANSFER.BILL.FINISHED", {"mchid": MCHID})
    assert reject(gw, *event) == "unsupported-event"
    assert (
        gw.acknowledge(payments.NotificationRejected("x", slug="unsupported-event")).status_code
        == 204
    )


# -- end to end through the shop, on the configured account ------------------------------------
@pytest.fixture
def wechat_shop(
    settings: Settings, keys: Keys, fake: FakeWechatPay, tmp_path: Path
) -> Iterator[tuple[TestClient, fulfilment.Shop]]:
    folder = tmp_path / "accounts"
    folder.mkdir()
    given = options(keys, fake)
    lines = ["[wechat]", 'channel = "wechat"']
    for option, value in given.items():
        if "\n" in value or option in wechat.SPEC.secrets:
            (folder / option).write_text(value)
            lines.append(f'{option}_file = "{option}"')
        else:
            lines.append(f'{option} = "{value}"')
    accounts = folder / "accounts.toml"
    accounts.write_text("\n".join(lines) + "\n")
    container = bootstrap.build(settings.model_copy(update={"payment_accounts_file": accounts}))
    try:
        with TestClient(create_app(container, worker=False)) as client:
            yield client, container.shop
    finally:
        container.close()


def _order(client: TestClient, email: str) -> dict[str, Any]:
    r = client.post(
        "/api/v1/orders",
        json={"sku": "WX-1", "quantity": 1, "email": email, "gateway": "wechat"},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _status(shop: fulfilment.Shop, order_no: str) -> str:
    with shop.db.read() as s:
        return str(orders.get_order(s, order_no).status)


def _post(client: TestClient, headers: dict[str, str], body: bytes) -> Any:
    return client.post("/api/v1/payments/wechat/notify", content=body, headers=headers)


def test_signed_notifications_deliver_and_forgeries_are_refused(
    wechat_shop: tuple[TestClient, fulfilment.Shop], fake: FakeWechatPay, keys: Keys
) -> None:
    client, shop = wechat_shop
    add_keys(shop, make_sku(shop, "WX-1", price=2500), ["W-1", "W-2", "W-3"])
    delivered = []
    for email, serial in (
        ("cert@example.com", serial_of(keys.old_certificate)),  # either certificate of the bundle
        ("pubkey@example.com", PUB_KEY_ID),
    ):
        placed = _order(client, email)
        no = placed["order_no"]
        assert placed["payment"]["kind"] == "qr"
        assert placed["payment"]["qr"].startswith("weixin://wxpay/bizpayurl?pr=")
        assert (
            fake.transactions[no]["notify_url"] == "http://testserver/api/v1/payments/wechat/notify"
        )
        fake.pay(no)
        headers, body = fake.notification(
            "TRANSACTION.SUCCESS", transaction(fake, no), serial=serial
        )
        r = _post(client, headers, body)
        assert (r.status_code, r.content) == (204, b"")
        assert _status(shop, no) == "delivered"
        delivered.append(no)
        again = fake.notification("TRANSACTION.SUCCESS", transaction(fake, no), serial=serial)
        assert _post(client, *again).status_code == 204  # WeChat's retry: a no-op

    victim = _order(client, "victim@example.com")["order_no"]
    fake.pay(victim)
    paid = transaction(fake, victim)
    now = int(time.time())
    headers, body = fake.notification("TRANSACTION.SUCCESS", paid)
    forgeries = {
        "tampered body": (headers, body.replace(b'"event_type"', b' "event_type"')),
        "wrong key": fake.notification("TRANSACTION.SUCCESS", paid, key=new_key()),
        "stale": fake.notification("TRANSACTION.SUCCESS", paid, timestamp=now - 360),
        "future": fake.notification("TRANSACTION.SUCCESS", paid, timestamp=now + 360),
        "wrong amount": fake.notification(
            "TRANSACTION.SUCCESS", {**paid, "amount": {**paid["amount"], "total": 1}}
        ),
        "wrong mchid": fake.notification("TRANSACTION.SUCCESS", {**paid, "mchid": "1900000999"}),
        "wrong appid": fake.notification(
            "TRANSACTION.SUCCESS", {**paid, "appid": "wx0000000000000000"}
        ),
        "unknown serial": fake.notification(
            "TRANSACTION.SUCCESS",
            paid,
            serial="7A0B1C2D3E4F50617283940A1B2C3D4E5F607182",
            key=keys.platform,
        ),
    }
    for what, (h, b) in forgeries.items():
        r = _post(client, h, b)
        assert r.status_code == 400, what
        answer = r.json()
        assert answer["code"] == "FAIL" and answer["message"].startswith("rejected: "), what
        assert APIV3_KEY not in r.text and "PRIVATE" not in r.text
    assert _status(shop, victim) == "pending"
    with shop.db.read() as s:
        reasons = sorted(str(n.reason) for n in payments.list_notifications(s) if n.reason)
    assert reasons == sorted(
        [
            "bad-signature",  # tampered body
            "bad-signature",  # wrong key
            "stale-timestamp",
            "stale-timestamp",  # the future
            "amount-mismatch",
            "merchant-mismatch",
            "app-mismatch",
            "unknown-serial",
        ]
    )
    assert all(_status(shop, no) == "delivered" for no in delivered)


def test_a_lost_notification_is_found_by_query(
    wechat_shop: tuple[TestClient, fulfilment.Shop], fake: FakeWechatPay
) -> None:
    client, shop = wechat_shop
    add_keys(shop, make_sku(shop, "WX-1", price=2500), ["W-1"])
    no = _order(client, "lost@example.com")["order_no"]
    assert fulfilment.sync_order(shop, no).found is False  # NOTPAY
    fake.pay(no)  # … and WeChat's callback never arrives
    result = fulfilment.sync_order(shop, no)
    assert result.found and result.status == "delivered"
    assert fake.seen[-1].target == f"/v3/pay/transactions/out-trade-no/{no}?mchid={MCHID}"


# -- configuration ------------------------------------------------------------------------------
def _error(keys: Keys, fake: FakeWechatPay, **changes: str) -> str:
    with pytest.raises(ValueError) as caught:
        gateway(keys, fake, **changes)
    message = str(caught.value)
    secrets = [APIV3_KEY, *private_pem(keys.merchant).splitlines()[1:-1]]
    assert not any(secret in message for secret in secrets), message
    return message


def test_configuration_errors_name_the_option(keys: Keys, fake: FakeWechatPay) -> None:
    own_certificate = certificate_pem(make_certificate(keys.merchant))
    cases = {
        "apiv3_key:": {"apiv3_key": APIV3_KEY[:31]},
        "merchant_private_key:": {"merchant_private_key": public_pem(keys.merchant)},
        "platform_certificate: not one or more PEM": {
            "platform_certificate": public_pem(keys.platform)
        },
        "platform_certificate: certificate": {
            "platform_certificate": own_certificate,  # the merchant's apiclient_cert.pem
        },
        "wechatpay_public_key: is the public half": {
            "wechatpay_public_key": public_pem(keys.merchant)
        },
        "wechatpay_public_key:": {"wechatpay_public_key": "not a key"},
        "wechatpay_public_key_id:": {"wechatpay_public_key_id": "0119000001092025"},
        "platform_certificate: give": {
            "platform_certificate": "",
            "wechatpay_public_key": "",
            "wechatpay_public_key_id": "",
        },
        "mchid:": {"mchid": "mch-1"},
        "merchant_serial_no:": {"merchant_serial_no": "not-hex"},
        "product:": {"product": "app"},
        "h5_client_ip:": {"product": "h5"},
        "api_base:": {"api_base": "ftp://api.mch.weixin.qq.com"},
    }
    for prefix, changes in cases.items():
        assert _error(keys, fake, **changes).startswith(prefix), prefix
    assert "merchant_private_key" in _error(keys, fake, platform_certificate=own_certificate)


def test_certificate_warnings_and_rotation(keys: Keys, fake: FakeWechatPay) -> None:
    expired = make_certificate(new_key(), expired=True)
    given = options(
        keys,
        fake,
        platform_certificate=certificate_pem(expired) + certificate_pem(keys.certificate),
    )
    gw = wechat.from_options("wx-main", given, PUBLIC_URL)  # an expired one is a warning only
    assert gw.name == "wx-main"
    remarks = wechat.remarks(given)
    assert any(
        r.startswith(f"platform_certificate: certificate {serial_of(expired)} expired")
        for r in remarks
    )
    assert wechat.remarks(options(keys, fake, api_base="https://api.mch.weixin.qq.com")) == []
    assert wechat.SPEC.channel == "wechat" and wechat.SPEC.secrets == {
        "apiv3_key",
        "merchant_private_key",
    }
    # Certificate-only account: answers come signed by the certificate WeChat uses by default.
    only_certs = gateway(keys, fake, wechatpay_public_key="", wechatpay_public_key_id="")
    assert only_certs.create_payment(request()).kind == "qr"
    assert "Wechatpay-Serial" not in fake.seen[-1].headers
    headers, body = fake.notification("TRANSACTION.SUCCESS", {}, serial=PUB_KEY_ID)
    assert reject(only_certs, headers, body) == "unknown-serial"


def test_the_storefront_pay_page_shows_the_native_qr_code(
    wechat_shop: tuple[TestClient, fulfilment.Shop], fake: FakeWechatPay
) -> None:
    """A buyer checking out in the browser with a Native account gets a QR code to scan (drawn
    on the server as SVG, allowed by the CSP as a data: image) and the order link."""
    client, shop = wechat_shop
    add_keys(shop, make_sku(shop, "WX-1", price=2500), ["W-1"])
    form = client.get("/checkout/WX-1")
    assert form.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    page = client.post(
        "/checkout/WX-1",
        data={
            "csrf_token": token.group(1),
            "email": "qr@example.com",
            "quantity": "1",
            "gateway": "wechat",
        },
    )
    assert page.status_code == 200, page.text[:500]
    image = re.search(r'<img class="qr" src="([^"]+)" alt="([^"]+)"', page.text)
    assert image is not None and image.group(1).startswith("data:image/svg+xml")
    assert image.group(2) == "付款二维码"
    assert "weixin://wxpay/bizpayurl?pr=" in page.text  # also offered as a link
    assert "default-src 'self'" in page.headers["content-security-policy"]
