"""The shop's claim statement on a bare `sqlite3` connection: SQLite without the shop around it.

    python bench/bare_claim.py DATABASE_FILE SKU_ID CLAIMS FIRST_ORDER_ID

Run by `claim.py` on SQLite, in a process of its own, against a SKU of its own in the same
database file, so that the shop's claim rate has a reference measured in the same run and on
the same table and indexes. One thread; each claim is BEGIN IMMEDIATE, the statement
`vault.take_keys` runs (the hinted form, from the last key taken, laid out by Kami's own
parameter conversion, its result converted back) and COMMIT, with the shop's pragmas. Nothing
else: no writer queue, no Session, no scan hints object, no retries. What it measures is
SQLite, the `sqlite3` module and those conversions. Prints one JSON object.

It runs in a process of its own so that neither the claimers' threads nor the harness's heap
touch it. A loop this bare in an interpreter that imports nothing else measures glibc too: on
2026-12-07 such a process gave the heap's top back to the kernel after every commit (about
176 KB, above glibc's default trim threshold of 128 KB) and took the page faults again on the
next claim, 17,000–18,700 claims/s against 29,300–30,600/s with the threshold raised. This one
imports Kami to compile the statement, as the shop's processes do, and like them it does not
trim its heap per claim (strace: 111 `brk` calls in all over 20,000 claims).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from typing import Any

from sqlalchemy.dialects import sqlite as sqlite_dialect

from kami.kernel.clock import utcnow
from kami.kernel.engine import BUSY_TIMEOUT_MS, WAL_AUTOCHECKPOINT_PAGES
from kami.vault.claims import claim_statement
from kami.vault.states import KeyStatus


def main(argv: list[str]) -> dict[str, Any]:
    path, sku_id, claims, first_order = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    dialect = sqlite_dialect.dialect()
    # The shop's two forms of the claim: from the start of the SKU's range, and from a hint.
    plans = {
        hinted: claim_statement(hinted, KeyStatus.SOLD).plan(dialect) for hinted in (False, True)
    }
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "foreign_keys=ON",
        f"busy_timeout={BUSY_TIMEOUT_MS}",
        f"wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}",
    ):
        conn.execute(f"PRAGMA {pragma}")
    cursor = conn.cursor()
    start: tuple[Any, int] | None = None
    taken = 0
    began = time.perf_counter()
    for n in range(claims):
        values: dict[str, Any] = {
            "p_sku": sku_id,
            "p_now": utcnow(),
            "p_quantity": 1,
            "p_order": first_order + n,
        }
        if start is not None:
            values["p_start_at"], values["p_start_id"] = start
        plan = plans[start is not None]
        cursor.execute("BEGIN IMMEDIATE")
        rows = cursor.execute(plan.sql, plan.parameters(values)).fetchall()
        cursor.execute("COMMIT")
        if not rows:
            break
        taken += 1
        key_id, expires_at = plan.rows(rows)[0]
        start = (expires_at, key_id)
    elapsed = time.perf_counter() - began
    conn.close()
    return {"claims": taken, "seconds": round(elapsed, 2), "claims_per_s": round(taken / elapsed)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
