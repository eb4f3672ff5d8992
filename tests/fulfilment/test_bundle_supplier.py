"""A joint membership (联合会员) whose recharge component's suppliers all fail: the buyer keeps
the other components, the failed share is refunded, and the timeline shows why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kami import bootstrap, fulfilment
from kami.kernel.errors import InvalidInput
from kami.suppliers import Fate, SimConfig, Simulator
from kami.worker.runner import run_once
from tests.conftest import add_keys, make_sku
from tests.fulfilment.test_goods import buy, goods_sku, revealed, status
from tests.fulfilment.test_recharge import PHONE_FIELD, connect, drive, route


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=3, hang_s=3.0)) as s:
        yield s


def test_failed_supplier_component_is_refunded_while_the_rest_stands(
    container: bootstrap.Container, sim: Simulator
) -> None:
    shop = container.shop
    connect(shop, sim)
    video = make_sku(shop, "VIDEO-M", price=1500)
    add_keys(shop, video, ["VIDEO-KEY-1"])
    goods_sku(
        shop,
        "PHONE-50",
        "recharge",
        price=5000,
        config={"routes": [route("fulu", 0), route("yr", 1)], "account_field": "phone"},
        fields=PHONE_FIELD,
    )
    components = {
        "components": [
            {"sku": "VIDEO-M", "quantity": 1, "share_minor": 1500},
            {"sku": "PHONE-50", "quantity": 1, "share_minor": 5000},
        ]
    }
    with pytest.raises(InvalidInput) as missing:  # the bundle must ask for the phone number
        goods_sku(shop, "JOINT-NOFIELD", "bundle", price=6500, config=components)
    assert missing.value.where == "input_fields"
    goods_sku(shop, "JOINT", "bundle", price=6500, config=components, fields=PHONE_FIELD)
    no = buy(shop, "JOINT", buyer_input={"phone": "13800138009"})
    assert status(shop, no) == "paid"  # the video key is out; the recharge is on its way
    sim.script(f"{no}-2-1", Fate(fail=True))
    sim.script(f"{no}-2-2", Fate(fail=True))
    drive(shop, rounds=2)
    assert status(shop, no) == "delivered"
    run_once(container, sweep=False)  # the refund of the recharge's share
    assert status(shop, no) == "partially_refunded"
    (refund,) = fulfilment.list_order_refunds(shop, no)
    assert refund.amount_minor == 5000 and "PHONE-50 could not be delivered" in refund.reason
    assert revealed(shop, no) == ["VIDEO-KEY-1"]
    timeline = fulfilment.admin_detail(shop, no).timeline
    failed = [e for e in timeline if e.event == "line_failed"]
    assert failed and failed[0].detail["line"] == 2 and failed[0].detail["detail"]
    assert [e.event for e in timeline].count("line_supplier_failed") == 2
    assert "line_failover" in [e.event for e in timeline]
    assert sum(sim.charges_per_account().values()) == 0
