"""Rebuilding a SQLite database file with Kami's page size (`kami db vacuum`, decision 0030).

A database made before decision 0030 keeps SQLite's 4 KiB pages: SQLite sets a file's page
size when the file is made and changes it only by rebuilding the whole file (VACUUM), which it
refuses in WAL mode. So the rebuild takes the database for itself (an exclusive lock, held to
the end), leaves WAL mode, rebuilds, and returns to it. Taking the lock and leaving WAL mode
fail while another connection uses the file (a running `kami serve` or worker), and that
failure is the check; once the lock is held, nothing else can open a transaction on the file
until the rebuild ends. VACUUM is atomic: stopped part-way (a crash, Ctrl-C, a full disk) the
file is as it was before.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from kami.kernel.engine import PAGE_SIZE
from kami.kernel.errors import Conflict, InvalidInput, Unavailable

# How often (in SQLite virtual machine instructions) the rebuild calls back to show it is alive.
_TICK_EVERY = 10_000

_IN_USE = "the database is in use: stop `kami serve` and any `kami worker` first"


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
    then while it runs. Raises InvalidInput if there is no such database or not room enough,
    Conflict if another connection uses it, Unavailable if SQLite stops the rebuild (the file
    is then as it was)."""
    if not os.path.isfile(path):
        raise InvalidInput(f"no SQLite database at {path}", where="KAMI_DATABASE_URL")
    before = _size(path)
    _check_room(path, before)
    conn = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    started = time.monotonic()
    try:
        old = int(conn.execute("PRAGMA page_size").fetchone()[0])
        # Exclusive locking: the lock the first transaction takes is kept until the connection
        # ends, so no connection opened from here on can read or write, nor make the file WAL
        # again before VACUUM runs.
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("COMMIT")
        try:
            conn.execute(f"PRAGMA page_size={int(page_size)}")
            if tick is not None:
                conn.set_progress_handler(
                    lambda: tick(time.monotonic() - started) or 0, _TICK_EVERY
                )
            try:
                conn.execute("VACUUM")
            finally:
                conn.set_progress_handler(None, 0)
            new = int(conn.execute("PRAGMA page_size").fetchone()[0])
        except BaseException:
            with suppress(sqlite3.Error):  # the first error is the one to tell
                conn.execute("PRAGMA journal_mode=WAL")
            raise
        conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        message = str(exc)
        if "interrupt" in message:  # Ctrl-C, raised in the progress callback: nothing changed
            raise KeyboardInterrupt from None
        if "locked" in message or "busy" in message:
            raise Conflict(_IN_USE, where=path) from None
        raise Unavailable(
            f"SQLite stopped the rebuild ({message}); the database is as it was", where=path
        ) from None
    finally:
        conn.close()
    if new != page_size:
        raise Unavailable(
            f"SQLite kept pages of {new} bytes where {page_size} were asked for", where=path
        )
    return Rebuilt(old, new, before, _size(path), time.monotonic() - started)


def sqlite_temp_dir() -> str:
    """Where SQLite puts VACUUM's temporary copy: the first of these that is a writable
    directory (SQLite's own order on Unix). Only its free space is read here."""
    for candidate in (
        os.environ.get("SQLITE_TMPDIR"),
        os.environ.get("TMPDIR"),
        "/var/tmp",  # noqa: S108 (SQLite's choice, measured, not written)
        "/usr/tmp",
        "/tmp",  # noqa: S108
    ):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return "."


def _check_room(path: str, size: int) -> None:
    """VACUUM writes a copy of the database in SQLite's temporary directory, then the copy
    over the file through a rollback journal beside it: about the file's size in each place,
    twice it where they are the same file system."""
    here = os.path.dirname(os.path.abspath(path))
    temp = sqlite_temp_dir()
    same = os.stat(here).st_dev == os.stat(temp).st_dev
    for where, needed in ((here, 2 * size if same else size), (temp, size)):
        free = shutil.disk_usage(where).free
        if free < needed:
            raise InvalidInput(
                f"the rebuild needs about {needed // 2**20} MiB free in {where}, and "
                f"{free // 2**20} MiB are (SQLITE_TMPDIR chooses where its copy goes)",
                where=path,
            )


def _size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
