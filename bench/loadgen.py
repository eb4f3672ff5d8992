"""Shared parts of the HTTP harnesses (purchase, flashsale): the server under test, the load.

The server is the real one, `python -m kami.cli.main serve --workers N`, started as a subprocess
in its own session on a free 127.0.0.1 port, with the production settings a shop would run
(job threads on, access log off) plus what a single-address load generator needs:
rate limits and the per-IP open-order cap raised so that it is never throttled, and the sandbox
channel enabled with a known secret. It is always stopped (SIGTERM, then SIGKILL of its own
process group) when the `with` block ends.

The load generator is one asyncio loop in this process with `concurrency` lanes: each lane owns
one keep-alive connection and runs one request at a time, so at most `concurrency` requests are
in flight, none waits for a pooled connection, and a latency is the client's wall time of one
request. A lane speaks HTTP/1.1 itself on an asyncio stream (`RawLane`, the default) or through
an httpx.AsyncClient of one connection (`HttpxLane`, `--client httpx`). Why not one httpx client
for all: measured on this 2-core machine against GET /healthz, the generator's own CPU per
request was ~6 ms with one AsyncClient pooling 64 connections, ~1 ms with an AsyncClient per
connection, ~0.05 ms with RawLane, while the server spent ~0.6 ms; the generator shares the
cores with the server, so every millisecond it burns is taken from the figures. The harnesses
also report the CPU seconds of both sides, and a do-nothing endpoint measured with the same
generator in the same run. Traffic goes only to 127.0.0.1, every loop is bounded in count and
time, and every request by TIMEOUT.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import json
import math
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from kami import bootstrap, catalog, fulfilment, vault
from kami.config import Settings
from kami.kernel.clock import utcnow
from kami.kernel.db import Database
from kami.kernel.engine import normalise_url

# Fixed, so the harness (which imports the keys) and the server (which decrypts them) agree.
MASTER_KEY = base64.b64encode(hashlib.sha256(b"kami-bench-master-key").digest()).decode()
SANDBOX_SECRET = "kami-bench-sandbox-secret-0123456789"
HOST = "127.0.0.1"
UNTHROTTLED = "1000000/second"  # a one-second window keeps the limiter's in-memory list short
_ALPHA = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def settings_for(url: str, work: Path) -> Settings:
    """What the harness itself uses to load the catalog: the server's key, no worker."""
    return Settings(
        database_url=url,
        master_key=MASTER_KEY,
        master_key_file=work / "unused.key",
        inprocess_worker=False,
        sandbox_enabled=True,
        sandbox_secret=SANDBOX_SECRET,
    )


def make_sku(
    shop: fulfilment.Shop, code: str, keys: int, price_minor: int = 100
) -> catalog.SkuView:
    """A category, product and SKU, and `keys` real (encrypted) distinct keys through the import."""
    slug = code.lower()
    with shop.db.write() as s:
        catalog.create_category(s, catalog.CategoryIn(slug=f"c-{slug}", name="Bench"))
        catalog.create_product(
            s, catalog.ProductIn(slug=f"p-{slug}", category=f"c-{slug}", name="Bench product")
        )
        sku = catalog.create_sku(
            s,
            catalog.SkuIn(
                code=code, product=f"p-{slug}", name=code, price_minor=price_minor, max_quantity=1
            ),
        )
    prefix = "".join(secrets.choice(_ALPHA) for _ in range(4))

    def card(n: int) -> str:
        h = f"{n:012X}"
        return f"{prefix}-{h[0:4]}-{h[4:8]}-{h[8:12]}"

    rows = (vault.GoodLine(n, vault.Secret(card(n))) for n in range(1, keys + 1))
    report = fulfilment.import_and_serve(shop, sku.id, rows, vault.BatchInfo(source_name="bench"))
    if report.imported != keys:
        raise SystemExit(f"imported {report.imported} keys, expected {keys}")
    return sku


def open_flash_sale(db: Database, code: str, quota: int) -> None:
    """A flash sale on SKU `code`, open now for six hours: sale price 1, one per buyer."""
    now = utcnow()
    with db.write() as s:
        catalog.set_flash_sale(
            s,
            code,
            catalog.FlashSaleIn(
                starts_at=now - timedelta(minutes=1),
                ends_at=now + timedelta(hours=6),
                price_minor=1,
                per_buyer_limit=1,
                quota=quota,
                reservation_minutes=15,
            ),
        )


def sign(body: bytes) -> str:
    return hmac.new(SANDBOX_SECRET.encode(), body, hashlib.sha256).hexdigest()


def notification(order_no: str, amount_minor: int, currency: str) -> tuple[bytes, dict[str, str]]:
    """A signed sandbox "paid" notification for the order: body and headers."""
    body = json.dumps(
        {
            "order_no": order_no,
            "trade_no": f"T{order_no}",
            "amount_minor": amount_minor,
            "currency": currency,
            "status": "paid",
        }
    ).encode()
    return body, {"content-type": "application/json", "x-sandbox-signature": sign(body)}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- the server under test -------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _cmdline(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes()).replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _status_kb(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (field 3 onwards), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def postgres_cpu(url: str) -> Callable[[], float] | None:
    """A reader of the CPU seconds the PostgreSQL server behind `url` has used so far, all its
    processes together, when it runs on this machine; None for SQLite or a server elsewhere.

    The postmaster's own time plus its reaped children's (a backend that exits between two
    readings is counted there) plus every live child's."""
    if not normalise_url(url).startswith("postgresql"):
        return None
    engine = create_engine(normalise_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:  # read while the backend is there
            fields = _stat(int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one()))
    finally:
        engine.dispose()
    if fields is None:  # not a process of this machine
        return None
    postmaster = int(fields[1])

    def seconds() -> float:
        ticks = 0
        own = _stat(postmaster)
        if own is not None:
            ticks += sum(int(f) for f in own[11:15])  # utime, stime, cutime, cstime
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                child = _stat(entry)
                if child is not None and int(child[1]) == postmaster:
                    ticks += int(child[11]) + int(child[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    return seconds


@dataclass
class Server:
    base_url: str
    proc: subprocess.Popen[bytes]
    workers: int
    log_path: Path

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (spawned children); the server itself with one worker."""
        tree = _children()
        found: list[int] = []
        todo = list(tree.get(self.proc.pid, []))
        while todo:
            pid = todo.pop()
            if "spawn_main" in _cmdline(pid) and "resource_tracker" not in _cmdline(pid):
                found.append(pid)
            todo.extend(tree.get(pid, []))
        return sorted(found) or [self.proc.pid]

    def peak_rss_mb(self) -> float:
        """Max VmHWM (peak resident set) over the worker processes, in MB."""
        return round(max(_status_kb(p, "VmHWM") for p in self.worker_pids()) / 1024, 1)

    def cpu_seconds(self) -> float:
        """User + system CPU so far of the workers and the supervising process."""
        return sum(_cpu_seconds(p) for p in {self.proc.pid, *self.worker_pids()})

    def supervisor_cpu_seconds(self) -> float:
        """User + system CPU so far of the supervising process: with several request processes
        it runs the jobs (kami serve); 0 with one, which is both."""
        return _cpu_seconds(self.proc.pid) if self.workers > 1 else 0.0

    def log_tail(self, lines: int = 20) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def log_problems(self) -> Counter[str]:
        """WARNING/ERROR lines of the server log, by logger and the start of the message."""
        found: Counter[str] = Counter()
        try:
            text_ = self.log_path.read_text(errors="replace")
        except OSError:
            return found
        for line in text_.splitlines():
            for level in ("WARNING", "ERROR", "CRITICAL", "Traceback"):
                if level in line:
                    found[line.split(level, 1)[1].strip()[:80]] += 1
                    break
        return found


def server_env(url: str, work: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAMI_")}
    env.update(
        {
            "KAMI_DATABASE_URL": url,
            "KAMI_MASTER_KEY": MASTER_KEY,
            "KAMI_MASTER_KEY_FILE": str(work / "unused.key"),
            "KAMI_SANDBOX_ENABLED": "true",
            "KAMI_SANDBOX_SECRET": SANDBOX_SECRET,
            "KAMI_RATE_LIMIT_ORDERS": UNTHROTTLED,
            "KAMI_RATE_LIMIT_REVEALS": UNTHROTTLED,
            "KAMI_OPEN_ORDERS_PER_IP": "1000000",
            "KAMI_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


# uvicorn binds the listening socket of `--workers N` (N > 1) with proto 0, accepted sockets
# inherit it, and asyncio enables TCP_NODELAY only on sockets whose proto is IPPROTO_TCP: so
# every keep-alive response (headers and body are two writes) waits ~40 ms for the client's
# delayed ACK (uvicorn issue #3149). `--nodelay-fix` starts the server through this wrapper,
# which re-creates the bound socket with IPPROTO_TCP, to measure what the fix is worth.
NODELAY_FIX = """
import socket, sys
import uvicorn.config
_bind = uvicorn.config.Config.bind_socket
def bind_socket(self):
    s = _bind(self)
    if s.family in (socket.AF_INET, socket.AF_INET6) and s.proto == 0:
        s = socket.socket(s.family, s.type, socket.IPPROTO_TCP, fileno=s.detach())
    return s
uvicorn.config.Config.bind_socket = bind_socket
from kami.cli.main import main
main()
"""


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGTERM (and SIGINT, which a shell may have set to ignored for a background job) stop the
    harness through its cleanup: the server (run_server), the scratch database (scratch.py)."""

    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def run_server(
    url: str,
    work: Path,
    *,
    workers: int,
    no_worker: bool = False,
    nodelay_fix: bool = False,
    extra_env: dict[str, str] | None = None,
    start_timeout: float = 60.0,
) -> Iterator[Server]:
    port = free_port()
    log_path = work / "server.log"
    entry = ["-c", NODELAY_FIX] if nodelay_fix else ["-m", "kami.cli.main"]
    cmd = [sys.executable, *entry, "serve", "--host", HOST, "--port", str(port)]
    cmd += ["--workers", str(workers)] + (["--no-worker"] if no_worker else [])
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=work,
            env=server_env(url, work, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with it, and only it
        )
    server = Server(f"http://{HOST}:{port}", proc, workers, log_path)
    try:
        _wait_ready(server, start_timeout)
        yield server
    finally:
        _stop(proc)


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    ok = 0
    with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                tail = "\n".join(server.log_tail())
                raise SystemExit(f"the server exited with {server.proc.returncode}:\n{tail}")
            try:
                ok = ok + 1 if client.get("/healthz").status_code == 200 else 0
            except httpx.HTTPError:
                ok = 0
            wanted = server.workers if server.workers > 1 else 1
            if ok >= 3 and len(server.worker_pids()) >= wanted:
                time.sleep(1.0)  # let the other workers finish their start-up too
                return
            time.sleep(0.2)
    raise SystemExit("the server did not become ready:\n" + "\n".join(server.log_tail()))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group this harness started, nothing else
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


# --- the load -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Lane(Protocol):
    """One connection, one request at a time."""

    async def request(
        self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply: ...

    async def close(self) -> None: ...


class LaneError(Exception):
    """The connection broke, or the answer was not HTTP/1.1 as expected."""


class RawLane:
    """A minimal HTTP/1.1 keep-alive client on one asyncio stream: request line, headers and a
    Content-Length body out; status, headers and a Content-Length (or chunked) body back. It
    costs the generator about a twentieth of the CPU of httpx per request (measured here), which
    on a 2-core machine shared with the server is what the server gets back."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        head = [f"{method} {path} HTTP/1.1", f"host: {self._host}:{self._port}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method != "GET":
            head.append(f"content-length: {len(body)}")
        try:
            async with asyncio.timeout(TIMEOUT):
                if self._reader is None or self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(
                        self._host, self._port
                    )
                reader, writer = self._reader, self._writer
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                status, fields, data = await self._read(reader)
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            OSError,
            ValueError,
        ) as exc:
            await self.close()
            raise LaneError(f"{type(exc).__name__}: {exc}") from None
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, data)

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if "content-length" in fields:
            data = await reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            data = await self._chunked(reader)
        else:
            data = await reader.read()
            fields["connection"] = "close"
        return int(parts[1]), fields, data

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(chunk[:-2])

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None


class HttpxLane:
    """httpx.AsyncClient with a pool of one connection. (One client whose pool holds all the
    connections costs the generator far more CPU per request at 64+ connections, measured
    here at ~6 ms against ~1 ms: the pool's bookkeeping grows with its size.)"""

    def __init__(self, base_url: str) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._client = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=TIMEOUT)

    async def request(
        self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Reply:
        try:
            r = await self._client.request(method, path, content=body or None, headers=headers)
        except httpx.HTTPError as exc:
            raise LaneError(f"{type(exc).__name__}: {exc}") from None
        return Reply(r.status_code, r.content)

    async def close(self) -> None:
        await self._client.aclose()


TIMEOUT = 120.0  # seconds for one request; a request still unanswered then counts as an error
CLIENTS = ("raw", "httpx")


@contextlib.asynccontextmanager
async def open_lanes(base_url: str, concurrency: int, kind: str) -> AsyncIterator[list[Lane]]:
    """`concurrency` lanes, each with its connection opened (GET /healthz) before use."""
    host, port = base_url.split("//", 1)[1].rsplit(":", 1)
    lanes: list[Lane] = [
        RawLane(host, int(port)) if kind == "raw" else HttpxLane(base_url)
        for _ in range(concurrency)
    ]
    try:
        for lane in lanes:
            await lane.request("GET", "/healthz")
        yield lanes
    finally:
        for lane in lanes:
            await lane.close()


async def bounded(
    lanes: list[Lane],
    count: int,
    seconds: float,
    task: Callable[[Lane, int], Awaitable[None]],
) -> float:
    """Run task(lane, 0), task(lane, 1), … one at a time on each lane (so at most len(lanes) at
    once), until `count` have been started or `seconds` have passed (tasks under way then are
    finished; each request is bounded by TIMEOUT); returns the elapsed seconds.

    The generator's heap (this process imported the whole app to set the scene) is frozen
    meanwhile: a full collection of it took about 100 ms, every lane waited for it, and that
    pause was counted in the server's latencies (seen as a gap in the flash sale's answers)."""
    gc.collect()
    gc.freeze()
    try:
        return await _bounded(lanes, count, seconds, task)
    finally:
        gc.unfreeze()


async def _bounded(
    lanes: list[Lane],
    count: int,
    seconds: float,
    task: Callable[[Lane, int], Awaitable[None]],
) -> float:
    next_index = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def run_lane(lane: Lane) -> None:
        nonlocal next_index
        while next_index < count and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            await task(lane, i)

    await asyncio.gather(*(run_lane(lane) for lane in lanes))
    return time.perf_counter() - start


async def hello(lanes: list[Lane], seconds: float, count: int = 10**7) -> dict[str, Any]:
    """GET /healthz (no work) on every lane for `seconds`, or until `count` have been sent:
    requests per second, and the p50 and p99 of the answered requests' latency."""
    done = [0]
    errors = [0]
    took: list[float] = []

    async def one(lane: Lane, _i: int) -> None:
        start = time.perf_counter()
        try:
            r = await lane.request("GET", "/healthz")
            if r.status == 200:
                done[0] += 1
                took.append(time.perf_counter() - start)
            else:
                errors[0] += 1
        except LaneError:
            errors[0] += 1

    elapsed = await bounded(lanes, count, seconds, one)
    took.sort()  # once: each percentile below sorts it again, in linear time
    return {
        "rps": round(done[0] / elapsed),
        "requests": done[0],
        "errors": errors[0],
        "p50_ms": ms(percentile(took, 50)),
        "p99_ms": ms(percentile(took, 99)),
    }


def problem(reply: Reply) -> str:
    """The slug of a problem answer (/problems/sold-out → sold-out), or '' if there is none."""
    try:
        kind = reply.json().get("type", "")
    except (ValueError, AttributeError):
        kind = ""
    return str(kind).rsplit("/", 1)[-1]


def buyer_ip(i: int) -> str:
    """A distinct address per buyer, from the benchmarking range 198.18.0.0/15, to send as
    X-Forwarded-For (uvicorn trusts it from 127.0.0.1 by default; it is a header, nothing is
    sent to the address)."""
    return f"198.{18 + (i >> 16) % 2}.{(i >> 8) & 0xFF}.{i & 0xFF}"


def cpu_self() -> float:
    """CPU seconds (user + system) this process, the load generator, has used so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- watching PostgreSQL --------------------------------------------------------------------


@dataclass
class PgSampler:
    """Samples pg_stat_activity of the scratch database every `every` seconds in a thread:
    what the server's connections were doing (state and wait event), counted over samples."""

    url: str
    every: float = 0.25
    counts: Counter[str] = field(default_factory=Counter)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PgSampler:
        if not normalise_url(self.url).startswith("postgresql"):
            return self
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        engine = create_engine(normalise_url(self.url), pool_size=1, max_overflow=0)
        query = text(
            "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'cpu'), count(*) "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' GROUP BY 1, 2"
        )
        try:
            with engine.connect() as conn:
                while not self._stop.wait(self.every):
                    for state, wait, n in conn.execute(query):
                        label = f"{state}/{wait}" if state == "active" else str(state)
                        self.counts[label] += int(n)
                    conn.rollback()
                    self.samples += 1
        finally:
            engine.dispose()

    def summary(self, top: int = 8) -> dict[str, float] | None:
        """Mean number of connections per state/wait event over the samples (the top ones)."""
        if not self.samples:
            return None
        return {k: round(v / self.samples, 1) for k, v in self.counts.most_common(top)}


def database_counts(url: str) -> dict[str, int]:
    """What the database says after a run: orders delivered, keys delivered, doubles."""
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:

            def one(sql: str) -> int:
                return int(conn.execute(text(sql)).scalar_one())

            return {
                "delivered_orders": one(
                    "SELECT count(*) FROM orders_order WHERE status = 'delivered'"
                ),
                "delivery_items": one("SELECT count(*) FROM delivery_item"),
                "distinct_keys": one("SELECT count(DISTINCT key_id) FROM delivery_item"),
                "sold_keys": one("SELECT count(*) FROM vault_key WHERE status = 'sold'"),
                "orders": one("SELECT count(*) FROM orders_order"),
                "orders_not_delivered": one(
                    "SELECT count(*) FROM orders_order WHERE status <> 'delivered'"
                ),
            }
    finally:
        engine.dispose()


def build_container(url: str, work: Path) -> bootstrap.Container:
    return bootstrap.build(settings_for(url, work))
