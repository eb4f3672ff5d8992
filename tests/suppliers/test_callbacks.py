"""Signed callbacks from the simulator, verified by the adapters (and tampered ones refused)."""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kami.suppliers import (
    SUPPLIER_SPECS,
    CallbackRejected,
    Fate,
    GenericSupplier,
    SimConfig,
    Simulator,
    Supplier,
    SupplierCallback,
    SupplierOrderStatus,
    SupplierRequest,
    SupplierResult,
    dayuanren,
)

S = SupplierOrderStatus
SPECS = {spec.protocol: spec for spec in SUPPLIER_SPECS}


class Receiver:
    """Kami's callback endpoint in miniature: verify, then answer with acknowledge()."""

    def __init__(self, refuse_first: int = 0) -> None:
        self.supplier: Supplier | None = None
        self.refuse_first = refuse_first
        self.calls: list[SupplierCallback] = []
        self.results: list[SupplierResult] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                raw = SupplierCallback(
                    "POST",
                    {k.lower(): v for k, v in self.headers.items()},
                    dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)),
                    body,
                )
                assert receiver.supplier is not None
                try:
                    result = receiver.supplier.verify_callback(raw)
                    ok = len(receiver.calls) >= receiver.refuse_first
                except CallbackRejected:
                    result, ok = None, False
                status, answer, ctype = receiver.supplier.acknowledge(ok)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                with receiver.arrived:
                    receiver.calls.append(raw)
                    if result is not None:
                        receiver.results.append(result)
                    receiver.arrived.notify_all()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def wait_for(self, calls: int) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.calls) >= calls, timeout=10)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def settled_order(sim: Simulator, attempts: int) -> dict[str, Any]:
    """The only order once the simulator has noted `attempts` callback attempts (the receiver
    records a call just before the simulator notes the answer)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        [order] = sim.ledger()["orders"]
        if order["callback_attempts"] >= attempts:
            return dict(order)
        time.sleep(0.01)
    raise AssertionError("the simulator never noted the callback")


def start(receiver: Receiver, protocol: str, **config: Any) -> tuple[Simulator, Supplier]:
    sim = Simulator(SimConfig(callback_url=receiver.url, **config)).start()
    options = dict(sim.options(protocol), timeout="2")
    if protocol != "fulu":  # Fulu's callback address is set in its console, not per order
        options["notify_url"] = receiver.url
    supplier = SPECS[protocol].build(protocol, options)
    receiver.supplier = supplier
    return sim, supplier


def tampered(raw: SupplierCallback, protocol: str) -> SupplierCallback:
    if protocol == "dayuanren":
        return replace(raw, body=raw.body.replace(b"state=1", b"state=2"))
    return replace(raw, body=raw.body.replace(b"succe", b"faile", 1))


@pytest.mark.parametrize("protocol", ["fulu", "dayuanren", "generic"])
def test_callbacks_are_signed_verified_and_acknowledged(receiver: Receiver, protocol: str) -> None:
    sim, supplier = start(receiver, protocol)
    try:
        sim.script("KCB1", Fate(processing=True))
        supplier.submit(SupplierRequest("KCB1", "10000001", 1, "13800138000"))
        sim.settle("KCB1")
        receiver.wait_for(1)
        [result] = receiver.results
        assert (result.customer_order_no, result.status) == ("KCB1", S.SUCCEEDED)
        assert result.supplier_order_no == supplier.query("KCB1").supplier_order_no
        assert result.cost_minor == 4630
        order = settled_order(sim, 1)
        assert (order["callback_attempts"], order["callback_acked"]) == (1, True)

        forged = tampered(receiver.calls[0], protocol)
        assert forged.body != receiver.calls[0].body
        with pytest.raises(CallbackRejected) as caught:
            supplier.verify_callback(forged)
        assert caught.value.slug == "bad-signature"
    finally:
        sim.stop()


@pytest.mark.parametrize("protocol", ["fulu", "dayuanren", "generic"])
def test_an_unacknowledged_callback_is_retried(protocol: str) -> None:
    receiver = Receiver(refuse_first=1)
    sim, supplier = start(receiver, protocol, callback_delays=(0.0, 0.05, 0.05))
    try:
        supplier.submit(SupplierRequest("KCB2", "10000001", 1, "13800138000"))
        receiver.wait_for(2)
        assert [r.status for r in receiver.results] == [S.SUCCEEDED, S.SUCCEEDED]
        order = settled_order(sim, 2)
        assert (order["callback_attempts"], order["callback_acked"]) == (2, True)
    finally:
        sim.stop()
        receiver.close()


def test_a_failed_order_is_called_back_as_failed(receiver: Receiver) -> None:
    sim, supplier = start(receiver, "dayuanren")
    try:
        sim.script("KCB3", Fate(processing=True, fail=True))
        supplier.submit(SupplierRequest("KCB3", "10000001", 1, "13800138000"))
        sim.settle("KCB3")
        receiver.wait_for(1)
        assert receiver.results[0].status is S.FAILED
    finally:
        sim.stop()


def test_callback_rejections_name_the_reason(receiver: Receiver) -> None:
    sim, supplier = start(receiver, "generic")
    try:
        supplier.submit(SupplierRequest("KCB4", "10000001", 1, "13800138000"))
        receiver.wait_for(1)
        raw = receiver.calls[0]
        assert isinstance(supplier, GenericSupplier)
        options = sim.options("generic")
        late = GenericSupplier(
            options["base_url"],
            options["key_id"],
            options["secret"],
            clock=lambda: time.time() + 301,
        )
        with pytest.raises(CallbackRejected) as caught:
            late.verify_callback(raw)
        assert caught.value.slug == "stale-callback"
        other = GenericSupplier(options["base_url"], "other-key", options["secret"])
        with pytest.raises(CallbackRejected) as caught:
            other.verify_callback(raw)
        assert caught.value.slug == "unknown-merchant"
    finally:
        sim.stop()
    fulu = SPECS["fulu"].build(
        "fulu", {"gateway_url": "http://x", "app_key": "k", "app_secret": "s"}
    )
    with pytest.raises(CallbackRejected) as caught:
        fulu.verify_callback(SupplierCallback("POST", {}, {}, b"not json"))
    assert caught.value.slug == "malformed-callback"
    with pytest.raises(CallbackRejected) as caught:
        fulu.verify_callback(SupplierCallback("POST", {}, {}, b'{"customer_order_no":"K"}'))
    assert caught.value.slug == "bad-signature"
    yr = SPECS["dayuanren"].build("yr", {"base_url": "http://x", "userid": "1", "apikey": "k"})
    fields = {"userid": "2", "out_trade_num": "K", "state": "1"}
    body = urllib.parse.urlencode(dict(fields, sign=dayuanren.sign(fields, "k"))).encode()
    with pytest.raises(CallbackRejected) as caught:
        yr.verify_callback(SupplierCallback("POST", {}, {}, body))
    assert caught.value.slug == "unknown-merchant"


def test_acknowledgements_are_what_each_protocol_expects() -> None:
    fulu = SPECS["fulu"].build("f", {"gateway_url": "http://x", "app_key": "k", "app_secret": "s"})
    yr = SPECS["dayuanren"].build("y", {"base_url": "http://x", "userid": "1", "apikey": "k"})
    generic = SPECS["generic"].build(
        "g", {"base_url": "http://x", "key_id": "k", "secret": "s" * 16}
    )
    assert fulu.acknowledge(True)[:2] == (200, b"success")
    assert yr.acknowledge(True)[:2] == (200, b"success")
    assert generic.acknowledge(True)[0] == 200
    for supplier in (fulu, yr, generic):
        assert supplier.acknowledge(False)[0] >= 400


def test_dayuanren_partial_success_and_card_lines() -> None:
    yr = SPECS["dayuanren"].build("yr", {"base_url": "http://x", "userid": "1", "apikey": "k"})
    fields = {
        "userid": "1",
        "order_number": "Y1",
        "out_trade_num": "K1",
        "state": "3",
        "charge_amount": "30.00",
        "charge_kami": "",
        "remark": "部分成功",
    }
    body = urllib.parse.urlencode(dict(fields, sign=dayuanren.sign(fields, "k"))).encode()
    result = yr.verify_callback(SupplierCallback("POST", {}, {}, body))
    assert (result.status, result.partial) == (S.SUCCEEDED, True)
    assert "30.00" in (result.detail or "")
    cards = dayuanren.parse_cards("A1,P1\r\nA2----P2\nA3 | P3\n\nONLY\n")
    assert [(c.card, c.password) for c in cards] == [
        ("A1", "P1"),
        ("A2", "P2"),
        ("A3", "P3"),
        ("ONLY", None),
    ]
    fields = dict(fields, state="1", charge_kami="A1,P1")
    body = urllib.parse.urlencode(dict(fields, sign=dayuanren.sign(fields, "k"))).encode()
    result = yr.verify_callback(SupplierCallback("POST", {}, {}, body))
    assert [(c.card, c.password) for c in result.cards] == [("A1", "P1")]
    assert "P1" not in result.raw and not result.partial
