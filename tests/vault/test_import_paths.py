"""The import's fast paths: reading ahead on a thread, SQLite's larger cache, one foreign key
per key, and exact duplicate reports when two imports of the same keys overlap."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from kami import fulfilment, vault
from kami.kernel.errors import InvalidInput
from kami.vault import imports, inserting
from kami.vault.imports import _Prepared, _read_ahead
from tests.conftest import BACKEND, make_sku


def chunk(n: int) -> _Prepared:
    return _Prepared([bytes([n])], [n], [b"ct"], ["m"], [], [])


def test_read_ahead_hands_chunks_over_in_order() -> None:
    assert [c.lines for c in _read_ahead(chunk(n) for n in range(50))] == [[n] for n in range(50)]


def test_read_ahead_raises_the_readers_error_in_the_consumer() -> None:
    def reader() -> Iterator[_Prepared]:
        yield chunk(1)
        raise InvalidInput("a quote is not closed", where="line 7")

    got = []
    with pytest.raises(InvalidInput) as caught:
        for c in _read_ahead(reader()):
            got.append(c.lines)
    assert got == [[1]] and caught.value.where == "line 7"


def test_read_ahead_stops_reading_when_the_consumer_stops() -> None:
    produced = []

    def reader() -> Iterator[_Prepared]:
        for n in range(10_000):
            produced.append(n)
            yield chunk(n % 256)

    before = {t.name for t in threading.enumerate()}
    ahead = _read_ahead(reader())
    assert next(ahead).lines == [0]
    ahead.close()  # what a failed insert does to the loop consuming it
    # The reader got at most a queue's worth ahead, and its thread has ended.
    assert len(produced) <= 2 + imports.AHEAD + 1
    assert "kami-import-read-ahead" not in {t.name for t in threading.enumerate()} - before


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def rows_of(path: Path) -> object:
    rows, _ = vault.open_rows(path, None, None)
    return rows


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's page cache")
def test_sqlite_import_gives_the_connection_its_cache_back(
    shop: fulfilment.Shop, tmp_path: Path
) -> None:
    sku = make_sku(shop)
    seen = []
    with shop.db.write() as s:
        raw = s.connection().connection.driver_connection
        (before,) = raw.execute("PRAGMA cache_size").fetchone()

        def during(_report: vault.ImportReport) -> None:
            seen.append(raw.execute("PRAGMA cache_size").fetchone()[0])

        path = write(tmp_path, "k.txt", ["A-1", "A-2"])
        vault.import_keys(s, shop.cipher, sku.id, rows_of(path), vault.BatchInfo(), on_chunk=during)
        (after,) = raw.execute("PRAGMA cache_size").fetchone()
    assert seen == [-inserting.IMPORT_CACHE_KIB] and after == before != seen[0]


def test_a_key_must_agree_with_its_batch(shop: fulfilment.Shop, tmp_path: Path) -> None:
    sku = make_sku(shop)
    other = make_sku(shop, "SKU-2")
    report = fulfilment.import_and_serve(
        shop, sku.id, rows_of(write(tmp_path, "k.txt", ["B-1"])), vault.BatchInfo()
    )
    with pytest.raises(IntegrityError), shop.db.write() as s:
        # The key moved to another SKU while its batch stays with the first one.
        s.execute(
            text("UPDATE vault_key SET sku_id = :o WHERE sku_id = :s"),
            {"o": other.id, "s": sku.id},
        )
    with pytest.raises(IntegrityError), shop.db.write() as s:
        s.execute(text("UPDATE vault_key SET data_key_id = data_key_id + 1000"))
    with shop.db.read() as s:
        [batch] = [b for b in vault.stock_by_batch(s) if b.batch == report.batch]
    assert batch.sku_id == sku.id and report.imported == 1


def _wait_for_lock_wait(shop: fulfilment.Shop) -> None:
    """On PostgreSQL, until some session waits for a lock (the second import, for the first)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with shop.db.read() as s:
            waiting = s.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError("the second import never waited for the first")


@pytest.mark.parametrize("first_commits", [True, False], ids=["first-commits", "first-undone"])
def test_overlapping_imports_of_the_same_keys_report_exactly(
    shop: fulfilment.Shop,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    first_commits: bool,
) -> None:
    """Two imports share keys 5..10 and overlap in time: the second reports the first's keys
    as in stock (or imports them, if the first is undone), by line, across several chunks."""
    monkeypatch.setattr(imports, "CHUNK", 4)
    sku = make_sku(shop)
    first_keys = [f"K-{n}" for n in range(1, 11)]
    second_keys = [f"K-{n}" for n in range(5, 16)] + ["K-12", "K-5"]  # lines 12 and 13 repeat
    first_path = write(tmp_path, "first.txt", first_keys)
    second_path = write(tmp_path, "second.txt", second_keys)

    inserted = threading.Event()
    release = threading.Event()
    outcome: dict[str, object] = {}

    class Undo(Exception):
        pass

    def first() -> None:
        try:
            with shop.db.write() as s:
                outcome["first"] = vault.import_keys(
                    s, shop.cipher, sku.id, rows_of(first_path), vault.BatchInfo()
                )
                inserted.set()
                release.wait(30)
                if not first_commits:
                    raise Undo
        except Undo:
            outcome["first"] = None

    def second() -> None:
        outcome["second"] = fulfilment.import_and_serve(
            shop, sku.id, rows_of(second_path), vault.BatchInfo()
        )

    one = threading.Thread(target=first)
    one.start()
    assert inserted.wait(30)
    two = threading.Thread(target=second)
    two.start()
    if BACKEND == "postgresql":
        _wait_for_lock_wait(shop)  # the second import is blocked on the first's keys
    release.set()
    one.join(30)
    two.join(30)
    report = outcome["second"]
    assert isinstance(report, vault.ImportReport)
    if first_commits:
        assert report.imported == 5  # K-11..K-15
        assert sorted(report.duplicate_lines_in_stock) == [1, 2, 3, 4, 5, 6, 13]
        assert report.duplicate_lines_in_file == [12]
    else:
        assert outcome["first"] is None
        assert report.imported == 11
        assert report.duplicate_lines_in_stock == []
        assert report.duplicate_lines_in_file == [12, 13]
    with shop.db.read() as s:
        keys = s.execute(
            text("SELECT count(*) FROM vault_key WHERE sku_id = :s"), {"s": sku.id}
        ).scalar_one()
    assert keys == (15 if first_commits else 11)
