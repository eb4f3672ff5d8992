"""Key-import throughput: the shop's own import path against a plain INSERT baseline.

    .venv/bin/python bench/import_keys.py --db sqlite --keys 1000000
    .venv/bin/python bench/import_keys.py --db postgresql://postgres@127.0.0.1:5432/postgres

`--db sqlite` (or any sqlite:/// URL) benchmarks a fresh SQLite file in a temporary directory.
A PostgreSQL URL names a server and a database to connect to for administration: a scratch
database is created on that server, migrated, benchmarked and dropped afterwards.

The measured path is the one `kami keys import` takes: `vault.open_rows` streaming a generated
text file into `fulfilment.import_and_serve` (fingerprint, de-duplicate, encrypt, insert, one
transaction). The baseline, in the same run and through the same engine and driver, inserts N
rows of the same width into a table shaped like `vault_key` (same columns, same indexes, no
foreign keys) with a plain executemany: no file, no encryption, no fingerprinting, no
ON CONFLICT. Peak RSS is the process's high-water mark after the import, before the baseline.

Wall-clock figures swing widely on a machine shared with other work, so CPU seconds are given
too: this process's, and the PostgreSQL server processes' serving the scratch database (read
from /proc, so only when the server is local; null otherwise). `keys_per_cpu_s` is the rate on
one dedicated core; `ratio` and `ratio_cpu` compare the import with the baseline.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import secrets
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    text,
)

from kami import bootstrap, catalog, fulfilment, vault
from kami.config import Settings
from kami.kernel.engine import normalise_url
from kami.vault.imports import CHUNK

KEY_WIDTH = 19  # XXXX-XXXX-XXXX-XXXX


class CpuClock:
    """CPU seconds used by this process and, when the database server runs on this machine, by
    the server processes serving the database: on a shared machine these move far less than
    wall-clock time does."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _server(self) -> float | None:
        if self.engine.dialect.name != "postgresql":
            return 0.0  # SQLite works inside this process
        with self.engine.connect() as conn:
            pids = conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            ).scalars()
            total = 0
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    return None  # not a local server
                total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuClock:
        self.server0 = self._server()
        self.client0 = time.process_time()
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.client = time.process_time() - self.client0
        server = self._server()
        self.server = None if server is None or self.server0 is None else server - self.server0

    def figures(self, n: int) -> dict[str, object]:
        cpu = None if self.server is None else self.client + self.server
        return {
            "seconds": round(self.wall, 3),
            "per_s": round(n / self.wall),
            "cpu_seconds": {
                "client": round(self.client, 3),
                "server": None if self.server is None else round(self.server, 3),
            },
            "per_cpu_s": None if cpu is None else round(n / cpu),
        }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def write_keys(path: Path, n: int) -> None:
    """N distinct keys of KEY_WIDTH characters, one a line, written in blocks."""
    prefix = secrets.token_hex(2).upper()
    with path.open("w", encoding="utf-8") as fh:
        block: list[str] = []
        for i in range(n):
            h = f"{i:012X}"
            block.append(f"{prefix}-{h[0:4]}-{h[4:8]}-{h[8:12]}\n")
            if len(block) == 10_000:
                fh.writelines(block)
                block = []
        fh.writelines(block)


def make_sku(shop: fulfilment.Shop, code: str) -> catalog.SkuView:
    with shop.db.write() as s:
        catalog.create_category(s, catalog.CategoryIn(slug=f"c-{code.lower()}", name="Bench"))
        catalog.create_product(
            s,
            catalog.ProductIn(
                slug=f"p-{code.lower()}", category=f"c-{code.lower()}", name="Bench product"
            ),
        )
        return catalog.create_sku(
            s,
            catalog.SkuIn(code=code, product=f"p-{code.lower()}", name=code, price_minor=100),
        )


def baseline(url: str, n: int) -> CpuClock:
    """Time to executemany-insert N rows shaped like imported keys, in one transaction."""
    md = MetaData()
    table = Table(
        "bench_plain_key",
        md,
        Column("id", Integer, primary_key=True),
        Column("sku_id", Integer, nullable=False),
        Column("batch_id", Integer, nullable=False),
        Column("data_key_id", Integer, nullable=False),
        Column("fingerprint", LargeBinary(32), nullable=False),
        Column("ciphertext", LargeBinary, nullable=False),
        Column("masked", String(600), nullable=False),
        Column("status", String(16), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("order_id", Integer, nullable=True),
        Column("sold_at", DateTime(timezone=True), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("sku_id", "fingerprint", name="uq_bench_plain_key_fp"),
        Index("ix_bench_plain_key_claim", "sku_id", "status", "expires_at", "id"),
        Index("ix_bench_plain_key_batch", "batch_id"),
        Index(
            "ix_bench_plain_key_order",
            "order_id",
            sqlite_where=text("order_id IS NOT NULL"),
            postgresql_where=text("order_id IS NOT NULL"),
        ),
    )
    engine = create_engine(normalise_url(url))
    sqlite = engine.dialect.name == "sqlite"
    now = datetime.now(UTC)
    expires = datetime(9999, 12, 31, tzinfo=UTC)
    if sqlite:
        now, expires = now.replace(tzinfo=None), expires.replace(tzinfo=None)
    ciphertext = os.urandom(12 + KEY_WIDTH + 16)  # nonce + plaintext + tag, as the vault stores
    masked = "ABCD-****-****-WXYZ"
    try:
        md.create_all(engine)
        with CpuClock(engine) as clock, engine.begin() as conn:
            for base in range(0, n, CHUNK):
                conn.execute(
                    table.insert(),
                    [
                        {
                            "sku_id": 1,
                            "batch_id": 1,
                            "data_key_id": 1,
                            "fingerprint": i.to_bytes(32, "big"),
                            "ciphertext": ciphertext,
                            "masked": masked,
                            "status": "available",
                            "expires_at": expires,
                            "created_at": now,
                        }
                        for i in range(base, min(base + CHUNK, n))
                    ],
                )
        return clock
    finally:
        md.drop_all(engine)
        engine.dispose()


def run(url: str, n: int, work: Path) -> dict[str, object]:
    settings = Settings(
        database_url=url,
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        master_key_file=work / "unused.key",
        inprocess_worker=False,
    )
    bootstrap.migrate(settings)
    container = bootstrap.build(settings)
    try:
        shop = container.shop
        sku = make_sku(shop, f"BENCH-{secrets.token_hex(3).upper()}")
        keys_file = work / "keys.txt"
        write_keys(keys_file, n)
        rows, _progress = vault.open_rows(keys_file)
        with CpuClock(shop.db.engine) as clock:
            report = fulfilment.import_and_serve(
                shop, sku.id, rows, vault.BatchInfo(source_name=keys_file.name)
            )
        rss = peak_rss_mb()
        keys_file.unlink()
        if report.imported != n or report.lines_read != n:
            raise SystemExit(f"import reported {report}, expected {n} keys imported")
        with shop.db.read() as s:
            stored = vault.count_available(s, [sku.id]).get(sku.id, 0)
        if stored != n:
            raise SystemExit(f"{stored} keys stored, expected {n}")
    finally:
        container.close()
    base = baseline(url, n)
    ours, theirs = clock.figures(n), base.figures(n)
    cpu_ratio = (
        None
        if ours["per_cpu_s"] is None or theirs["per_cpu_s"] is None
        else round(clock_cpu(base) / clock_cpu(clock), 3)
    )
    return {
        "db": container.db.dialect,
        "keys": n,
        "seconds": ours["seconds"],
        "keys_per_s": ours["per_s"],
        "peak_rss_mb": round(rss, 1),
        "cpu_seconds": ours["cpu_seconds"],
        "keys_per_cpu_s": ours["per_cpu_s"],
        "baseline": {
            "what": "Core executemany INSERT, same row width and indexes, no crypto/dedup",
            "seconds": theirs["seconds"],
            "rows_per_s": theirs["per_s"],
            "cpu_seconds": theirs["cpu_seconds"],
            "rows_per_cpu_s": theirs["per_cpu_s"],
        },
        "ratio": round(base.wall / clock.wall, 3),
        "ratio_cpu": cpu_ratio,
        "chunk": CHUNK,
        "peak_rss_mb_end": round(peak_rss_mb(), 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def clock_cpu(clock: CpuClock) -> float:
    return clock.client + (clock.server or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db", default="sqlite", help="'sqlite', 'postgresql' or a PostgreSQL server URL"
    )
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.db == "postgresql":
        args.db = "postgresql://postgres@127.0.0.1:5432/postgres"
    if args.keys < 1:
        parser.error("--keys must be positive")
    with tempfile.TemporaryDirectory(prefix="kami-bench-") as tmp:
        work = Path(tmp)
        if args.db == "sqlite" or args.db.startswith("sqlite:"):
            result = run(f"sqlite:///{work / 'bench.db'}", args.keys, work)
        elif normalise_url(args.db).startswith("postgresql+psycopg://"):
            admin_url = normalise_url(args.db)
            name = f"kami_bench_{uuid.uuid4().hex[:12]}"
            admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                result = run(admin_url.rsplit("/", 1)[0] + f"/{name}", args.keys, work)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
        else:
            parser.error("--db must be 'sqlite' or a postgresql:// URL")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
