"""A flash sale over HTTP against the real server: many buyers, few keys, nothing oversold.

    kami bench flashsale --db postgresql --keys 1000 --buyers 20000 --concurrency 256
    kami bench flashsale --db sqlite --keys 100 --buyers 2000 --concurrency 64

A scratch database gets one SKU with `--keys` real (encrypted) keys and a flash sale on it that
is open now: quota `--quota` (default: the number of keys), one per buyer, sale price 1. The
real server is started, and the load generated, as in bench/purchase.py (see bench/loadgen.py,
`--client`). Then `--buyers` distinct buyers (distinct e-mail, distinct X-Device-Id header)
each try once to create an order, at most `--concurrency` at a time; each buyer who gets an
order pays it at once with a signed sandbox notification (which sells and delivers the reserved
key). All from one client address, as a load generator is, with the per-IP cap and the rate
limits raised; `--distinct-ips` instead sends each buyer's own X-Forwarded-For address (uvicorn
trusts it from 127.0.0.1; nothing is sent to those addresses), which shows what the shop's
per-(SKU, IP) checkout lock costs when every buyer shares one address. `--idempotency-keys`
sends each checkout with an Idempotency-Key of its own, as the storefront's form and careful
API clients do.

Reported: `delivered` (orders delivered, from the database), `oversold` (keys delivered beyond
`--keys` plus keys delivered twice, from the database), `sold_out_answers` and `limit_answers`
(409 problems /problems/sold-out and /problems/limit-reached), `other_errors` (any other
non-2xx answer or exception, to a creation or a payment; `errors_by_kind` says which),
`create_p50_ms` / `create_p99_ms` (client wall time of every answered creation, whatever the
answer), `won_create_*` (those that got an order), `sold_out_after_s` (from the first request
to the last order that got a key), `duration_s` (the whole buyer phase, payments included).
Where the slowest creations come from: `first_wave_creates` are those sent before any creation
was answered (the first `--concurrency` buyers, all in the same instant), and
`first_wave_create_max_ms` the slowest of them; `after_first_wave_create_p99_ms` is the p99 of
the creations sent after them; `slowest_hundredth_in_first_wave` counts how many of the slowest
hundredth of all creations (200 of 20,000, each at least as slow as `create_p99_ms`) were of the
first wave.
After the sale, with the same server and the same lanes: `hello_requests` GET /healthz (an
endpoint that does no work) at the same concurrency, as many as there were buyers; `hello_rps`
and `hello_p50_ms` / `hello_p99_ms` say what the machine answers at this concurrency in this
run when the shop does nothing, and so how much of `create_p99_ms` is the shop's own;
`hello_errors` counts its failed requests (not in `other_errors`). It starts once no job of the
sale (the buyers' mail) is due or running any more, so that the job threads do not slow it:
`jobs_drained_s` is how long that took after the buyer phase, None if they were still busy
after `--seconds`.
`server_cpu_s` / `client_cpu_s`: CPU seconds of the server processes / the load generator
during the buyer phase. `limit_breaches` counts buyers (by e-mail or device) holding more than
one order in the database, which with distinct buyers must be 0.

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
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

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
    open_flash_sale,
    open_lanes,
    percentile,
    problem,
    run_server,
)
from scratch import scratch_database

from kami.kernel.engine import normalise_url


async def load(
    server: Server,
    url: str,
    sku: str,
    buyers: int,
    concurrency: int,
    seconds: float,
    distinct_ips: bool,
    client: str,
    idempotency_keys: bool = False,
) -> dict[str, object]:
    tag = secrets.token_hex(3)
    answers: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    create_all: list[float] = []
    create_sent: list[tuple[float, float]] = []  # (sent, took) of each answered creation
    create_won: list[float] = []
    create_refused: list[float] = []
    pay_all: list[float] = []
    paid = [0]
    last_win = [0.0]

    async def buyer(lane: Lane, i: int) -> None:
        headers = {"content-type": "application/json", "x-device-id": f"dev{tag}{i:08d}"}
        if distinct_ips:
            headers["x-forwarded-for"] = buyer_ip(i)
        if idempotency_keys:
            headers["idempotency-key"] = f"buy-{tag}-{i:08d}"
        order = {
            "sku": sku,
            "quantity": 1,
            "email": f"f{i}.{tag}@bench.example",
            "gateway": "sandbox",
        }
        answers["tried"] += 1
        start = time.perf_counter()
        try:
            r = await lane.request(
                "POST", "/api/v1/orders", body=json.dumps(order).encode(), headers=headers
            )
        except LaneError as exc:
            errors[f"create {str(exc).split(':', 1)[0]}"] += 1
            return
        took = time.perf_counter() - start
        create_all.append(took)
        create_sent.append((start, took))
        if r.status != 201:
            create_refused.append(took)
            kind = problem(r)
            if r.status == 409 and kind in ("sold-out", "limit-reached"):
                answers[kind] += 1
            else:
                errors[f"create {r.status} {kind}".strip()] += 1
            return
        answers["created"] += 1
        create_won.append(took)
        last_win[0] = time.perf_counter()
        try:
            created = r.json()
            body, note_headers = notification(
                created["order_no"], created["amount_minor"], created["currency"]
            )
            start = time.perf_counter()
            r = await lane.request(
                "POST", "/api/v1/payments/sandbox/notify", body=body, headers=note_headers
            )
            pay_all.append(time.perf_counter() - start)
        except (LaneError, ValueError, KeyError) as exc:
            errors[f"pay {type(exc).__name__}"] += 1
            return
        if r.status != 200:
            errors[f"pay {r.status} {problem(r)}".strip()] += 1
            return
        paid[0] += 1

    async with open_lanes(server.base_url, concurrency, client) as lanes:
        cpu_server, cpu_client = server.cpu_seconds(), cpu_self()
        begin = time.perf_counter()
        with PgSampler(url) as pg:
            duration = await bounded(lanes, buyers, seconds, buyer)
        cpu_server, cpu_client = server.cpu_seconds() - cpu_server, cpu_self() - cpu_client
        drained = await jobs_drained(url, seconds)
        greeting = await hello(lanes, seconds, count=buyers)
    return {
        "buyers_tried": answers["tried"],
        "orders_created": answers["created"],
        "orders_paid": paid[0],
        "sold_out_answers": answers["sold-out"],
        "limit_answers": answers["limit-reached"],
        "other_errors": sum(errors.values()),
        "errors_by_kind": dict(errors.most_common(10)),
        "create_p50_ms": ms(percentile(create_all, 50)),
        "create_p99_ms": ms(percentile(create_all, 99)),
        "won_create_p50_ms": ms(percentile(create_won, 50)),
        "won_create_p99_ms": ms(percentile(create_won, 99)),
        "refused_create_p50_ms": ms(percentile(create_refused, 50)),
        "refused_create_p99_ms": ms(percentile(create_refused, 99)),
        **where_the_tail_is(create_sent),
        "jobs_drained_s": drained,
        "hello_requests": greeting["requests"],
        "hello_errors": greeting["errors"],
        "hello_rps": greeting["rps"],
        "hello_p50_ms": greeting["p50_ms"],
        "hello_p99_ms": greeting["p99_ms"],
        "pay_p50_ms": ms(percentile(pay_all, 50)),
        "pay_p99_ms": ms(percentile(pay_all, 99)),
        "sold_out_after_s": round(last_win[0] - begin, 2) if last_win[0] else None,
        "duration_s": round(duration, 2),
        "server_cpu_s": round(cpu_server, 1),
        "client_cpu_s": round(cpu_client, 1),
        "pg_activity": pg.summary(),
    }


def where_the_tail_is(creates: list[tuple[float, float]]) -> dict[str, object]:
    """The first wave's share of the slowest creations; `creates` is (sent, took) in seconds
    of each answered creation (see the module's docstring)."""
    if not creates:
        return {
            "first_wave_creates": 0,
            "first_wave_create_max_ms": None,
            "after_first_wave_create_p99_ms": None,
            "slowest_hundredth_in_first_wave": 0,
        }
    first_answer = min(sent + took for sent, took in creates)
    wave = [took for sent, took in creates if sent < first_answer]
    later = [took for sent, took in creates if sent >= first_answer]
    slowest = sorted(creates, key=lambda c: c[1], reverse=True)[: max(1, len(creates) // 100)]
    return {
        "first_wave_creates": len(wave),
        "first_wave_create_max_ms": ms(max(wave)),
        "after_first_wave_create_p99_ms": ms(percentile(later, 99)),
        "slowest_hundredth_in_first_wave": sum(1 for sent, _ in slowest if sent < first_answer),
    }


async def jobs_drained(url: str, seconds: float) -> float | None:
    """Wait until no job is due or running (the job threads idle); the seconds it took, or None
    if that did not happen within `seconds`."""
    engine = create_engine(normalise_url(url))
    busy = (
        "SELECT count(*) FROM kernel_outbox WHERE status = 'running' "
        "OR (status = 'pending' AND run_after <= :now)"
    )
    sqlite = engine.dialect.name == "sqlite"
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            stamp = datetime.now(UTC)
            # SQLite stores it as naive UTC text (UtcDateTime).
            now = stamp.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else stamp
            with engine.connect() as conn:
                if not conn.execute(text(busy), {"now": now}).scalar_one():
                    return round(time.perf_counter() - start, 2)
            await asyncio.sleep(0.2)
        return None
    finally:
        engine.dispose()


def sale_checks(url: str) -> dict[str, int]:
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:

            def one(sql: str) -> int:
                return int(conn.execute(text(sql)).scalar_one())

            return {
                "quota_taken": one("SELECT coalesce(sum(taken), 0) FROM catalog_flash_sale"),
                "limit_breaches": one(
                    "SELECT count(*) FROM (SELECT email FROM orders_order "
                    "WHERE status IN ('pending', 'paid', 'delivered', 'awaiting_stock') "
                    "GROUP BY email HAVING sum(quantity) > 1) AS e"
                )
                + one(
                    "SELECT count(*) FROM (SELECT device_id FROM orders_order "
                    "WHERE device_id IS NOT NULL "
                    "AND status IN ('pending', 'paid', 'delivered', 'awaiting_stock') "
                    "GROUP BY device_id HAVING sum(quantity) > 1) AS d"
                ),
            }
    finally:
        engine.dispose()


def run(
    url: str,
    work: Path,
    keys: int,
    quota: int,
    buyers: int,
    concurrency: int,
    workers: int,
    seconds: float,
    distinct_ips: bool,
    no_worker: bool,
    client: str,
    nodelay_fix: bool,
    idempotency_keys: bool = False,
) -> dict[str, object]:
    container = build_container(url, work)
    try:
        dialect = container.db.dialect
        sku = make_sku(container.shop, "FLASH", keys)
        open_flash_sale(container.db, sku.code, quota)
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
                buyers,
                concurrency,
                seconds,
                distinct_ips,
                client,
                idempotency_keys,
            )
        )
        rss = server.peak_rss_mb()
        problems = server.log_problems()
    counts = database_counts(url)
    checks = sale_checks(url)
    oversold = max(0, counts["distinct_keys"] - keys) + (
        counts["delivery_items"] - counts["distinct_keys"]
    )
    return {
        "bench": "flashsale",
        "db": dialect,
        "machine": f"{platform.machine()}, nproc {os.cpu_count()}",
        "workers": workers,
        "inprocess_worker": not no_worker,
        "keys": keys,
        "quota": quota,
        "buyers": buyers,
        "concurrency": concurrency,
        "distinct_ips": distinct_ips,
        "idempotency_keys": idempotency_keys,
        "client": client,
        "nodelay_fix": nodelay_fix,
        "delivered": counts["delivered_orders"],
        "oversold": oversold,
        **figures,
        "distinct_keys": counts["distinct_keys"],
        "delivery_items": counts["delivery_items"],
        "orders_in_db": counts["orders"],
        "orders_not_delivered": counts["orders_not_delivered"],
        **checks,
        "peak_rss_mb": rss,
        "server_log_problems": dict(problems.most_common(5)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="sqlite", help="'sqlite', 'postgresql' or a PostgreSQL URL")
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--quota", type=int, default=0, help="flash-sale quota (default: --keys)")
    p.add_argument("--buyers", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=256, help="requests in flight at most")
    p.add_argument("--workers", type=int, default=2, help="server processes")
    p.add_argument("--seconds", type=float, default=600.0, help="buyer phase at most this long")
    p.add_argument("--distinct-ips", action="store_true", help="an X-Forwarded-For per buyer")
    p.add_argument(
        "--idempotency-keys", action="store_true", help="an Idempotency-Key per checkout"
    )
    p.add_argument("--no-worker", action="store_true", help="serve without job threads")
    p.add_argument("--client", choices=CLIENTS, default="raw", help="load generator lanes")
    p.add_argument(
        "--nodelay-fix",
        action="store_true",
        help="start the server with uvicorn's listening socket fixed (see loadgen.NODELAY_FIX)",
    )
    a = p.parse_args(argv)
    quota = a.quota or a.keys
    if quota < a.keys:
        raise SystemExit("--quota must be at least --keys")
    with (
        exit_on_signals(),
        tempfile.TemporaryDirectory(prefix="kami-bench-") as tmp,
        scratch_database(a.db, Path(tmp)) as url,
    ):
        result = run(
            url,
            Path(tmp),
            a.keys,
            quota,
            a.buyers,
            a.concurrency,
            a.workers,
            a.seconds,
            a.distinct_ips,
            a.no_worker,
            a.client,
            a.nodelay_fix,
            a.idempotency_keys,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
