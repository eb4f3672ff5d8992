"""What each request of a purchase and of a flash sale costs, one at a time, in process.

    kami bench steps --db sqlite
    kami bench steps --db postgresql --requests 2000 --rounds 3

The loaded benchmarks (purchase, flashsale) say how fast the shop is with many buyers at once;
this one says what each request costs on its own, which is what their ceilings are made of. A
scratch database gets three SKUs with real (encrypted) keys: PLAIN, FLASH (an open flash sale,
one per buyer) and GONE (one key, sold before the timing starts). The app the server runs
(`web.create_app`, with the bench server's settings: rate limits and the per-address cap
raised, no job threads) is called straight through ASGI on one event loop, one request at a
time: no HTTP parsing, no sockets, no load generator, no other request to wait behind.

Each round runs `--requests` of each of these, in this order, timing every request on its own:

- `hello`: GET /healthz, the loaded benchmarks' no-work baseline;
- `create`, `notify`, `reveal`: a purchase of PLAIN (order, signed sandbox notification that
  sells and delivers the key, reveal of the key with the order's token), one buyer after the
  other, so that few orders are unpaid at a time, as in the loaded runs;
- `flash_create`, `flash_notify`: a flash-sale winner of FLASH (order, payment);
- `sold_out`: an order of GONE, answered "sold out";
- `sold_out_keyed`: the same with an Idempotency-Key, as the storefront's form sends it: its
  key is looked up before the answer (a retry of an order placed gets the order back).

For each step, `<step>_cpu_us` is this process's CPU time per request (`time.process_time`,
user and system) and `<step>_wall_us` the elapsed time per request: on PostgreSQL the
difference is mostly waiting for the database server's answers, whose own CPU is not counted.
Figures are the median of `--rounds` rounds. Derived from the CPU figures, with `cores` =
`os.cpu_count()`:

- `purchase_cpu_us`: create + notify + reveal; `purchase_in_hellos`: that over `hello_cpu_us`;
- `purchases_per_s_ceiling`: cores / purchase_cpu_us, the purchases per second the app's own
  CPU allows if the server had every core and HTTP, sockets and the load generator cost nothing;
- `flash_winner_cpu_us`: flash_create + flash_notify; `flash_cycle_floor_ms`: 256 (the flash
  sale benchmark's concurrency) × flash_winner_cpu_us / cores, the shortest a buyer's create +
  pay can take while 256 buyers are in flight and every key still has a taker.

Notifications are answered with the job worker off, as in the loaded runs' request processes
(the jobs they queue run elsewhere there); reveals decrypt the key. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    UNTHROTTLED,
    exit_on_signals,
    make_sku,
    notification,
    open_flash_sale,
    settings_for,
)
from scratch import scratch_database

from kami import bootstrap
from kami.web.app import create_app

STEPS = (
    "hello",
    "create",
    "notify",
    "reveal",
    "flash_create",
    "flash_notify",
    "sold_out",
    "sold_out_keyed",
)
FLASH_CONCURRENCY = 256

Answer = tuple[int, bytes]


class Client:
    """Requests to an ASGI app in this process: the scope uvicorn would build, one at a time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Answer:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never hangs up
            raise AssertionError("unreachable")

        status = 0
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        await self.app(scope, receive, send)
        return status, b"".join(chunks)

    async def expect(
        self, status: int, method: str, path: str, body: bytes = b"", **headers: str
    ) -> dict[str, Any]:
        got, answer = await self.request(method, path, body, headers)
        if got != status:
            raise SystemExit(f"{method} {path}: expected {status}, got {got}: {answer[:300]!r}")
        return json.loads(answer) if answer else {}


async def lifespan(app: Any) -> Callable[[], Awaitable[None]]:
    """Start the app as uvicorn does; returns what shuts it down."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan"}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise SystemExit(f"the app did not start: {started}")

    async def stop() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await task

    return stop


def order_body(sku: str, email: str) -> bytes:
    return json.dumps({"sku": sku, "quantity": 1, "email": email, "gateway": "sandbox"}).encode()


async def rounds(client: Client, n: int, count: int) -> dict[str, list[tuple[float, float]]]:
    """`count` rounds of `n` of each step; per step and round, (cpu, wall) seconds per request.

    A purchase's three requests follow each other as a buyer's do (so a handful of orders is
    unpaid at a time, as in the loaded runs, not thousands), each timed on its own."""
    tag = secrets.token_hex(3)
    taken: dict[str, list[tuple[float, float]]] = {step: [] for step in STEPS}
    serial = 0
    sums: dict[str, list[float]] = {}

    async def timed(step: str, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        cpu, wall = time.process_time(), time.perf_counter()
        answer = await call
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        spent = sums.setdefault(step, [0.0, 0.0])
        spent[0] += cpu
        spent[1] += wall
        return answer

    def create(sku: str, status: int, *, keyed: bool = False) -> Awaitable[dict[str, Any]]:
        nonlocal serial
        serial += 1
        headers = {"content-type": "application/json", "x-device-id": f"dev{tag}{serial:08d}"}
        if keyed:
            headers["idempotency-key"] = f"key{tag}{serial:08d}"
        body = order_body(sku, f"s{serial}.{tag}@bench.example")
        return client.expect(status, "POST", "/api/v1/orders", body, **headers)

    def pay(order: dict[str, Any]) -> Awaitable[dict[str, Any]]:
        body, headers = notification(order["order_no"], order["amount_minor"], order["currency"])
        return client.expect(200, "POST", "/api/v1/payments/sandbox/notify", body, **headers)

    for _ in range(count):
        sums.clear()
        for _ in range(n):
            await timed("hello", client.expect(200, "GET", "/healthz"))
        for _ in range(n):
            order = await timed("create", create("PLAIN", 201))
            await timed("notify", pay(order))
            revealed = await timed(
                "reveal",
                client.expect(
                    200,
                    "POST",
                    f"/api/v1/orders/{order['order_no']}/reveal",
                    authorization=f"Bearer {order['access_token']}",
                ),
            )
            if len(revealed.get("items") or []) != 1:
                raise SystemExit("a reveal did not show exactly one key")
        for _ in range(n):
            await timed("flash_notify", pay(await timed("flash_create", create("FLASH", 201))))
        for _ in range(n):
            await timed("sold_out", create("GONE", 409))
        for _ in range(n):
            await timed("sold_out_keyed", create("GONE", 409, keyed=True))
        for step in STEPS:
            taken[step].append((sums[step][0] / n, sums[step][1] / n))
    return taken


def run(url: str, work: Path, n: int, count: int) -> dict[str, object]:
    settings = settings_for(url, work).model_copy(
        update={
            "rate_limit_orders": UNTHROTTLED,
            "rate_limit_reveals": UNTHROTTLED,
            "open_orders_per_ip": 1_000_000,
        }
    )
    container = bootstrap.build(settings)
    try:
        shop = container.shop
        make_sku(shop, "PLAIN", n * count)
        flash = make_sku(shop, "FLASH", n * count)
        make_sku(shop, "GONE", 1)
        open_flash_sale(container.db, flash.code, n * count)
        app = create_app(container, worker=False)

        async def measure() -> dict[str, list[tuple[float, float]]]:
            stop = await lifespan(app)
            try:
                client = Client(app)
                gone = await client.expect(
                    201,
                    "POST",
                    "/api/v1/orders",
                    order_body("GONE", f"first.{secrets.token_hex(3)}@bench.example"),
                    **{"content-type": "application/json"},
                )
                body, headers = notification(
                    gone["order_no"], gone["amount_minor"], gone["currency"]
                )
                await client.expect(200, "POST", "/api/v1/payments/sandbox/notify", body, **headers)
                return await rounds(client, n, count)
            finally:
                await stop()

        taken = asyncio.run(measure())
    finally:
        container.close()
    cores = os.cpu_count() or 1
    out: dict[str, object] = {
        "bench": "steps",
        "db": container.db.dialect,
        "machine": f"{platform.machine()}, nproc {cores}",
        "requests": n,
        "rounds": count,
    }
    cpu: dict[str, float] = {}
    for step in STEPS:
        cpu[step] = statistics.median(c for c, _ in taken[step]) * 1e6
        out[f"{step}_cpu_us"] = round(cpu[step], 1)
        out[f"{step}_wall_us"] = round(statistics.median(w for _, w in taken[step]) * 1e6, 1)
    purchase = cpu["create"] + cpu["notify"] + cpu["reveal"]
    winner = cpu["flash_create"] + cpu["flash_notify"]
    out.update(
        {
            "purchase_cpu_us": round(purchase, 1),
            "purchase_in_hellos": round(purchase / cpu["hello"], 1),
            "purchases_per_s_ceiling": round(cores / purchase * 1e6),
            "flash_winner_cpu_us": round(winner, 1),
            "flash_cycle_floor_ms": round(FLASH_CONCURRENCY * winner / cores / 1000, 1),
        }
    )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="sqlite", help="'sqlite', 'postgresql' or a PostgreSQL URL")
    p.add_argument("--requests", type=int, default=2000, help="requests of each step per round")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    if a.requests < 1 or a.rounds < 1:
        raise SystemExit("--requests and --rounds must be at least 1")
    with (
        exit_on_signals(),
        tempfile.TemporaryDirectory(prefix="kami-bench-") as tmp,
        scratch_database(a.db, Path(tmp)) as url,
    ):
        result = run(url, Path(tmp), a.requests, a.rounds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
