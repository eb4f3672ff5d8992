"""Acceptance: the server is SIGKILLed in the middle of a stream of payment notifications.

A real `kami serve` process is started on a loopback port against the test database, a few
client threads stream signed sandbox notifications at it, and once a third of them have been
acknowledged the server process itself (not a wrapper: uvicorn runs in the `kami serve`
process when it has one worker) gets SIGKILL. Then:

* before anything restarts, every acknowledged notification is already durable: its order is
  delivered in the database (an acknowledgement means the transaction committed);
* the server is restarted and every notification is sent again, as a channel retries those it
  saw no acknowledgement for and may repeat those it did; every one is acknowledged;
* every order ends up delivered exactly once: one inbox row, one accepted notification, one mail
  job, `quantity` delivery rows on distinct keys, each key sold to that order and no other, and
  nothing half-written (no paid-but-undelivered order, no sold key without its delivery row).

Everything is bounded: HTTP timeouts, a deadline for the server to come up and for the stream,
and the server process is always killed in a `finally`. Nothing is asserted about timing.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from sqlalchemy import Connection, create_engine, text

from kami import fulfilment
from kami.config import Settings
from tests.conftest import add_keys, make_sku, place, random_keys, sandbox_body, sign

N_ORDERS = 200
SPARE_KEYS = 25
CLIENT_THREADS = 4
KILL_AFTER_ACKS = N_ORDERS // 3
PRICE = 990

HTTP_TIMEOUT = httpx.Timeout(15.0, connect=3.0)
START_DEADLINE = 60.0  # seconds for `kami serve` to answer /healthz
STREAM_DEADLINE = 180.0  # seconds for a whole stream of notifications
STOP_DEADLINE = 15.0  # seconds for a process to go away once signalled
NOTIFY_PATH = "/api/v1/payments/sandbox/notify"
MAIL_JOB = fulfilment.MAIL_JOB


# -- the server process -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env(settings: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KAMI_")}
    assert settings.master_key is not None and settings.sandbox_secret is not None
    env.update(
        {
            "KAMI_DATABASE_URL": settings.database_url,
            "KAMI_MASTER_KEY": settings.master_key.get_secret_value(),
            "KAMI_MASTER_KEY_FILE": str(settings.master_key_file),
            "KAMI_SANDBOX_ENABLED": "true",
            "KAMI_SANDBOX_SECRET": settings.sandbox_secret.get_secret_value(),
            "KAMI_HOST": "127.0.0.1",
            "KAMI_PORT": str(port),
            "KAMI_PUBLIC_URL": f"http://127.0.0.1:{port}",
            # The job worker runs in the server as in production: it writes too.
            "KAMI_INPROCESS_WORKER": "true",
            "KAMI_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class Server:
    """One `kami serve` process; its output goes to a log file kept for failure messages."""

    settings: Settings
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no server log>"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        self.starts += 1
        if self.log is None:
            self.log = self.log_path.open("ab")
        self.log.write(f"\n===== start #{self.starts} =====\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kami.cli.main", "serve"],
            cwd=self.workdir,
            env=_server_env(self.settings, self.port),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_DEADLINE
        with httpx.Client(timeout=httpx.Timeout(2.0)) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"kami serve exited with {self.proc.returncode} before answering:\n"
                        + self.log_tail()
                    )
                try:
                    if c.get(f"{self.base_url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise AssertionError(
            f"kami serve did not answer /healthz within {START_DEADLINE} s:\n" + self.log_tail()
        )

    def sigkill(self) -> None:
        """SIGKILL the serving process by its pid and reap it."""
        assert self.proc is not None and self.proc.poll() is None, "server is not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        returncode = self.proc.wait(timeout=STOP_DEADLINE)
        assert returncode == -signal.SIGKILL, returncode

    def stop(self) -> None:
        """Graceful stop (SIGTERM), falling back to SIGKILL; safe to call at any time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_DEADLINE)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_DEADLINE)
        if self.log is not None:
            self.log.close()
            self.log = None


# -- the notification stream --------------------------------------------------------------------
@dataclass(frozen=True)
class Notice:
    order_no: str
    quantity: int
    body: bytes
    signature: str


@dataclass
class StreamResult:
    acked: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # never reached the server (connect failed)
    # Sent, but no answer: in flight at the kill, or written to a keep-alive connection the kill
    # had closed. The channel cannot tell whether these were applied, so it retries them.
    in_doubt: set[str] = field(default_factory=set)
    other: dict[str, str] = field(default_factory=dict)  # any other HTTP answer: must not happen
    acked_before_kill: int | None = None


def _stream(
    base_url: str,
    notices: list[Notice],
    *,
    kill_after: int | None = None,
    kill: threading.Event | None = None,
) -> tuple[StreamResult, threading.Event, list[threading.Thread]]:
    """Post every notice from CLIENT_THREADS threads; sets `reached` at `kill_after` acks."""
    todo: queue.Queue[Notice] = queue.Queue()
    for n in notices:
        todo.put(n)
    result = StreamResult()
    lock = threading.Lock()
    reached = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT) as c:
            while True:
                try:
                    n = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    r = c.post(
                        NOTIFY_PATH,
                        content=n.body,
                        headers={
                            "X-Sandbox-Signature": n.signature,
                            "Content-Type": "application/json",
                        },
                    )
                except httpx.ConnectError:
                    with lock:
                        result.refused.add(n.order_no)
                    continue
                except httpx.TransportError:
                    with lock:
                        result.in_doubt.add(n.order_no)
                    continue
                with lock:
                    if r.status_code == 200:
                        result.acked.add(n.order_no)
                        if kill_after is not None and len(result.acked) >= kill_after:
                            reached.set()
                    else:
                        result.other[n.order_no] = f"{r.status_code} {r.text[:300]}"

    threads = [
        threading.Thread(target=client, name=f"notify-client-{i}", daemon=True)
        for i in range(CLIENT_THREADS)
    ]
    for t in threads:
        t.start()
    return result, reached, threads


def _join(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + STREAM_DEADLINE
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"client threads did not finish within {STREAM_DEADLINE} s: {alive}"


# -- the database, read directly ----------------------------------------------------------------
def _check_consistent(conn: Connection, notices: list[Notice], total_keys: int) -> set[str]:
    """Every order is whole: delivered exactly once, or untouched and pending. Returns the former.

    Delivered: one inbox row for its own trade, one accepted notification, `quantity` delivery
    rows on keys sold to it and to no other order, one "delivered" mail job. Pending: no inbox
    row, no accepted notification, no delivery row, no key, no job. Nothing in between.
    """
    by_no = {n.order_no: n for n in notices}
    orders = {
        r.order_no: r
        for r in conn.execute(
            text(
                "SELECT id, order_no, status, quantity, amount_minor, trade_no, paid_at, "
                "delivered_at FROM orders_order"
            )
        )
    }
    assert set(orders) == set(by_no)
    id_to_no = {r.id: r.order_no for r in orders.values()}
    statuses = Counter(r.status for r in orders.values())
    assert set(statuses) <= {"pending", "delivered"}, statuses
    delivered = {no for no, r in orders.items() if r.status == "delivered"}
    for no, r in orders.items():
        assert r.quantity == by_no[no].quantity
        if no in delivered:
            assert r.trade_no == f"T{no}", (no, r.trade_no)
            assert r.paid_at is not None and r.delivered_at is not None, no
        else:
            assert r.trade_no is None and r.paid_at is None and r.delivered_at is None, no
    once = Counter(dict.fromkeys(delivered, 1))

    # Exactly one inbox row per delivered order, for its own trade; none for the others.
    inbox = conn.execute(
        text("SELECT gateway, trade_no, order_id, amount_minor FROM payments_inbox")
    ).all()
    assert Counter(id_to_no.get(r.order_id) for r in inbox) == once
    for r in inbox:
        no = id_to_no[r.order_id]
        assert (r.gateway, r.trade_no) == ("sandbox", f"T{no}"), r
        assert r.amount_minor == orders[no].amount_minor, r

    # One accepted notification per delivered order; any other is a harmless duplicate of one.
    verdicts = conn.execute(
        text("SELECT order_no, verdict, reason FROM payments_notification")
    ).all()
    assert Counter(r.order_no for r in verdicts if r.verdict == "accepted") == once
    for r in verdicts:
        if r.verdict != "accepted":
            assert (r.verdict, r.reason) == ("duplicate", None) and r.order_no in delivered, r

    # Delivery rows: positions 1..quantity per delivered order, none elsewhere, no key twice.
    items = conn.execute(text("SELECT order_id, position, key_id FROM delivery_item")).all()
    positions: dict[str, list[int]] = {no: [] for no in by_no}
    for r in items:
        positions[id_to_no[r.order_id]].append(r.position)
    for no, got in positions.items():
        want = list(range(1, by_no[no].quantity + 1)) if no in delivered else []
        assert sorted(got) == want, (no, got)
    key_ids = [r.key_id for r in items]
    assert len(key_ids) == len(set(key_ids)), "a key was delivered twice"

    # Keys: sold exactly to the order whose delivery row holds them; all others available.
    keys = {
        r.id: r for r in conn.execute(text("SELECT id, status, order_id, sold_at FROM vault_key"))
    }
    assert len(keys) == total_keys
    sold = {k for k, r in keys.items() if r.status == "sold"}
    assert len(sold) == sum(by_no[no].quantity for no in delivered) == len(items)
    assert sold == set(key_ids), "sold keys and delivered keys differ"
    for r in items:
        key = keys[r.key_id]
        assert key.order_id == r.order_id and key.sold_at is not None, (r, key)
    # Every other key is on sale, or reserved whole for one still-pending order.
    reserved: Counter[int] = Counter()
    for k, r in keys.items():
        if k in sold:
            continue
        if r.status == "reserved":
            assert r.order_id in id_to_no and id_to_no[r.order_id] not in delivered, r
            reserved[r.order_id] += 1
        else:
            assert r.status == "available" and r.order_id is None and r.sold_at is None, r
    for order_id, count in reserved.items():
        assert count == by_no[id_to_no[order_id]].quantity, (order_id, count)

    # One "delivered" mail job per delivered order, and no other (none waited for stock).
    jobs = conn.execute(text("SELECT kind, ref, payload FROM kernel_outbox")).all()
    assert Counter(j.ref for j in jobs) == once
    for j in jobs:
        payload = json.loads(j.payload) if isinstance(j.payload, str) else j.payload
        assert j.kind == MAIL_JOB and payload["event"] == "delivered", j
    return delivered


# -- the test -----------------------------------------------------------------------------------
def test_sigkill_mid_stream_then_restart_delivers_exactly_once(
    shop: fulfilment.Shop, settings: Settings, database_url: str, tmp_path: Path
) -> None:
    # Prepare the shop in this process: one SKU, enough keys, N pending orders of 1 or 2.
    sku = make_sku(shop, price=PRICE)
    quantities = [2 if i % 3 == 0 else 1 for i in range(N_ORDERS)]
    total_keys = sum(quantities) + SPARE_KEYS
    report = add_keys(shop, sku, random_keys(total_keys))
    assert report.imported == total_keys
    notices: list[Notice] = []
    for n, q in enumerate(quantities):
        order = place(shop, sku.code, q, email=f"buyer{n}@example.com").order
        body = sandbox_body(order.order_no, order.amount_minor)
        notices.append(Notice(order.order_no, q, body, sign(body)))
    all_nos = {n.order_no for n in notices}
    assert len(all_nos) == N_ORDERS
    shop.db.dispose()  # this process holds no connection while the server runs

    server = Server(settings, _free_port(), tmp_path)
    check_engine = create_engine(database_url)
    try:
        # 1. Stream, and SIGKILL the server once a third of the stream is acknowledged.
        server.start()
        first, reached, threads = _stream(server.base_url, notices, kill_after=KILL_AFTER_ACKS)
        assert reached.wait(timeout=STREAM_DEADLINE), (
            f"only {len(first.acked)} acknowledgements:\n{server.log_tail()}"
        )
        first.acked_before_kill = len(first.acked)
        server.sigkill()
        _join(threads)
        # The kill really took the listener down.
        with httpx.Client(timeout=HTTP_TIMEOUT) as c:
            try:
                c.get(f"{server.base_url}/healthz")
            except httpx.ConnectError:
                pass
            else:
                raise AssertionError("something still answers after the server was killed")

        assert not first.other, first.other  # up to the kill, every answer was an ack
        accounted = first.acked | first.refused | first.in_doubt
        assert (
            accounted == all_nos
            and len(first.acked) + len(first.refused) + len(first.in_doubt) == N_ORDERS
        )
        assert KILL_AFTER_ACKS <= len(first.acked) < N_ORDERS, len(first.acked)
        assert first.refused, "the kill did not land in the middle of the stream"

        # 2. Before any restart: acknowledged means committed, so those orders are delivered,
        # and every order is whole (delivered exactly once, or untouched).
        with check_engine.connect() as conn:
            delivered_at_crash = _check_consistent(conn, notices, total_keys)
        assert first.acked <= delivered_at_crash, sorted(first.acked - delivered_at_crash)
        # Nothing refused at the door can have been applied.
        assert not (first.refused & delivered_at_crash), sorted(first.refused & delivered_at_crash)
        print(
            f"\nfirst stream: {len(first.acked)} acknowledged ({first.acked_before_kill} just "
            f"before SIGKILL), {len(first.in_doubt)} answers lost (in flight, or sent on a "
            f"connection the kill had closed; {len(first.in_doubt & delivered_at_crash)} of them "
            f"applied), {len(first.refused)} refused"
        )

        # 3. Restart and send everything again; every notification is now acknowledged.
        server.start()
        second, _, threads = _stream(server.base_url, notices)
        _join(threads)
        assert not second.other, second.other
        assert not second.refused and not second.in_doubt, (second.refused, second.in_doubt)
        assert second.acked == all_nos
        server.stop()
        # uvicorn shuts down cleanly, then re-raises SIGTERM; anything else is a failure.
        assert server.proc is not None, "no server process"
        assert server.proc.returncode in (0, -signal.SIGTERM), server.log_tail()

        # 4. Every order delivered, exactly once, and nothing half-written.
        with check_engine.connect() as conn:
            delivered = _check_consistent(conn, notices, total_keys)
        assert delivered == all_nos, sorted(all_nos - delivered)
    finally:
        server.close()
        check_engine.dispose()
