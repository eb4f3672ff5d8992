"""Refunds through a channel that cannot deduplicate (易支付 V1), and currencies a channel does
not take refused at order time, through accounts configured in the accounts file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kami import bootstrap, fulfilment, orders, payments
from kami.config import Settings
from kami.kernel.errors import Conflict, InvalidInput
from kami.payments.gateways.epay import sign
from kami.web.app import create_app
from tests.conftest import add_keys, make_sku
from tests.payments.fakes.epay import EpayFake as EpayFakeServer

PID = "1001"
KEY = "89unJUB8HZ54Hj7x4nUj56HN4nUzUJ8i"


@pytest.fixture
def epay_shop(
    settings: Settings, tmp_path: Path
) -> Iterator[tuple[fulfilment.Shop, EpayFakeServer, TestClient]]:
    with EpayFakeServer(pid=PID, key=KEY) as fake:
        (tmp_path / "epay.key").write_text(KEY)
        accounts = tmp_path / "accounts.toml"
        accounts.write_text(
            f'[epay-v1]\nchannel = "epay"\nbase_url = "{fake.url}"\npid = "{PID}"\n'
            'key_file = "epay.key"\nrefund = true\n'
        )
        container = bootstrap.build(settings.model_copy(update={"payment_accounts_file": accounts}))
        try:
            with TestClient(create_app(container, worker=False)) as client:
                yield container.shop, fake, client
        finally:
            container.close()


def _paid(shop: fulfilment.Shop, fake: EpayFakeServer) -> str:
    add_keys(shop, make_sku(shop, "E-1", price=2500), ["E-KEY-1"])
    placed = fulfilment.place_order(
        shop, orders.OrderIn(sku="E-1", quantity=1, email="e@example.com", gateway="epay-v1")
    )
    no = placed.order.order_no
    trade = fake.pay(no, 2500)
    params = {
        "pid": PID,
        "trade_no": trade.trade_no,
        "out_trade_no": no,
        "type": "alipay",
        "name": "E-1",
        "money": "25.00",
        "trade_status": "TRADE_SUCCESS",
    }
    params |= {"sign": sign(params, KEY), "sign_type": "MD5"}
    raw = payments.RawNotification("epay-v1", "GET", {}, params, b"", "127.0.0.1")
    assert fulfilment.handle_notification(shop, raw).delivered
    return no


def test_unknown_v1_refund_is_never_resent_and_settled_by_hand(
    epay_shop: tuple[fulfilment.Shop, EpayFakeServer, TestClient],
) -> None:
    shop, fake, _ = epay_shop
    no = _paid(shop, fake)
    fake.drop_next = True  # the gateway refunds, the answer is lost
    out = fulfilment.request_refund(shop, no, amount_minor=None, reason="x", request_key="k")
    assert out.status == "processing"
    assert out.refund.detail and "outcome unknown" in out.refund.detail
    for _ in range(2):  # the sweep may ask as often as it likes: nothing is sent again
        fulfilment.sync_refunds_due(shop, after=timedelta(0))
        again = fulfilment.sync_refund(shop, out.refund_no)
        assert again.status == "processing" and again.note and "merchant console" in again.note
    assert [r.money_fen for r in fake.refunds_of(no)] == [2500]
    with pytest.raises(InvalidInput):
        fulfilment.settle_by_hand(shop, out.refund_no, True, " ", "boss")
    done = fulfilment.settle_by_hand(shop, out.refund_no, True, "console shows 25.00 back", "boss")
    assert done.status == "succeeded" and done.order_status == "refunded"
    assert done.refund.detail == "settled by hand by boss: console shows 25.00 back"
    with pytest.raises(Conflict) as exc:
        fulfilment.settle_by_hand(shop, out.refund_no, False, "oops", "boss")
    assert exc.value.slug == "refund-settled"
    assert len(fake.refunds_of(no)) == 1


def test_a_currency_the_channel_does_not_take_is_refused_at_order_time(
    epay_shop: tuple[fulfilment.Shop, EpayFakeServer, TestClient],
) -> None:
    shop, _, client = epay_shop
    add_keys(shop, make_sku(shop, "USD-1", price=999, currency="USD"), ["U-1"])
    body = {"sku": "USD-1", "quantity": 1, "email": "u@example.com", "gateway": "epay-v1"}
    r = client.post("/api/v1/orders", json=body)
    assert r.status_code == 422 and r.json()["type"] == "/problems/currency-unsupported"
    assert r.json()["where"] == "gateway" and "CNY" in r.json()["detail"]
    with shop.db.read() as s:
        assert orders.list_orders(s, sku="USD-1") == []
    sku = client.get("/api/v1/catalog").json()[0]["products"][0]["skus"][0]
    assert sku["code"] == "USD-1" and sku["gateways"] == ["sandbox"]
    assert client.post("/api/v1/orders", json=body | {"gateway": "sandbox"}).status_code == 201
