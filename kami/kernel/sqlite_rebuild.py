"""Rebuilding a SQLite database file with Kami's page size (`kami db vacuum`, decision 0030).

A database made before decision 0030 keeps SQLite's 4 KiB pages: SQLite sets a file's page
size when the file is made and changes it only by rebuilding the whole file (VACUUM), which it
refuses in WAL mode. So the rebuild leaves WAL mode, rebuilds, and returns to it. It needs the
database to itself: leaving WAL mode fails while any other connection has the file open (a
running `kami serve` or worker), and that failure is the check. VACUUM is atomic: stopped
part-way (a crash, Ctrl-C, a full disk) the file is as it was before.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from kami.kernel.engine import PAGE_SIZE
from kami.kernel.errors import Conflict, InvalidInput

# How often (in SQLite virtual machine instructions) the rebuild calls back to show it is alive.
_TICK_EVERY = 10_000


@dataclass(frozen=True, slots=True)
class Rebuilt:
    page_size_before: int
    page_size: int
    bytes_before: int
    bytes_after: int
    seconds: float


def rebuild(
    path: str, page_size: int = PAGE_SIZE, tick: Callable[[float], None] | None = None
) -> Rebuilt:
    """Rebuild the database at `path` with `page_size`; `tick(seconds so far)` is called now and
    then while it runs. Raises InvalidInput if there is no such database or not room enough
    beside it, Conflict if another connection has it open."""
    if not os.path.isfile(path):
        raise InvalidInput(f"no SQLite database at {path}", where="KAMI_DATABASE_URL")
    before = _size(path)
    # VACUUM writes the new file beside the old one (a temporary file) and then the old one
    # over, through a rollback journal: up to twice the file's size on top of it.
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    if free < 2 * before:
        raise InvalidInput(
            f"the rebuild needs about {2 * before // 2**20} MiB free beside the database, and "
            f"{free // 2**20} MiB are",
            where=path,
        )
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    started = time.monotonic()
    try:
        old = int(conn.execute("PRAGMA page_size").fetchone()[0])
        if conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0].lower() != "delete":
            raise Conflict(
                "the database is in use: stop `kami serve` and any `kami worker` first",
                where=path,
            )
        try:
            conn.execute(f"PRAGMA page_size={int(page_size)}")
            if tick is not None:
                conn.set_progress_handler(
                    lambda: tick(time.monotonic() - started) or 0, _TICK_EVERY
                )
            conn.execute("VACUUM")
            conn.set_progress_handler(None, 0)
            new = int(conn.execute("PRAGMA page_size").fetchone()[0])
        finally:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        if "interrupt" in str(exc):  # Ctrl-C, raised in the progress callback: nothing changed
            raise KeyboardInterrupt from None
        if "locked" in str(exc) or "busy" in str(exc):
            raise Conflict(
                "the database is in use: stop `kami serve` and any `kami worker` first",
                where=path,
            ) from None
        raise
    finally:
        conn.close()
    return Rebuilt(old, new, before, _size(path), time.monotonic() - started)


def _size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
