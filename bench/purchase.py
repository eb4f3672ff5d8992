"""End-to-end purchases over HTTP against the real server: create → pay → reveal.

    kami bench purchase --db postgresql --workers 2 --concurrency 64 --orders 5000
    kami bench purchase --db sqlite --seconds 30

A scratch database gets one SKU with `--orders` real keys, imported (encrypted) through
`fulfilment.import_and_serve`. The real server (`python -m kami.cli.main serve --workers N`,
job threads on, see bench/loadgen.py) is started on a free 127.0.0.1 port. The load
generator (bench/loadgen.py: one asyncio loop, `--concurrency` keep-alive connections, each
running one request at a time; a minimal HTTP/1.1 client by default, `--client httpx` for an
httpx.AsyncClient per connection) then, in the same run against the same server:

1. `hello`: GET /healthz, an endpoint that does no work, for `--hello-seconds`: `hello_rps` is
   the ceiling of this server + generator + machine, to read the purchase rate against;
2. purchases, each buyer with a distinct e-mail: POST /api/v1/orders (the key is reserved),
   POST /api/v1/payments/sandbox/notify signed with the sandbox secret (paid, key sold and
   delivered), POST /api/v1/orders/{no}/reveal with the order's bearer token (key decrypted),
   until `--orders` purchases have been started or `--seconds` have passed.

All from one client address, as a load generator is, with the per-IP cap and rate limits
raised; `--distinct-ips` sends each buyer's own X-Forwarded-For instead (see flashsale.py),
which shows what the shop's per-(SKU, IP) checkout lock costs when buyers share an address.

Latencies (p50/p99, ms) are the client's wall time per request, for requests that succeeded.
Notification-to-delivered: delivery happens inside the notification's own transaction (the
notify response is sent after it committed), so the notify latency is an upper bound of the
time from sending the notification to the order being delivered; `notify_to_delivered_*` is that
latency (the same figures as `notify_*`), and every successful reveal confirms the order was
delivered by the time the notification was answered. `errors` counts non-2xx answers and
exceptions of every step (hello included); `errors_by_kind` says which. `delivered_orders` and
`distinct_keys` come from the database after the run (orders delivered; distinct key ids in
delivery_item), `peak_rss_mb` is the highest VmHWM of the uvicorn worker processes.
`server_cpu_s` / `client_cpu_s` are the CPU seconds the server processes / this load generator
used during the purchase phase (on a small machine they share the cores), `jobs_cpu_s` the
supervising process's share of `server_cpu_s` (it runs the jobs with several request
processes); `hello_*_cpu_s` the same for the hello phase. On PostgreSQL, `pg_activity` is the mean number of the server's
connections per state and wait event, sampled from pg_stat_activity during the purchase phase,
and `db_cpu_s` the CPU seconds PostgreSQL's own processes used in that phase when it runs on
this machine (null on SQLite, whose work is the server processes'). `cpu_ms_per_purchase`
divides each by the purchases made; `cpu_ms_per_purchase_at_target` is what the whole machine
may spend on one purchase at the target, 0.1 x `hello_rps`: its cores' milliseconds per second
over 0.1 x `hello_rps` purchases per second.

`--nodelay-fix` starts the server through a wrapper that sets TCP_NODELAY on uvicorn's
multi-worker listening socket (loadgen.NODELAY_FIX). `kami serve` now does this itself, so the
flag changes nothing on current code; it stays for measuring older revisions. The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    CLIENTS,
    Lane,
    LaneError,
    PgSampler,
    Server,
    bounded,
    build_container,
    buyer_ip,
    cpu_self,
    database_counts,
    exit_on_signals,
    hello,
    make_sku,
    ms,
    notification,
    open_lanes,
    percentile,
    postgres_cpu,
    problem,
    run_server,
)
from scratch import scratch_database

STEPS = ("create", "notify", "reveal")


async def load(
    server: Server,
    url: str,
    sku: str,
    concurrency: int,
    orders: int,
    seconds: float,
    hello_seconds: float,
    client: str,
    distinct_ips: bool,
) -> dict[str, object]:
    tag = secrets.token_hex(3)
    db_cpu = postgres_cpu(url)
    latency: dict[str, list[float]] = {step: [] for step in STEPS}
    errors: Counter[str] = Counter()
    cards: set[str] = set()
    done = [0]

    async def step(
        lane: Lane, name: str, want: int, path: str, body: bytes, headers: dict[str, str]
    ) -> Any:
        """POST one request: its JSON answer if it got `want` (latency recorded), else None
        (error counted by kind)."""
        start = time.perf_counter()
        try:
            r = await lane.request("POST", path, body=body, headers=headers)
        except LaneError as exc:
            errors[f"{name} {str(exc).split(':', 1)[0]}"] += 1
            return None
        took = time.perf_counter() - start
        if r.status != want:
            errors[f"{name} {r.status} {problem(r)}".strip()] += 1
            return None
        try:
            answer = r.json()
        except ValueError:
            errors[f"{name} not JSON"] += 1
            return None
        latency[name].append(took)
        return answer

    async def buy(lane: Lane, i: int) -> None:
        order = {
            "sku": sku,
            "quantity": 1,
            "email": f"b{i}.{tag}@bench.example",
            "gateway": "sandbox",
        }
        json_headers = {"content-type": "application/json"}
        if distinct_ips:
            json_headers["x-forwarded-for"] = buyer_ip(i)
        created = await step(
            lane, "create", 201, "/api/v1/orders", json.dumps(order).encode(), json_headers
        )
        if not isinstance(created, dict):
            return
        order_no = created["order_no"]
        body, headers = notification(order_no, created["amount_minor"], created["currency"])
        if (
            await step(lane, "notify", 200, "/api/v1/payments/sandbox/notify", body, headers)
            is None
        ):
            return
        bearer = {"authorization": f"Bearer {created['access_token']}"}
        if distinct_ips:
            bearer["x-forwarded-for"] = buyer_ip(i)
        revealed = await step(lane, "reveal", 200, f"/api/v1/orders/{order_no}/reveal", b"", bearer)
        if not isinstance(revealed, dict):
            return
        items = revealed.get("items") or []
        if len(items) != 1 or not items[0].get("card"):
            errors["reveal wrong items"] += 1
            return
        cards.add(items[0]["card"])
        done[0] += 1

    async with open_lanes(server.base_url, concurrency, client) as lanes:
        cpu_server, cpu_client = server.cpu_seconds(), cpu_self()
        greeting = await hello(lanes, hello_seconds)
        hello_cpu = (server.cpu_seconds() - cpu_server, cpu_self() - cpu_client)
        if greeting["errors"]:
            errors["hello"] += greeting["errors"]
        cpu_server, cpu_client = server.cpu_seconds(), cpu_self()
        cpu_jobs = server.supervisor_cpu_seconds()
        cpu_db = db_cpu() if db_cpu is not None else 0.0
        with PgSampler(url) as pg:
            elapsed = await bounded(lanes, orders, seconds, buy)
        cpu_server, cpu_client = server.cpu_seconds() - cpu_server, cpu_self() - cpu_client
        cpu_jobs = server.supervisor_cpu_seconds() - cpu_jobs
        cpu_db = db_cpu() - cpu_db if db_cpu is not None else 0.0

    out: dict[str, object] = {
        "purchases": done[0],
        "purchase_seconds": round(elapsed, 2),
        "purchases_per_s": round(done[0] / elapsed, 1),
    }
    for name in STEPS:
        out[f"{name}_p50_ms"] = ms(percentile(latency[name], 50))
        out[f"{name}_p99_ms"] = ms(percentile(latency[name], 99))
    out["notify_to_delivered_p50_ms"] = out["notify_p50_ms"]
    out["notify_to_delivered_p99_ms"] = out["notify_p99_ms"]
    out["hello_rps"] = greeting["rps"]
    out["hello_requests"] = greeting["requests"]
    out["hello_server_cpu_s"] = round(hello_cpu[0], 1)
    out["hello_client_cpu_s"] = round(hello_cpu[1], 1)
    out["errors"] = sum(errors.values())
    out["errors_by_kind"] = dict(errors.most_common(10))
    out["revealed_distinct_cards"] = len(cards)
    out["server_cpu_s"] = round(cpu_server, 1)
    out["jobs_cpu_s"] = round(cpu_jobs, 1)
    out["client_cpu_s"] = round(cpu_client, 1)
    out["pg_activity"] = pg.summary()
    out["db_cpu_s"] = round(cpu_db, 1) if db_cpu is not None else None
    if done[0]:
        per = {"server": cpu_server, "client": cpu_client}
        if db_cpu is not None:
            per["db"] = cpu_db
        per["all"] = sum(per.values())
        out["cpu_ms_per_purchase"] = {k: round(v * 1000 / done[0], 2) for k, v in per.items()}
    if greeting["rps"]:
        # What the whole machine may spend on a purchase at the target, 0.1 x hello_rps.
        out["cpu_ms_per_purchase_at_target"] = round(
            (os.cpu_count() or 1) * 1000 / (0.1 * greeting["rps"]), 2
        )
    return out


def run(
    url: str,
    work: Path,
    workers: int,
    concurrency: int,
    orders: int,
    seconds: float,
    hello_seconds: float,
    no_worker: bool,
    client: str,
    nodelay_fix: bool,
    distinct_ips: bool,
) -> dict[str, object]:
    container = build_container(url, work)
    try:
        dialect = container.db.dialect
        sku = make_sku(container.shop, "BENCH", orders)
    finally:
        container.close()
    with run_server(
        url, work, workers=workers, no_worker=no_worker, nodelay_fix=nodelay_fix
    ) as server:
        figures = asyncio.run(
            load(
                server,
                url,
                sku.code,
                concurrency,
                orders,
                seconds,
                hello_seconds,
                client,
                distinct_ips,
            )
        )
        rss = server.peak_rss_mb()
        worker_count = len(server.worker_pids())
        problems = server.log_problems()
    counts = database_counts(url)
    return {
        "bench": "purchase",
        "db": dialect,
        "machine": f"{platform.machine()}, nproc {os.cpu_count()}",
        "workers": workers,
        "worker_processes_seen": worker_count,
        "inprocess_worker": not no_worker,
        "concurrency": concurrency,
        "client": client,
        "nodelay_fix": nodelay_fix,
        "distinct_ips": distinct_ips,
        "orders_limit": orders,
        "seconds_limit": seconds,
        **figures,
        "delivered_orders": counts["delivered_orders"],
        "distinct_keys": counts["distinct_keys"],
        "delivery_items": counts["delivery_items"],
        "orders_in_db": counts["orders"],
        "peak_rss_mb": rss,
        "server_log_problems": dict(problems.most_common(5)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--db", default="sqlite", help="'sqlite', 'postgresql' or a PostgreSQL server URL"
    )
    p.add_argument("--workers", type=int, default=2, help="server processes")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight at most")
    p.add_argument("--orders", type=int, default=5000, help="purchases to make at most (= keys)")
    p.add_argument("--seconds", type=float, default=60.0, help="purchase phase at most this long")
    p.add_argument("--hello-seconds", type=float, default=10.0, help="GET /healthz phase")
    p.add_argument("--no-worker", action="store_true", help="serve without job threads")
    p.add_argument("--client", choices=CLIENTS, default="raw", help="load generator lanes")
    p.add_argument("--distinct-ips", action="store_true", help="an X-Forwarded-For per buyer")
    p.add_argument(
        "--nodelay-fix",
        action="store_true",
        help="start the server with uvicorn's listening socket fixed (see loadgen.NODELAY_FIX)",
    )
    a = p.parse_args(argv)
    with (
        exit_on_signals(),
        tempfile.TemporaryDirectory(prefix="kami-bench-") as tmp,
        scratch_database(a.db, Path(tmp)) as url,
    ):
        result = run(
            url,
            Path(tmp),
            a.workers,
            a.concurrency,
            a.orders,
            a.seconds,
            a.hello_seconds,
            a.no_worker,
            a.client,
            a.nodelay_fix,
            a.distinct_ips,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
