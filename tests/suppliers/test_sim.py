"""The simulator itself: it refuses badly signed requests, keeps an honest ledger, and a naive
driver against a misbehaving simulator never ends with an order charged twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from kami.suppliers import (
    SUPPLIER_SPECS,
    SimConfig,
    Simulator,
    Supplier,
    SupplierOrderStatus,
    SupplierRequest,
    SupplierResult,
    dayuanren,
    fulu,
    generic,
)
from kami.suppliers.base import post
from kami.suppliers.sim import DEFAULT_PRODUCTS

S = SupplierOrderStatus
SPECS = {spec.protocol: spec for spec in SUPPLIER_SPECS}
PRICES = {p.product_id: p.price_minor for p in DEFAULT_PRODUCTS}


def build(sim: Simulator, protocol: str, timeout: float = 2.0, **changes: str) -> Supplier:
    return SPECS[protocol].build(
        protocol, dict(sim.options(protocol), timeout=str(timeout), **changes)
    )


@pytest.mark.parametrize(
    ("protocol", "secret_option"),
    [("fulu", "app_secret"), ("dayuanren", "apikey"), ("generic", "secret")],
)
def test_badly_signed_requests_are_refused_and_book_nothing(
    protocol: str, secret_option: str
) -> None:
    with Simulator() as sim:
        forger = build(sim, protocol, 2.0, **{secret_option: "wrong-secret-0123456789"})
        result = forger.submit(SupplierRequest("KS1", "10000001", 1, "13800138000"))
        assert result.status is S.UNKNOWN  # refused, and the query is refused too
        assert forger.query("KS1").status is S.UNKNOWN
        assert sim.ledger()["orders"] == []
        assert sum(sim.charges_per_account().values()) == 0


def test_the_simulator_answers_bad_signatures_in_each_protocol() -> None:
    with Simulator() as sim:
        opts = sim.options("fulu")
        params = {
            "app_key": opts["app_key"],
            "method": fulu.INFO_GET,
            "timestamp": fulu.beijing_timestamp(),
            "version": "2.0",
            "format": "json",
            "charset": "utf-8",
            "sign_type": "md5",
            "app_auth_token": "",
            "biz_content": '{"customer_order_no":"K1"}',
        }
        params["sign"] = fulu.sign(params, "not-the-secret")
        answer = post(opts["gateway_url"], fulu.compact(params).encode(), {}, timeout=2)
        assert json.loads(answer.body)["code"] == 1001
        params["sign"] = fulu.sign(
            dict(params, timestamp="2001-01-01 00:00:00"), opts["app_secret"]
        )
        params["timestamp"] = "2001-01-01 00:00:00"  # correctly signed, but stale
        answer = post(opts["gateway_url"], fulu.compact(params).encode(), {}, timeout=2)
        assert json.loads(answer.body)["code"] == 1004

        opts = sim.options("dayuanren")
        form = {"userid": opts["userid"], "out_trade_nums": "K1"}
        form["sign"] = dayuanren.sign(form, "not-the-key")
        body = urllib.parse.urlencode(form).encode()
        answer = post(opts["base_url"] + "/index/check", body, {}, timeout=2)
        assert json.loads(answer.body)["errmsg"] == "签名错误"

        opts = sim.options("generic")
        body = b'{"customer_order_no":"K1"}'
        headers = generic.signed_headers(opts["key_id"], "not-the-secret-123", body)
        answer = post(opts["base_url"] + "/orders/query", body, headers, timeout=2)
        assert (answer.status, json.loads(answer.body)["error"]) == (401, "bad_signature")
        stale = generic.signed_headers(opts["key_id"], opts["secret"], body, now=time.time() - 301)
        answer = post(opts["base_url"] + "/orders/query", body, stale, timeout=2)
        assert answer.status == 401


def test_the_ledger_is_served_as_json_and_dumped_to_a_file(tmp_path: Path) -> None:
    dump = tmp_path / "ledger.json"
    with Simulator(SimConfig(ledger_file=dump)) as sim:
        build(sim, "generic").submit(SupplierRequest("KL1", "20000002", 3, None, "card"))
        with urllib.request.urlopen(f"{sim.url}/_sim/ledger", timeout=2) as resp:
            served = json.loads(resp.read())
    [order] = served["orders"]
    assert (order["customer_order_no"], order["status"], len(order["cards"])) == (
        "KL1",
        "succeeded",
        3,
    )
    assert served["charges_per_account"]["generic:sim-key"] == 3 * 99
    assert json.loads(dump.read_text())["orders"][0]["customer_order_no"] == "KL1"


def drive(supplier: Supplier, orders: list[SupplierRequest]) -> tuple[dict[str, S], Counter[str]]:
    """The naive driver: submit once; while not definitive, query (never resubmit elsewhere)."""
    outcome: dict[str, S] = {}
    seen: Counter[str] = Counter()
    for request in orders:
        result: SupplierResult = supplier.submit(request)
        seen[result.status.value] += 1
        while result.status in (S.UNKNOWN, S.PROCESSING):
            time.sleep(0.005)
            result = supplier.query(request.customer_order_no)
        outcome[request.customer_order_no] = result.status
    return outcome, seen


def test_a_naive_driver_under_failures_and_time_outs_never_double_charges() -> None:
    """300 orders (100 per protocol, each on its own seeded simulator so runs repeat) with 20 %
    refusals, 10 % answers lost after booking and 30 % slow orders."""
    config = dict(
        fail_rate=0.2, timeout_rate=0.1, processing_rate=0.3, processing_ms=20, hang_s=1.0
    )
    runs: dict[str, tuple[Simulator, dict[str, S], Counter[str], list[SupplierRequest]]] = {}

    def run(protocol: str, seed: int) -> None:
        sim = Simulator(SimConfig(seed=seed, **config)).start()  # type: ignore[arg-type]
        orders = [
            SupplierRequest(
                f"N{protocol[:2]}{i:04d}",
                pid,
                1,
                "13800138000" if pid[0] == "1" else None,
                "recharge" if pid[0] == "1" else "card",
            )
            for i, pid in enumerate(["10000001", "10000002", "20000001", "20000002"] * 25)
        ]
        outcome, seen = drive(build(sim, protocol, timeout=0.2), orders)
        runs[protocol] = (sim, outcome, seen, orders)

    threads = [
        threading.Thread(target=run, args=(p, seed))
        for seed, p in enumerate(["fulu", "dayuanren", "generic"], start=1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(runs) == {"fulu", "dayuanren", "generic"}
    for protocol, (sim, outcome, seen, orders) in runs.items():
        try:
            ledger = sim.ledger()
            assert set(outcome.values()) <= {S.SUCCEEDED, S.FAILED}
            assert len(outcome) == 100
            assert seen[S.UNKNOWN.value] > 0, "the run must include lost answers"
            debits = Counter(
                e["customer_order_no"] for e in ledger["journal"] if e["kind"] == "debit"
            )
            assert max(debits.values()) == 1  # no customer_order_no charged twice
            succeeded = {no for no, s in outcome.items() if s is S.SUCCEEDED}
            booked_ok = {
                o["customer_order_no"] for o in ledger["orders"] if o["status"] == "succeeded"
            }
            assert succeeded == booked_ok
            assert 0 < len(outcome) - len(succeeded) < 50
            price = {r.customer_order_no: PRICES[r.product_id] for r in orders}
            assert sum(sim.charges_per_account().values()) == sum(price[no] for no in succeeded)
        finally:
            sim.stop()


def test_a_seed_reproduces_a_sequential_run() -> None:
    def once() -> list[tuple[str, str]]:
        with Simulator(SimConfig(seed=42, fail_rate=0.5, processing_rate=0.5)) as sim:
            supplier = build(sim, "generic")
            for i in range(20):
                supplier.submit(SupplierRequest(f"R{i}", "20000002", 1, None, "card"))
            return [
                (o["customer_order_no"], o["status"] + str(o["cards"]))
                for o in sim.ledger()["orders"]
            ]

    assert once() == once()


def test_the_cli_runs_the_simulator_in_the_foreground() -> None:
    code = (
        "import typer\n"
        "from kami.cli.suppliersim import supplier_sim\n"
        "app = typer.Typer()\n"
        "app.command('supplier-sim')(supplier_sim)\n"
        "app.command('noop')(lambda: None)\n"
        "app()\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-c",
            code,
            "supplier-sim",
            "--port",
            "0",
            "--seed",
            "1",
            "--fail-rate",
            "0.2",
            "--balance",
            "5000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, COLUMNS="300"),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("supplier simulator on http://127.0.0.1:")
        url = first.split()[3]
        lines = [proc.stdout.readline() for _ in range(3)]
        assert "app_secret=" in lines[0] and "apikey=" in lines[1] and "secret=" in lines[2]
        with urllib.request.urlopen(f"{url}/_sim/ledger", timeout=5) as resp:
            ledger = json.loads(resp.read())
        assert ledger["balances"]["fulu:SIMFULUAPPKEY"] == 5000
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_bad_cli_options_are_one_clear_line() -> None:
    code = (
        "import typer\n"
        "from kami.cli.suppliersim import supplier_sim\n"
        "app = typer.Typer()\n"
        "app.command('supplier-sim')(supplier_sim)\n"
        "app.command('noop')(lambda: None)\n"
        "app()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "supplier-sim", "--fail-rate", "1.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "fail_rate: must be between 0 and 1" in done.stderr
