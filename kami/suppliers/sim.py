"""An upstream-supplier simulator: one real HTTP server on loopback speaking Fulu
(`/fulu/api/getway`), 大猿人 (`/yr/yrapi.php/index/…`) and Kami's generic protocol
(`/generic/…`) at once, with its own ledger (`GET /_sim/ledger`).

It checks every request's signature with the configured credentials, and misbehaves on demand:
latency, definitive refusals (fail_rate), answers held past the client's time-out *after* the
order was booked (timeout_rate — the client sees a time-out while the charge happened), orders
that stay processing for a while (processing_rate, processing_ms), and signed callbacks with
retries. A duplicate customer_order_no is never charged twice and is answered the way each
protocol answers duplicates. One seeded RNG decides every order's fate, so a seed reproduces a
sequential run.

    with Simulator(SimConfig(seed=1, fail_rate=0.2)) as sim:
        supplier = fulu.SPEC.build("fulu", sim.options("fulu"))
        ...
        sim.ledger(); sim.charges_per_account()
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kami.suppliers import sim_fulu, sim_generic, sim_yr
from kami.suppliers.base import MAX_RESPONSE
from kami.suppliers.sim_callbacks import CallbackSender
from kami.suppliers.sim_ledger import Fate, Ledger, Reply, SimAccount, SimOrder, SimProduct

DEFAULT_PRODUCTS = (
    SimProduct("10000001", 4630, "recharge", "话费 50元 直充"),
    SimProduct("10000002", 1500, "recharge", "QQ会员 月卡 直充"),
    SimProduct("20000001", 2850, "card", "视频会员 月卡 卡密"),
    SimProduct("20000002", 99, "card", "游戏点卡 1元 卡密"),
)
DEFAULT_ACCOUNTS = (
    SimAccount("fulu", "SIMFULUAPPKEY", "sim-fulu-app-secret-32-bytes-ok!"),
    SimAccount("dayuanren", "10001", "SIMYRAPIKEY0123456789"),
    SimAccount("generic", "sim-key", "sim-generic-secret-0123456789"),
)
_PROTOCOLS = {"fulu": sim_fulu, "dayuanren": sim_yr, "generic": sim_generic}


@dataclass(frozen=True, slots=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    latency_ms: int = 0
    fail_rate: float = 0.0  # new orders refused at once (or failing at the end if processing)
    timeout_rate: float = 0.0  # new orders whose answer is held for hang_s after booking
    hang_s: float = 15.0
    processing_rate: float = 0.0
    processing_ms: int = 3000
    seed: int | None = None
    callback_url: str | None = None  # where Fulu callbacks go, and others without notify_url
    callback_delays: tuple[float, ...] = (0.0, 1.0, 5.0, 30.0)  # one attempt per entry
    products: tuple[SimProduct, ...] = DEFAULT_PRODUCTS
    accounts: tuple[SimAccount, ...] = DEFAULT_ACCOUNTS
    ledger_file: Path | None = None

    def __post_init__(self) -> None:
        for name in ("fail_rate", "timeout_rate", "processing_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be between 0 and 1")
        if self.latency_ms < 0 or self.processing_ms < 0 or self.hang_s < 0:
            raise ValueError("latency_ms, processing_ms and hang_s must not be negative")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sim: Simulator


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path == "/_sim/ledger":
            body = json.dumps(self.server.sim.ledger(), ensure_ascii=False).encode()
            self._send(Reply(200, body))
        else:
            self._send(Reply(404, b'{"error":"not_found"}'))

    def do_POST(self) -> None:
        sim = self.server.sim
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_RESPONSE:
            self._send(Reply(413, b'{"error":"too_large"}'))
            return
        body = self.rfile.read(length)
        if sim.config.latency_ms and sim.stopping.wait(sim.config.latency_ms / 1000):
            return
        path = urllib.parse.urlsplit(self.path).path
        headers = {k.lower(): v for k, v in self.headers.items()}
        if path == sim_fulu.PATH:
            reply = sim_fulu.handle(sim.ledger_books, body)
        elif path.startswith(sim_yr.PREFIX):
            reply = sim_yr.handle(sim.ledger_books, path, body)
        elif path.startswith(sim_generic.PREFIX):
            reply = sim_generic.handle(sim.ledger_books, path, headers, body)
        else:
            reply = Reply(404, b'{"error":"not_found"}')
        if reply.hang and sim.stopping.wait(sim.config.hang_s):
            return
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:  # the client gave up (the time-out case): nothing to tell it
            pass


class Simulator:
    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.stopping = threading.Event()
        accounts = tuple(replace(a) for a in self.config.accounts)  # balances change
        self.ledger_books = Ledger(
            self.config.products,
            accounts,
            seed=self.config.seed,
            fail_rate=self.config.fail_rate,
            processing_rate=self.config.processing_rate,
            processing_s=self.config.processing_ms / 1000,
            timeout_rate=self.config.timeout_rate,
            on_final=self._on_final,
            dump_path=self.config.ledger_file,
        )
        self._callbacks = CallbackSender(self.config.callback_delays, self.stopping)
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Simulator:
        server = _Server((self.config.host, self.config.port), _Handler)
        server.sim = self
        self._server = server
        self._threads = [
            threading.Thread(
                target=server.serve_forever, args=(0.05,), name="sim-http", daemon=True
            ),
            threading.Thread(target=self._settle_loop, name="sim-settle", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._callbacks.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._callbacks.join(2.0)
        for thread in self._threads:
            thread.join(2.0)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Run in the foreground until interrupted (the CLI)."""
        self.start()
        try:
            self.stopping.wait()
        finally:
            self.stop()

    def _settle_loop(self) -> None:
        while not self.stopping.wait(0.05):
            self.ledger_books.settle_due()

    def _on_final(self, order: SimOrder) -> None:
        url = order.notify_url or self.config.callback_url
        if url:
            module = _PROTOCOLS[order.protocol]
            self._callbacks.enqueue(module.callback(self.ledger_books, order, url))

    # -- addresses and credentials -------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _account(self, protocol: str) -> SimAccount:
        for account in self.ledger_books.accounts.values():
            if account.protocol == protocol:
                return account
        raise KeyError(f"no {protocol} account configured")

    def options(self, protocol: str) -> dict[str, str]:
        """Options for `<protocol>.SPEC.build(name, options)` pointing at this simulator."""
        account = self._account(protocol)
        if protocol == "fulu":
            return {
                "gateway_url": self.url + sim_fulu.PATH,
                "app_key": account.account_id,
                "app_secret": account.secret,
            }
        if protocol == "dayuanren":
            return {
                "base_url": self.url + sim_yr.PREFIX.rstrip("/"),
                "userid": account.account_id,
                "apikey": account.secret,
            }
        return {
            "base_url": self.url + sim_generic.PREFIX.rstrip("/"),
            "key_id": account.account_id,
            "secret": account.secret,
        }

    # -- the books and test hooks --------------------------------------------------------------
    def ledger(self) -> dict[str, Any]:
        """Orders, the debit/refund journal, charges and balances per account (JSON-able)."""
        return self.ledger_books.snapshot()

    def charges_per_account(self) -> dict[str, int]:
        """Minor units that stand charged per account ("<protocol>:<account id>")."""
        return self.ledger_books.charges_per_account()

    def script(self, customer_order_no: str, fate: Fate) -> None:
        """Decide the fate of the next new order with this number instead of the RNG."""
        self.ledger_books.script(customer_order_no, fate)

    def settle(self, customer_order_no: str) -> int:
        """Finish processing orders with this number now; how many there were."""
        return self.ledger_books.settle(customer_order_no)

    def callbacks_pending(self) -> int:
        return self._callbacks.pending()
