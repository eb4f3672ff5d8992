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

On SQLite a second reference, `bare_claims_per_s`: the same claim statement, with Kami's own
parameter conversion, on a bare `sqlite3` connection, one thread, in a process of its own
(`bare_claim.py`), on a second SKU of `--bare-keys` keys in the same table, run before the
claimers: about what SQLite and its driver do on this machine at this hour without the shop's
transaction around them. `claims_vs_bare` is the shop's rate against it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scratch import scratch_database

from kami import vault
from kami.kernel.clock import utcnow
from kami.kernel.db import Database
from kami.kernel.engine import make_engine


def fill_pool(db: Database, n: int, bare: int = 0) -> tuple[int, int | None]:
    """A category, product and SKU, and `n` available keys, the fastest way each engine allows;
    and a second SKU with `bare` keys for `bare_claims` if `bare`. Returns both SKUs' ids."""
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
                "INSERT INTO vault_data_key (master_version, wrapped, created_at) "
                "VALUES (1, :w, :t)"
            ),
            {"w": b"x" * 60, "t": now},
        )
        sku = _sku_with_keys(s, db.dialect, "BENCH", n, now)
        bare_sku = _sku_with_keys(s, db.dialect, "BARE", bare, now) if bare else None
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
    return sku, bare_sku


def _sku_with_keys(s: Any, dialect: str, code: str, n: int, now: Any) -> int:
    """A SKU `code` of product 1, a batch sealed with data key 1, and `n` available keys in it
    (dummy ciphertext: the claim never decrypts). Returns the SKU's id."""
    sku = s.execute(
        text(
            "INSERT INTO catalog_sku (code, product_id, name, price_minor, currency, "
            "delivery_kind, min_quantity, max_quantity, active, stock_display, "
            "low_stock_threshold, position, created_at) VALUES (:code, 1, :code, 100, "
            "'CNY', 'card_key', 1, 10, true, 'exact', 0, 0, :t) RETURNING id"
        ),
        {"code": code, "t": now},
    ).scalar_one()
    batch = s.execute(
        text(
            "INSERT INTO vault_batch (public_id, sku_id, data_key_id, supplier, source_name, "
            "imported, duplicates_in_file, duplicates_in_stock, invalid, created_at) "
            "VALUES (:code, :sku, 1, '', '', :n, 0, 0, 0, :t) RETURNING id"
        ),
        {"code": code.lower(), "sku": sku, "n": n, "t": now},
    ).scalar_one()
    keys = {"sku": sku, "batch": batch, "n": n, "masked": f"{code[:2]}****{code[-2:]}"}
    if dialect == "postgresql":
        s.execute(
            text(
                "INSERT INTO vault_key (sku_id, batch_id, data_key_id, fingerprint, ciphertext, "
                "masked, status, expires_at, created_at) "
                "SELECT :sku, :batch, 1, sha256(i::text::bytea), sha256(('c' || i)::bytea), "
                ":masked, 'available', '9999-12-31 00:00:00+00', :t "
                "FROM generate_series(1, :n) AS i"
            ),
            {**keys, "t": now},
        )
    else:
        s.execute(
            text(
                "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n) "
                "INSERT INTO vault_key (sku_id, batch_id, data_key_id, fingerprint, ciphertext, "
                "masked, status, expires_at, created_at) "
                "SELECT :sku, :batch, 1, randomblob(32), randomblob(48), :masked, 'available', "
                "'9999-12-31 00:00:00.000000', :t FROM seq"
            ),
            {**keys, "t": now.replace(tzinfo=None)},
        )
    return int(sku)


# The bare loop's orders are numbered from here, apart from the claimers' (1, 2, 3 …).
BARE_FIRST_ORDER = 2_000_000_000


def bare_claims(url: str, sku: int, claims: int) -> dict[str, Any]:
    """`bare_claim.py` on the database file, in a process of its own, on SKU `sku`."""
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parent / "bare_claim.py"),
            url.split("///", 1)[1],
            str(sku),
            str(claims),
            str(BARE_FIRST_ORDER),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"bare_claim.py failed with exit status {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["claims"]:
        raise SystemExit("bare_claim.py claimed nothing")
    return result


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
    url: str, keys: int, threads: int, claims: int, baseline_seconds: float, bare_keys: int = 0
) -> dict[str, object]:
    db = Database(make_engine(url, pool_size=threads), concurrency=threads)
    try:
        t0 = time.monotonic()
        bare_keys = bare_keys if db.dialect == "sqlite" else 0
        sku_id, bare_sku = fill_pool(db, keys, bare_keys)
        fill_s = time.monotonic() - t0
        base = baseline(db, threads, baseline_seconds)
        bare = bare_claims(url, bare_sku, bare_keys) if bare_sku is not None else None
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
                    "AND sku_id = :sku GROUP BY order_id HAVING count(*) > 1) AS d"
                ),
                {"sku": sku_id},
            ).scalar_one()
            sold = s.execute(
                text("SELECT count(*) FROM vault_key WHERE status = 'sold' AND sku_id = :sku"),
                {"sku": sku_id},
            ).scalar_one()
        double = (
            (len(taken) - len(set(taken))) + int(table_doubles) + abs(int(sold) - len(set(taken)))
        )
        claims_per_s = len(stamps) / elapsed
        return {
            "bench": "claim",
            "db": db.dialect,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
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
            "bare_claims": None if bare is None else bare["claims"],
            "bare_claims_per_s": None if bare is None else bare["claims_per_s"],
            "claims_vs_bare": None
            if bare is None
            else round(claims_per_s / bare["claims_per_s"], 2),
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
    p.add_argument(
        "--bare-keys",
        type=int,
        default=200_000,
        help="SQLite: keys of the bare loop's own SKU, all claimed by it (0: no bare loop)",
    )
    a = p.parse_args(argv)
    if a.bare_keys < 0:
        p.error("--bare-keys must be 0 or more")
    claims = a.claims or a.keys
    with (
        tempfile.TemporaryDirectory(prefix="kami-bench-") as tmp,
        scratch_database(a.db, Path(tmp)) as url,
    ):
        result = run(url, a.keys, a.threads, claims, a.baseline_seconds, a.bare_keys)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
