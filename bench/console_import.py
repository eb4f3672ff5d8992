"""Does a key import in the admin console hold up the shop's buyers? The same server's answers
while it runs, against the same answers idle, in one run.

    kami bench console_import --db sqlite --keys 200000
    kami bench console_import --db postgresql --keys 200000 --workers 2

A scratch database gets a SKU and an owner. The real server is started (`kami serve`,
`--workers` processes), the owner signs in to the console, and then:

1. **idle**: for `--idle-seconds`, one client asks `GET /healthz` (no work), another
   `GET /api/v1/catalog` (a read of the database, what a buyer's page asks) and a third places
   orders (`POST /api/v1/orders`, a write: each reserves a key), each one request at a time,
   `--gap` seconds apart;
2. **during**: the same three clients, while the console imports `--keys` generated keys (one
   `POST /admin/keys/import`, a plain form post, with its upload).

With one server process, every request lands on the process doing the import. Reported:
`import_s` (the console's answer, upload included), `imported` (from its report page), and for
each endpoint and phase the number of answers, p50, p99 and max in ms; `healthz_max_ratio` is
the longest /healthz answer during the import over the idle p50. On SQLite an import holds the
database's one writer until it commits (decision 0004), so the checkouts wait for it; the reads
do not.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import build_container, exit_on_signals, make_sku, ms, percentile, run_server
from scratch import scratch_database

from kami import accounts

PASSWORD = "bench-owner-password"


def figures(times: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(times),
        "p50_ms": ms(percentile(times, 50)),
        "p99_ms": ms(percentile(times, 99)),
        "max_ms": ms(max(times)) if times else None,
    }


class Pollers:
    """Three clients, each asking one thing one request at a time, until stopped."""

    def __init__(self, base_url: str, gap: float, sku: str) -> None:
        self.base_url, self.gap, self.sku = base_url, gap, sku
        self.times: dict[str, list[float]] = {"healthz": [], "catalog": [], "checkout": []}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors = 0

    def _ask(self, http: httpx.Client, name: str, n: int) -> bool:
        if name == "healthz":
            return http.get("/healthz").status_code == 200
        if name == "catalog":
            return http.get("/api/v1/catalog").status_code == 200
        order = {"sku": self.sku, "quantity": 1, "email": f"b{n}.{id(self)}@bench.example"}
        answer = http.post(
            "/api/v1/orders", json={**order, "gateway": "sandbox"}, headers={"x-device-id": f"d{n}"}
        )
        return answer.status_code == 201

    def _poll(self, name: str) -> None:
        with httpx.Client(base_url=self.base_url, timeout=600) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                start = time.perf_counter()
                try:
                    ok = self._ask(http, name, n)
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.times[name].append(time.perf_counter() - start)
                else:
                    self.errors += 1
                self._stop.wait(self.gap)

    def __enter__(self) -> Pollers:
        for name in self.times:
            thread = threading.Thread(target=self._poll, args=(name,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(600)


def run(
    url: str, work: Path, keys: int, workers: int, idle: float, gap: float
) -> dict[str, object]:
    container = build_container(url, work)
    try:
        dialect = container.db.dialect
        sku = make_sku(container.shop, "IMPORTED", 20_000)  # the checkouts' keys
        with container.shop.db.write() as s:
            accounts.create_admin(s, "bench-owner", PASSWORD, accounts.Role.OWNER)
    finally:
        container.close()
    content = b"".join(
        b"CONSOLE-%010d-%s\n" % (i, os.urandom(4).hex().encode()) for i in range(keys)
    )
    with (
        run_server(url, work, workers=workers) as server,
        httpx.Client(base_url=server.base_url, timeout=600) as http,
    ):
        page = http.get("/admin/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        if token is None:
            raise SystemExit("no CSRF token on the sign-in page")
        form = {"csrf_token": token.group(1), "username": "bench-owner", "password": PASSWORD}
        if http.post("/admin/login", data=form).status_code not in (200, 303):
            raise SystemExit("the owner could not sign in")
        with Pollers(server.base_url, gap, sku.code) as calm:
            time.sleep(idle)
        with Pollers(server.base_url, gap, sku.code) as busy:
            start = time.perf_counter()
            answer = http.post(
                "/admin/keys/import",
                data={"csrf_token": http.cookies.get("kami_csrf") or "", "sku": sku.code},
                files={"file": ("keys.txt", content, "text/plain")},
            )
            took = time.perf_counter() - start
        problems = server.log_problems()
    imported = re.search(r'id="imported">(\d+)<', answer.text)
    idle_p50 = percentile(calm.times["healthz"], 50)
    busy_max = max(busy.times["healthz"], default=None)
    return {
        "bench": "console_import",
        "db": dialect,
        "machine": f"{platform.machine()}, nproc {os.cpu_count()}",
        "workers": workers,
        "keys": keys,
        "import_status": answer.status_code,
        "import_s": round(took, 2),
        "imported": int(imported.group(1)) if imported else None,
        "idle_healthz": figures(calm.times["healthz"]),
        "idle_catalog": figures(calm.times["catalog"]),
        "during_healthz": figures(busy.times["healthz"]),
        "during_catalog": figures(busy.times["catalog"]),
        "idle_checkout": figures(calm.times["checkout"]),
        "during_checkout": figures(busy.times["checkout"]),
        "healthz_max_ratio": round(busy_max / idle_p50, 1) if busy_max and idle_p50 else None,
        "poll_errors": calm.errors + busy.errors,
        "server_log_problems": dict(problems.most_common(5)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="sqlite", help="'sqlite', 'postgresql' or a PostgreSQL URL")
    p.add_argument("--keys", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--idle-seconds", type=float, default=3.0)
    p.add_argument("--gap", type=float, default=0.02, help="seconds between a client's requests")
    a = p.parse_args(argv)
    if a.keys < 1 or a.workers < 1:
        raise SystemExit("--keys and --workers must be at least 1")
    with (
        exit_on_signals(),
        tempfile.TemporaryDirectory(prefix="kami-bench-") as tmp,
        scratch_database(a.db, Path(tmp)) as url,
    ):
        result = run(url, Path(tmp), a.keys, a.workers, a.idle_seconds, a.gap)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
