"""Each adapter against the simulator: the outcomes the recharge lifecycle will meet."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kami.suppliers import (
    SUPPLIER_SPECS,
    Fate,
    SimAccount,
    SimConfig,
    Simulator,
    Supplier,
    SupplierOrderStatus,
    SupplierRequest,
    SupplierResult,
)
from kami.suppliers.sim import DEFAULT_ACCOUNTS

S = SupplierOrderStatus
SPECS = {spec.protocol: spec for spec in SUPPLIER_SPECS}
PROTOCOLS = ("fulu", "dayuanren", "generic")
RECHARGE, RECHARGE_PRICE = "10000001", 4630
CARD, CARD_PRICE = "20000001", 2850


def build(sim: Simulator, protocol: str, timeout: float = 2.0, **overrides: str) -> Supplier:
    options = dict(sim.options(protocol), timeout=str(timeout), **overrides)
    return SPECS[protocol].build(f"{protocol}-test", options)


def final(supplier: Supplier, result: SupplierResult) -> SupplierResult:
    """大猿人 answers every accepted order as processing: its state comes from `check`."""
    if result.status is S.PROCESSING:
        return supplier.query(result.customer_order_no)
    return result


def debits(sim: Simulator, no: str) -> int:
    return sum(
        1 for e in sim.ledger()["journal"] if e["customer_order_no"] == no and e["kind"] == "debit"
    )


def account_ref(protocol: str) -> str:
    return next(a.ref for a in DEFAULT_ACCOUNTS if a.protocol == protocol)


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=7, hang_s=5.0)) as running:
        yield running


def test_recharge_succeeds_and_is_charged_once(sim: Simulator, protocol: str) -> None:
    supplier = build(sim, protocol)
    result = supplier.submit(SupplierRequest("KR1", RECHARGE, 1, "13800138000"))
    assert result.status in (S.SUCCEEDED, S.PROCESSING)
    done = final(supplier, result)
    assert done.status is S.SUCCEEDED
    assert done.customer_order_no == "KR1"
    assert done.supplier_order_no
    assert done.cost_minor == RECHARGE_PRICE
    assert done.cards == ()
    assert sim.charges_per_account()[account_ref(protocol)] == RECHARGE_PRICE
    [order] = sim.ledger()["orders"]
    assert (order["target"], order["status"]) == ("13800138000", "succeeded")


def test_card_purchase_returns_the_cards_and_keeps_them_out_of_raw(
    sim: Simulator, protocol: str
) -> None:
    supplier = build(sim, protocol)
    quantity = 1 if protocol == "dayuanren" else 2  # 大猿人 orders carry no quantity
    result = final(supplier, supplier.submit(SupplierRequest("KC1", CARD, quantity, None, "card")))
    assert result.status is S.SUCCEEDED
    [order] = sim.ledger()["orders"]
    expected = [(c["card"], c["password"]) for c in order["cards"]]
    assert len(expected) == quantity
    assert [(c.card, c.password) for c in result.cards] == expected
    assert result.cost_minor == CARD_PRICE * quantity
    for card, password in expected:
        assert card not in result.raw and password not in result.raw
        assert card not in repr(result)


def test_a_definitive_failure_is_failed_and_not_charged(sim: Simulator, protocol: str) -> None:
    supplier = build(sim, protocol)
    sim.script("KF1", Fate(fail=True))
    result = supplier.submit(SupplierRequest("KF1", RECHARGE, 1, "13800138000"))
    assert result.status is S.FAILED
    assert result.detail and not result.never_received  # the supplier's own words
    assert sim.charges_per_account()[account_ref(protocol)] == 0
    assert supplier.query("KF1").never_received


def test_processing_then_query_succeeds(sim: Simulator, protocol: str) -> None:
    supplier = build(sim, protocol)
    sim.script("KP1", Fate(processing=True))
    assert supplier.submit(SupplierRequest("KP1", RECHARGE, 1, "13800138000")).status is (
        S.PROCESSING
    )
    assert supplier.query("KP1").status is S.PROCESSING
    assert sim.settle("KP1") == 1
    done = supplier.query("KP1")
    assert done.status is S.SUCCEEDED
    assert done.cost_minor == RECHARGE_PRICE


def test_processing_then_failing_is_refunded(sim: Simulator, protocol: str) -> None:
    supplier = build(sim, protocol)
    sim.script("KP2", Fate(processing=True, fail=True))
    assert supplier.submit(SupplierRequest("KP2", RECHARGE, 1, "1380013800")).status is (
        S.PROCESSING
    )
    assert sim.charges_per_account()[account_ref(protocol)] == RECHARGE_PRICE
    sim.settle("KP2")
    failed = supplier.query("KP2")
    assert failed.status is S.FAILED and not failed.never_received
    assert sim.charges_per_account()[account_ref(protocol)] == 0


def test_a_time_out_is_unknown_and_the_query_finds_the_charge(
    sim: Simulator, protocol: str
) -> None:
    supplier = build(sim, protocol, timeout=0.3)
    sim.script("KT1", Fate(hang=True))
    lost = supplier.submit(SupplierRequest("KT1", RECHARGE, 1, "13800138000"))
    assert lost.status is S.UNKNOWN
    assert "timed out" in (lost.detail or "")
    found = build(sim, protocol).query("KT1")
    assert found.status is S.SUCCEEDED
    assert debits(sim, "KT1") == 1


def test_a_retry_after_a_time_out_is_not_charged_twice(sim: Simulator, protocol: str) -> None:
    sim.script("KT2", Fate(hang=True))
    first = build(sim, protocol, timeout=0.3).submit(SupplierRequest("KT2", RECHARGE, 1, "138"))
    assert first.status is S.UNKNOWN
    again = build(sim, protocol).submit(SupplierRequest("KT2", RECHARGE, 1, "138"))
    assert final(build(sim, protocol), again).status is S.SUCCEEDED
    assert debits(sim, "KT2") == 1
    assert sim.ledger()["duplicates"] == 1
    assert sim.charges_per_account()[account_ref(protocol)] == RECHARGE_PRICE


def test_a_duplicate_submit_answers_the_existing_order(sim: Simulator, protocol: str) -> None:
    supplier = build(sim, protocol)
    request = SupplierRequest("KD1", RECHARGE, 1, "13800138000")
    first = final(supplier, supplier.submit(request))
    second = supplier.submit(request)
    assert second.status is S.SUCCEEDED  # not FAILED: failing over would buy it twice
    assert second.supplier_order_no == first.supplier_order_no
    assert debits(sim, "KD1") == 1
    assert sim.charges_per_account()[account_ref(protocol)] == RECHARGE_PRICE


def test_a_duplicate_of_a_processing_order_is_processing(sim: Simulator, protocol: str) -> None:
    supplier = build(sim, protocol)
    sim.script("KD2", Fate(processing=True))
    request = SupplierRequest("KD2", RECHARGE, 1, "13800138000")
    supplier.submit(request)
    assert supplier.submit(request).status is S.PROCESSING
    assert debits(sim, "KD2") == 1


def test_an_unknown_order_is_not_found(sim: Simulator, protocol: str) -> None:
    result = build(sim, protocol).query("NEVER-SENT")
    assert result.status is S.FAILED and result.never_received


def test_insufficient_balance_is_a_definitive_failure(protocol: str) -> None:
    poor = tuple(SimAccount(a.protocol, a.account_id, a.secret, 100) for a in DEFAULT_ACCOUNTS)
    with Simulator(SimConfig(accounts=poor)) as sim:
        result = build(sim, protocol).submit(SupplierRequest("KB1", RECHARGE, 1, "138"))
        assert result.status is S.FAILED
        assert sim.charges_per_account()[account_ref(protocol)] == 0


@pytest.mark.parametrize("protocol", ["dayuanren", "generic"])
def test_the_price_ceiling_is_sent_and_enforced(sim: Simulator, protocol: str) -> None:
    supplier = build(sim, protocol)
    capped = supplier.submit(SupplierRequest("KM1", RECHARGE, 1, "138", max_cost_minor=4629))
    assert capped.status is S.FAILED
    enough = supplier.submit(SupplierRequest("KM2", RECHARGE, 1, "138", max_cost_minor=4630))
    assert final(supplier, enough).status is S.SUCCEEDED


def test_balance(sim: Simulator, protocol: str) -> None:
    supplier = build(sim, protocol)
    before = supplier.balance()
    final(supplier, supplier.submit(SupplierRequest("KBAL", RECHARGE, 1, "138")))
    after = supplier.balance()
    if protocol == "dayuanren":  # no balance call in the protocol as documented
        assert before is None and after is None
    else:
        assert before is not None and after == before - RECHARGE_PRICE


@pytest.mark.parametrize("protocol", ["fulu", "dayuanren"])  # generic carries any extra field
def test_requests_the_protocol_cannot_carry_are_failed_without_sending(
    sim: Simulator, protocol: str
) -> None:
    supplier = build(sim, protocol)
    result = supplier.submit(SupplierRequest("KX1", RECHARGE, 1, "138", extra={"bogus": "1"}))
    assert result.status is S.FAILED and "bogus" in (result.detail or "")
    if protocol == "dayuanren":
        result = supplier.submit(SupplierRequest("KX2", RECHARGE, 2, "138"))
        assert result.status is S.FAILED
    assert sim.ledger()["orders"] == []


def test_a_slow_card_order_hands_out_its_cards_once_settled(sim: Simulator, protocol: str) -> None:
    supplier = build(sim, protocol)
    sim.script("KC2", Fate(processing=True))
    first = supplier.submit(SupplierRequest("KC2", CARD, 1, None, "card"))
    assert first.status is S.PROCESSING and first.cards == ()
    sim.settle("KC2")
    done = supplier.query("KC2")
    [order] = sim.ledger()["orders"]
    assert done.status is S.SUCCEEDED
    assert [(c.card, c.password) for c in done.cards] == [
        (c["card"], c["password"]) for c in order["cards"]
    ]
