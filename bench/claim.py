"""Claim throughput as the pool drains, against a trivial-UPDATE baseline in the same run.

    kami bench claim --db postgresql --keys 1000000 --threads 16
    kami bench claim --db sqlite

A pool of `--keys` keys in one SKU is written straight with SQL (dummy ciphertext: the claim
never decrypts). Then `--threads` claimers each take one key per transaction, through
`vault.take_keys` with the shop's own claim hints, until `--claims` keys are taken (default: the
whole pool). Deciles are by count of claims: `first_decile_per_s` is the rate of the first tenth
of the claims, `last_decile_per_s` of the last tenth. The baseline is a trivial
`UPDATE … SET n = n + 1 WHERE id = ?` by primary key through the same engine, driver, session
handling and thread count, for `--baseline-seconds`. `double_claims` counts keys handed out
twice (from the ids the claimers received and from the table). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_database

from kami import vault
from kami.kernel.clock import utcnow
from kami.kernel.db import Database
from kami.kernel.engine import make_engine


def fill_pool(db: Database, n: int) -> int:
    """A category, product and SKU, and `n` available keys, the fastest way each engine allows."""
    now = utcnow()
    with db.write() as s:
        s.execute(
            text(
                "INSERT INTO catalog_category (slug, name, position, created_at) "
                "VALUES ('bench', 'bench', 0, :t)"
            ),
            {"t": now},
        )
        s.execute(
            text(
                "INSERT INTO catalog_product (slug, category_id, name, description, benefits, "
                "redemption, position, active, created_at) "
                "VALUES ('bench', 1, 'bench', '', '[]', '', 0, true, :t)"
            ),
            {"t": now},
        )
        s.execute(
            text(
                "INSERT INTO catalog_sku (code, product_id, name, price_minor, currency, "
                "delivery_kind, min_quantity, max_quantity, active, stock_display, "
                "low_stock_threshold, position, created_at) VALUES ('BENCH', 1, 'bench', 100, "
                "'CNY', 'card_key', 1, 10, true, 'exact', 0, 0, :t)"
            ),
            {"t": now},
        )
        s.execute(
            text(
                "INSERT INTO vault_data_key (master_version, wrapped, created_at) "
                "VALUES (1, :w, :t)"
            ),
            {"w": b"x" * 60, "t": now},
        )
        s.execute(
            text(
                "INSERT INTO vault_batch (public_id, sku_id, data_key_id, supplier, source_name, "
                "imported, duplicates_in_file, duplicates_in_stock, invalid, created_at) "
                "VALUES ('bench', 1, 1, '', '', :n, 0, 0, 0, :t)"
            ),
            {"n": n, "t": now},
        )
        if db.dialect == "postgresql":
            s.execute(
                text(
                    "INSERT INTO vault_key (sku_id, batch_id, data_key_id, fingerprint, ciphertext, "
                    "masked, status, expires_at, created_at) "
                    "SELECT 1, 1, 1, sha256(i::text::bytea), sha256(('c' || i)::bytea), 'BE****CH', "
                    "'available', '9999-12-31 00:00:00+00', :t FROM generate_series(1, :n) AS i"
                ),
                {"n": n, "t": now},
            )
        else:
            s.execute(
                text(
                    "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n) "
                    "INSERT INTO vault_key (sku_id, batch_id, data_key_id, fingerprint, ciphertext, "
                    "masked, status, expires_at, created_at) "
                    "SELECT 1, 1, 1, randomblob(32), randomblob(48), 'BE****CH', 'available', "
                    "'9999-12-31 00:00:00.000000', :t FROM seq"
                ),
                {"n": n, "t": now.replace(tzinfo=None)},
            )
        s.execute(text("CREATE TABLE bench_row (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        s.execute(
            text(
                "INSERT INTO bench_row (id, n) VALUES "
                + ",".join(f"({i}, 0)" for i in range(1, 1001))
            )
        )
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
        if db.dialect == "postgresql":
            conn.execute(text("VACUUM (ANALYZE) vault_key"))
    return 1


def baseline(db: Database, threads: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def work(t: int) -> None:
        rnd = random.Random(t)
        while time.monotonic() < stop:
            with db.write() as s:
                s.execute(
                    text("UPDATE bench_row SET n = n + 1 WHERE id = :i"),
                    {"i": rnd.randint(1, 1000)},
                )
            counts[t] += 1

    started = time.monotonic()
    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return sum(counts) / (time.monotonic() - started)


def claim(db: Database, sku_id: int, threads: int, claims: int) -> tuple[list[float], list[int]]:
    hints = vault.ClaimHints()
    stamps: list[float] = []
    taken: list[int] = []
    lock = threading.Lock()
    next_order = iter(range(1, 10**9))
    remaining = [claims]

    def work() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
                order_id = next(next_order)
            with db.write() as s:
                got = vault.take_keys(s, sku_id, order_id, 1, utcnow(), hints=hints)
            with lock:
                if not got:
                    remaining[0] = 0
                    return
                stamps.append(time.monotonic())
                taken.extend(got)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return stamps, taken


def run(
    url: str, keys: int, threads: int, claims: int, baseline_seconds: float
) -> dict[str, object]:
    db = Database(make_engine(url, pool_size=threads), concurrency=threads)
    try:
        t0 = time.monotonic()
        sku_id = fill_pool(db, keys)
        fill_s = time.monotonic() - t0
        base = baseline(db, threads, baseline_seconds)
        start = time.monotonic()
        stamps, taken = claim(db, sku_id, threads, claims)
        elapsed = time.monotonic() - start
        stamps.sort()
        tenth = max(1, len(stamps) // 10)

        def rate(part: list[float], since: float) -> float:
            return len(part) / max(part[-1] - since, 1e-9)

        first = rate(stamps[:tenth], start)
        last = rate(stamps[-tenth:], stamps[-tenth - 1] if len(stamps) > tenth else start)
        with db.read() as s:
            table_doubles = s.execute(
                text(
                    "SELECT count(*) FROM (SELECT order_id FROM vault_key WHERE status = 'sold' "
                    "GROUP BY order_id HAVING count(*) > 1) AS d"
                )
            ).scalar_one()
            sold = s.execute(
                text("SELECT count(*) FROM vault_key WHERE status = 'sold'")
            ).scalar_one()
        double = (
            (len(taken) - len(set(taken))) + int(table_doubles) + abs(int(sold) - len(set(taken)))
        )
        claims_per_s = len(stamps) / elapsed
        return {
            "bench": "claim",
            "db": db.dialect,
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
            "keys": keys,
            "threads": threads,
            "claims": len(stamps),
            "pool_fill_s": round(fill_s, 1),
            "seconds": round(elapsed, 1),
            "claims_per_s": round(claims_per_s),
            "first_decile_per_s": round(first),
            "last_decile_per_s": round(last),
            "baseline_updates_per_s": round(base),
            "claims_vs_baseline": round(claims_per_s / base, 2),
            "last_vs_first_decile": round(last / first, 2),
            "double_claims": double,
        }
    finally:
        db.dispose()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--db", default="sqlite", help="'sqlite', 'postgresql' or a PostgreSQL server URL"
    )
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument(
        "--claims", type=int, default=0, help="stop after this many (default: drain the pool)"
    )
    p.add_argument("--baseline-seconds", type=float, default=10.0)
    a = p.parse_args(argv)
    claims = a.claims or a.keys
    with (
        tempfile.TemporaryDirectory(prefix="kami-bench-") as tmp,
        scratch_database(a.db, Path(tmp)) as url,
    ):
        result = run(url, a.keys, a.threads, claims, a.baseline_seconds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
