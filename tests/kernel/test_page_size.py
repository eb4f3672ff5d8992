"""SQLite's page size: a new database is made with Kami's, an older one is rebuilt with
`kami db vacuum` (decision 0030)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kami import bootstrap, fulfilment
from kami.cli.main import app
from kami.config import Settings
from kami.kernel import sqlite_rebuild
from kami.kernel.engine import PAGE_SIZE, make_engine
from kami.kernel.errors import Conflict, InvalidInput
from kami.kernel.sqlite_rebuild import rebuild
from tests.conftest import BACKEND

sqlite_only = pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's page size")


def pragma(path: Path, name: str) -> object:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def old_database(path: Path, rows: int = 3000) -> None:
    """A database as SQLite makes one by default (4 KiB pages), in WAL mode, with rows in a
    table and an index."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    conn.execute("CREATE INDEX ix_t_v ON t (v)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"value-{n:06d}",) for n in range(rows)])
    conn.close()


@sqlite_only
def test_the_migrations_make_a_new_database_with_kamis_page_size(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    bootstrap.migrate(Settings(database_url=f"sqlite:///{path}"))
    assert PAGE_SIZE == 1024 and pragma(path, "page_size") == PAGE_SIZE
    conn = sqlite3.connect(path)
    try:  # every migration ran and was recorded: the PRAGMA's transaction undid none of them
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert conn.execute("SELECT count(*) FROM vault_key").fetchone() == (0,)
    finally:
        conn.close()
    shipped = Path(bootstrap.__file__).parent / "migrations" / "versions"
    assert version == max(p.name[:4] for p in shipped.glob("0*.py"))


def test_a_database_a_connection_makes_has_kamis_page_size(tmp_path: Path) -> None:
    path = tmp_path / "made-by-a-connection.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (n INTEGER)")
    finally:
        engine.dispose()
    assert pragma(path, "page_size") == PAGE_SIZE


def test_the_shops_database_has_kamis_page_size(shop: fulfilment.Shop, settings: Settings) -> None:
    if BACKEND != "sqlite":
        pytest.skip("SQLite's page size")
    path = Path(settings.database_url.split("///", 1)[1])
    assert pragma(path, "page_size") == PAGE_SIZE


def test_an_older_database_is_rebuilt_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_database(path)
    ticks: list[float] = []
    done = rebuild(str(path), tick=ticks.append)
    assert (done.page_size_before, done.page_size) == (4096, PAGE_SIZE)
    assert pragma(path, "page_size") == PAGE_SIZE
    assert pragma(path, "journal_mode") == "wal"
    assert pragma(path, "integrity_check") == "ok"
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*), min(v), max(v) FROM t").fetchone() == (
            3000,
            "value-000000",
            "value-002999",
        )
    finally:
        conn.close()
    assert ticks and ticks == sorted(ticks)  # it called back while it ran


def test_a_database_in_use_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    old_database(path)
    # Another process holds it open, as a running server does.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('SELECT count(*) FROM t').fetchone(); print('open', flush=True); "
            "sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(Conflict, match="in use"):
            rebuild(str(path))
    finally:
        holder.communicate("")
    assert pragma(path, "page_size") == 4096
    assert pragma(path, "journal_mode") == "wal"
    assert pragma(path, "integrity_check") == "ok"


def test_nothing_else_reads_or_writes_while_it_rebuilds(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    old_database(path)
    met: list[str] = []

    def another_connection(_seconds: float) -> None:
        if met:
            return
        other = sqlite3.connect(path, timeout=0)
        try:
            other.execute("SELECT count(*) FROM t").fetchone()
            met.append("read")
        except sqlite3.OperationalError as exc:
            met.append(str(exc))
        finally:
            other.close()

    rebuild(str(path), tick=another_connection)
    assert met == ["database is locked"]
    conn = sqlite3.connect(path)  # and the lock goes with the rebuild
    try:
        conn.execute("INSERT INTO t (v) VALUES ('after')")
        conn.commit()
    finally:
        conn.close()


def test_an_interrupted_rebuild_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "interrupted.db"
    old_database(path)
    calls = []

    def interrupt(_seconds: float) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rebuild(str(path), tick=interrupt)
    assert pragma(path, "page_size") == 4096
    assert pragma(path, "journal_mode") == "wal"
    assert pragma(path, "integrity_check") == "ok"
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3000,)
    finally:
        conn.close()


def test_not_room_enough_is_refused_before_anything_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cramped.db"
    old_database(path)
    size = path.stat().st_size
    real = sqlite_rebuild.shutil.disk_usage

    def cramped(where: str) -> object:
        return real(where)._replace(free=size)  # room for one copy, not for two

    monkeypatch.setattr(sqlite_rebuild.shutil, "disk_usage", cramped)
    monkeypatch.setenv("SQLITE_TMPDIR", str(tmp_path))  # the copy beside the database
    with pytest.raises(InvalidInput, match="MiB free in"):
        rebuild(str(path))
    assert pragma(path, "page_size") == 4096


def test_no_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no SQLite database"):
        rebuild(str(tmp_path / "missing.db"))


def test_kami_db_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    old_database(path)
    runner = CliRunner()
    result = runner.invoke(app, ["db", "vacuum"], env={"KAMI_DATABASE_URL": f"sqlite:///{path}"})
    assert result.exit_code == 0, result.output
    assert f"pages of 4096 → {PAGE_SIZE} bytes" in result.output
    result = runner.invoke(
        app,
        ["db", "vacuum"],
        env={"KAMI_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres"},
    )
    assert result.exit_code == 2 and "for SQLite" in result.output
