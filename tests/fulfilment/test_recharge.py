"""Direct recharge (直充) end to end against the supplier simulator on loopback, on both
databases: failover after a definitive failure, a time-out answered by a query (never by
another supplier), an early "not found" sent again to the same supplier, callbacks through the
real HTTP endpoint, a refund when every route fails, escalation when the outcome never clears,
and the acceptance run: 1,000 orders at 20 % failures and 10 % time-outs each end delivered or
refunded, and no account is charged twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from kami import bootstrap, delivery, fulfilment, orders
from kami.config import Settings
from kami.kernel import outbox
from kami.kernel.clock import utcnow
from kami.kernel.errors import InvalidInput
from kami.supplier_config import check_suppliers, configured_suppliers
from kami.suppliers import Fate, SimConfig, Simulator, SupplierRegistry, dayuanren, fulu, generic
from kami.suppliers.base import post
from kami.worker.runner import run_once
from tests.fulfilment.test_goods import buy, goods_sku, revealed, status

PHONE_FIELD = [{"name": "phone", "label": "手机号", "rule": "phone"}]
PRODUCT, PRICE = "10000001", 4630  # the simulator's 话费 50元 直充


def route(supplier: str, priority: int, cost: int = PRICE) -> dict[str, Any]:
    return {"supplier": supplier, "product_id": PRODUCT, "priority": priority, "cost_minor": cost}


def recharge_sku(shop: fulfilment.Shop, code: str, *routes: dict[str, Any]) -> None:
    config = {"routes": list(routes), "account_field": "phone"}
    goods_sku(shop, code, "recharge", price=5000, config=config, fields=PHONE_FIELD)


def connect(shop: fulfilment.Shop, sim: Simulator, timeout: float = 2.0, **extra: str) -> None:
    """Accounts "fulu" (Fulu), "yr" (大猿人) and "gen" (generic) pointing at the simulator."""
    shop.suppliers = SupplierRegistry()
    for name, spec, protocol in (
        ("fulu", fulu.SPEC, "fulu"),
        ("yr", dayuanren.SPEC, "dayuanren"),
        ("gen", generic.SPEC, "generic"),
    ):
        options = dict(sim.options(protocol), timeout=str(timeout))
        if protocol == "generic" and "notify_url" in extra:
            options["notify_url"] = extra["notify_url"]
        shop.suppliers.register(spec.build(name, options))


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimConfig(seed=7, hang_s=3.0, processing_ms=600_000)) as s:
        yield s


def events(shop: fulfilment.Shop, order_no: str) -> list[str]:
    with shop.db.read() as s:
        order = orders.get_order(s, order_no)
        return [e.event for e in delivery.line_events(s, order.id)]


def supplier_rows(shop: fulfilment.Shop, order_no: str) -> list[delivery.SupplierOrderView]:
    with shop.db.read() as s:
        order = orders.get_order(s, order_no)
        (line,) = delivery.order_lines(s, order.id)
        return delivery.line_supplier_orders(s, line.id)


def drive(
    shop: fulfilment.Shop, rounds: int = 1, start: datetime | None = None, workers: int = 1
) -> datetime:
    """Run the worker's attempts `rounds` times, each ten minutes later (every backoff due),
    in `workers` threads at once (their leases keep them off each other's lines)."""
    at = start or utcnow()

    def work(now: datetime) -> None:
        for _ in range(50):  # failover makes a line due again at once
            if not fulfilment.drive_due(shop, now=now):
                break

    for _ in range(rounds):
        at += timedelta(minutes=10)
        threads = [threading.Thread(target=work, args=(at,)) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return at


def open_lines(shop: fulfilment.Shop) -> int:
    with shop.db.read() as s:
        return int(
            s.execute(
                text(
                    "SELECT count(*) FROM delivery_line "
                    "WHERE status IN ('waiting', 'pending', 'processing')"
                )
            ).scalar_one()
        )


def sim_orders(sim: Simulator, target: str) -> list[dict[str, Any]]:
    return [o for o in sim.ledger()["orders"] if o["target"] == target]


# -- one order at a time -----------------------------------------------------------------------
def test_a_definitive_failure_fails_over_to_the_next_route(
    shop: fulfilment.Shop, sim: Simulator
) -> None:
    connect(shop, sim)
    # Listed out of order: priority, then cost, decides (yr is tried second, gen never).
    recharge_sku(shop, "TOPUP", route("gen", 5), route("yr", 1, 100), route("fulu", 1, 50))
    no = buy(shop, "TOPUP", buyer_input={"phone": "13800138001"})
    sim.script(f"{no}-1-1", Fate(fail=True))  # Fulu refuses: definitive, nothing charged
    assert status(shop, no) == "paid"
    drive(shop, rounds=2)
    assert status(shop, no) == "delivered"
    rows = supplier_rows(shop, no)
    assert [(r.supplier, r.status.value) for r in rows] == [
        ("fulu", "failed"),
        ("yr", "succeeded"),
    ]
    assert events(shop, no) == [
        "line_created",
        "queued",
        "submitting",
        "supplier_failed",
        "failover",
        "submitting",
        "processing",  # 大猿人 answers an accepted order as charging; the query finds it done
        "queried",
        "supplier_succeeded",
        "line_delivered",
    ]
    (receipt,) = revealed(shop, no)
    assert receipt.startswith("充值成功 138****8001 via yr #")
    assert rows[1].customer_order_no in receipt
    charged = sim_orders(sim, "13800138001")
    assert [(o["protocol"], o["status"]) for o in charged] == [("dayuanren", "succeeded")]


def test_a_time_out_is_queried_and_never_sent_elsewhere(
    shop: fulfilment.Shop, sim: Simulator
) -> None:
    connect(shop, sim, timeout=0.3)
    recharge_sku(shop, "TOPUP", route("fulu", 0), route("gen", 1))
    no = buy(shop, "TOPUP", buyer_input={"phone": "13800138002"})
    sim.script(f"{no}-1-1", Fate(hang=True))  # booked and charged; the answer comes too late
    at = drive(shop)
    assert status(shop, no) == "paid"
    (row,) = supplier_rows(shop, no)
    assert (row.supplier, row.status.value, row.attempts) == ("fulu", "unknown", 1)
    assert len(sim_orders(sim, "13800138002")) == 1  # the charge stands at Fulu
    drive(shop, start=at)
    assert status(shop, no) == "delivered"
    (row,) = supplier_rows(shop, no)
    assert row.status.value == "succeeded"
    assert events(shop, no)[2:] == [
        "submitting",
        "unknown",
        "queried",
        "supplier_succeeded",
        "line_delivered",
    ]
    (charged,) = sim_orders(sim, "13800138002")
    assert charged["submits"] == 1 and charged["status"] == "succeeded"


def test_an_early_not_found_goes_again_to_the_same_supplier(
    shop: fulfilment.Shop, sim: Simulator
) -> None:
    connect(shop, sim, timeout=0.3)
    recharge_sku(shop, "TOPUP", route("gen", 0), route("yr", 1))
    no = buy(shop, "TOPUP", buyer_input={"phone": "13800138003"})
    # The submit's answer is lost and nothing was booked: the query says "not found".
    sim.script(f"{no}-1-1", Fate(fail=True, hang=True))
    at = drive(shop)
    assert supplier_rows(shop, no)[0].status.value == "unknown"
    drive(shop, start=at)
    assert status(shop, no) == "delivered"
    (row,) = supplier_rows(shop, no)  # the same number, the same supplier: no failover
    assert (row.supplier, row.status.value) == ("gen", "succeeded")
    assert "resubmitted" in events(shop, no) and "failover" not in events(shop, no)
    (charged,) = sim_orders(sim, "13800138003")
    assert charged["customer_order_no"] == f"{no}-1-1"


def test_when_every_route_fails_the_order_is_refunded_and_the_buyer_told(
    container: bootstrap.Container, sim: Simulator
) -> None:
    shop = container.shop
    connect(shop, sim)
    recharge_sku(shop, "TOPUP", route("fulu", 0), route("gen", 1), route("absent", 2))
    no = buy(shop, "TOPUP", buyer_input={"phone": "13800138004"})
    sim.script(f"{no}-1-1", Fate(fail=True))
    sim.script(f"{no}-1-2", Fate(fail=True, processing=True))  # accepted, fails later
    at = drive(shop)
    assert status(shop, no) == "paid"  # gen is processing: nothing is given up yet
    sim.settle(f"{no}-1-2")
    drive(shop, start=at)
    assert status(shop, no) == "failed"
    run_once(container, sweep=False)  # the refund of the failed line's share
    assert status(shop, no) == "refunded"
    assert events(shop, no) == [
        "line_created",
        "queued",
        "submitting",
        "supplier_failed",
        "failover",
        "submitting",
        "processing",
        "queried",
        "supplier_failed",
        "route_skipped",  # "absent" is not a configured account
        "line_failed",
        "share_refund",
    ]
    with shop.db.read() as s:
        mails = [j.payload.get("event") for j in outbox.list_jobs(s, ref=no)]
    assert "refunded" in mails
    assert sum(sim.charges_per_account().values()) == 0  # Fulu refused, gen refunded


def test_an_outcome_that_never_clears_waits_for_a_person(
    shop: fulfilment.Shop, sim: Simulator
) -> None:
    shop.suppliers = SupplierRegistry()
    shop.suppliers.register(fulu.SPEC.build("fulu", sim.options("fulu")))
    # Wrong credentials: every answer fails its signature check, so nothing is ever known.
    shop.suppliers.register(
        generic.SPEC.build("gen", dict(sim.options("generic"), secret="not-the-secret-0123456789"))
    )
    shop.supplier_unknown_limit = 3
    recharge_sku(shop, "TOPUP", route("gen", 0), route("fulu", 1))
    no = buy(shop, "TOPUP", buyer_input={"phone": "13800138005"})
    drive(shop, rounds=5)
    (row,) = supplier_rows(shop, no)  # never another supplier while the charge may stand
    assert (row.status.value, row.attempts) == ("escalated", 3)
    assert status(shop, no) == "paid"
    assert events(shop, no).count("unknown") == 2 and events(shop, no)[-1] == "escalated"
    ((line, escalated),) = fulfilment.escalated_lines(shop)
    assert escalated.customer_order_no == row.customer_order_no
    fulfilment.fail_by_hand(shop, line.id, "the supplier never received it", "ops")
    assert status(shop, no) == "failed"


# -- callbacks through the real endpoint -------------------------------------------------------
def test_a_callback_settles_the_order_like_a_poll(
    container: bootstrap.Container, sim: Simulator, served: str
) -> None:
    shop = container.shop
    url = f"{served}/api/v1/suppliers/gen/callback"
    connect(shop, sim, notify_url=url)
    recharge_sku(shop, "TOPUP", route("gen", 0), route("fulu", 1))
    no = buy(shop, "TOPUP", buyer_input={"phone": "13800138006"})
    number = f"{no}-1-1"
    sim.script(number, Fate(processing=True))
    drive(shop)
    assert supplier_rows(shop, no)[0].status.value == "processing"
    # A forged callback is refused and changes nothing.
    forged = generic.order_body({"customer_order_no": number, "status": "failed"})
    headers = generic.signed_headers("sim-key", "forged-secret-0123456789abc", forged)
    assert post(url, forged, headers, timeout=5).status == 400
    assert sim.settle(number) == 1  # the supplier finishes: its callback reaches the shop
    for _ in range(400):  # until the simulator saw its callback acknowledged
        (order,) = sim_orders(sim, "13800138006")
        if order["callback_acked"]:
            break
        time.sleep(0.025)
    assert order["callback_acked"] is True
    assert status(shop, no) == "delivered"  # no poll ran: the callback did it
    assert events(shop, no)[-3:] == ["callback", "supplier_succeeded", "line_delivered"]
    # The same callback again (suppliers retry) is acknowledged and changes nothing.
    body = generic.order_body(
        {
            "customer_order_no": number,
            "supplier_order_no": order["supplier_order_no"],
            "status": "succeeded",
            "cost_minor": PRICE,
            "cards": [],
        }
    )
    answer = post(
        url,
        body,
        generic.signed_headers("sim-key", sim.options("generic")["secret"], body),
        timeout=5,
    )
    assert (answer.status, answer.body) == (200, b"ok")
    assert len(revealed(shop, no)) == 1
    assert events(shop, no)[-1] == "line_delivered"
    unknown = post(f"{served}/api/v1/suppliers/nobody/callback", b"{}", {}, timeout=5)
    assert unknown.status == 404


# -- the acceptance run ------------------------------------------------------------------------
def test_a_thousand_orders_against_a_misbehaving_simulator(container: bootstrap.Container) -> None:
    """20 % of new supplier orders refused, 10 % answered after the client's time-out (and some
    processing for a moment, then succeeding or failing), three workers at once: every order
    ends delivered or refunded, none stays in flight, and no account is charged twice."""
    shop = container.shop
    config = SimConfig(
        seed=20,
        fail_rate=0.2,
        timeout_rate=0.1,
        hang_s=1.0,
        processing_rate=0.1,
        processing_ms=10,
    )
    total = 1000
    with Simulator(config) as sim:
        connect(shop, sim, timeout=0.1)
        recharge_sku(shop, "TOPUP", route("fulu", 0), route("yr", 1))
        phones = {}
        for n in range(total):
            phone = f"139{n:08d}"
            phones[buy(shop, "TOPUP", email=f"b{n}@example.com", buyer_input={"phone": phone})] = (
                phone
            )
        at = utcnow()
        for _ in range(40):  # bounded: every unknown clears by the query after it
            if not open_lines(shop):
                break
            at = drive(shop, start=at, workers=3)
        assert open_lines(shop) == 0
        while run_once(container, sweep=False):  # the refunds of failed lines
            pass
        ledger = sim.ledger()
    with shop.db.read() as s:
        final = {no: orders.get_order(s, no).status for no in phones}
        ends = Counter(final.values())
        rows = s.execute(
            text("SELECT status, count(*) FROM delivery_supplier_order GROUP BY status")
        )
        supplier_states: dict[str, int] = dict(rows.tuples().all())
        all_events = Counter(
            e for (e,) in s.execute(text("SELECT event FROM delivery_line_event")).tuples()
        )
    assert set(ends) <= {"delivered", "refunded"}, ends
    assert ends["delivered"] + ends["refunded"] == total
    assert set(supplier_states) <= {"succeeded", "failed"}, supplier_states
    # The run exercised what it claims to: failover, time-outs, refunds.
    assert all_events["failover"] > 0 and all_events["unknown"] > 0 and ends["refunded"] > 0
    assert all(o["status"] != "processing" for o in ledger["orders"])
    succeeded = Counter(o["target"] for o in ledger["orders"] if o["status"] == "succeeded")
    assert max(succeeded.values()) == 1  # no account recharged twice
    for no, phone in phones.items():  # delivered ⇔ recharged once; refunded ⇔ not at all
        assert succeeded.get(phone, 0) == (1 if final[no] == "delivered" else 0), no
    charged = sum(ledger["charges_per_account"].values())
    assert charged == PRICE * ends["delivered"]


# -- the accounts file -------------------------------------------------------------------------
def test_the_accounts_file_keeps_secrets_out_and_derives_the_callback_url(
    tmp_path: Path, settings: Settings
) -> None:
    (tmp_path / "gen.secret").write_text("a-generic-secret-0123456789\n")
    accounts = tmp_path / "suppliers.toml"
    accounts.write_text(
        "[gen]\nprotocol = 'generic'\nbase_url = 'https://supplier.example.com/kami'\n"
        "key_id = 'shop-1'\nsecret_file = 'gen.secret'\n"
        "[yr]\nprotocol = 'dayuanren'\nbase_url = 'https://yr.example.com/yrapi.php'\n"
        "userid = '10001'\napikey = 'written-inline'\n"
        "[off]\nprotocol = 'fulu'\nenabled = false\ngateway_url = 'https://f.example.com'\n"
        "app_key = 'k'\napp_secret_env = 'KAMI_TEST_NO_SUCH_VARIABLE'\n"
    )
    configured = settings.model_copy(update={"supplier_accounts_file": accounts})
    checks = {c.name: c for c in check_suppliers(configured, environ={})}
    assert checks["gen"].errors == [] and checks["gen"].supplier is not None
    assert checks["gen"].callback_url == "http://testserver/api/v1/suppliers/gen/callback"
    assert checks["gen"].supplier._notify_url == checks["gen"].callback_url  # type: ignore[attr-defined]
    assert checks["yr"].errors == [
        "apikey: a secret must not be written in the accounts file; "
        'use apikey_file = "path" or apikey_env = "VARIABLE"'
    ]
    assert checks["off"].errors == [
        "app_secret_env: environment variable KAMI_TEST_NO_SUCH_VARIABLE is not set"
    ]
    assert all("written-inline" not in e for c in checks.values() for e in c.errors)
    with pytest.raises(InvalidInput) as stopped:
        configured_suppliers(configured)
    assert stopped.value.slug == "supplier-config"
