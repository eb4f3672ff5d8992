"""Who may run a transaction when: SQLite's one writer, handed between processes by a lock
file rather than SQLite's polling, and the per-process admission of transactions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from kami import bootstrap
from kami.fulfilment import Shop
from kami.kernel.admission import Admission, FairSlots
from kami.kernel.engine import WAL_AUTOCHECKPOINT_PAGES
from kami.kernel.errors import InvalidInput
from kami.kernel.waiting import WouldWait
from kami.kernel.writer import WriterQueue
from kami.worker import runner
from tests.conftest import BACKEND, run_async

sqlite_only = pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's writer queue")

PROBE = """
import fcntl, sys
with open(sys.argv[1], "a") as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("held")
    else:
        print("free")
"""


def _probe(path: Path) -> str:
    """What another process finds when it tries to become the writer."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _lock_path(shop: Shop) -> Path:
    return Path(str(shop.db.engine.url.database) + "-writer.lock")


@sqlite_only
def test_a_write_transaction_holds_the_lock_file_for_other_processes(shop: Shop) -> None:
    with shop.db.write() as s:
        s.execute(text("SELECT 1"))
        assert _probe(_lock_path(shop)) == "held"
    assert _probe(_lock_path(shop)) == "free"
    with shop.db.read() as s:  # readers never take it (WAL lets them run beside the writer)
        s.execute(text("SELECT 1"))
        assert _probe(_lock_path(shop)) == "free"


@sqlite_only
def test_a_failed_transaction_hands_the_lock_on(shop: Shop) -> None:
    with pytest.raises(RuntimeError), shop.db.write():
        raise RuntimeError("boom")
    assert _probe(_lock_path(shop)) == "free"


@sqlite_only
def test_writers_of_one_process_and_of_another_are_serialised(shop: Shop, tmp_path: Path) -> None:
    """Read-then-write counters from threads here and from a second process lose no update."""
    with shop.db.write() as s:
        s.execute(text("CREATE TABLE t_counter (n INTEGER NOT NULL)"))
        s.execute(text("INSERT INTO t_counter VALUES (0)"))
    other = f"""
import sys
from kami.kernel.db import Database
from kami.kernel.engine import make_engine
from sqlalchemy import text
db = Database(make_engine({str(shop.db.engine.url)!r}))
for _ in range(200):
    with db.write() as s:
        n = s.execute(text("SELECT n FROM t_counter")).scalar_one()
        s.execute(text("UPDATE t_counter SET n = :n"), {{"n": n + 1}})
"""
    child = subprocess.Popen([sys.executable, "-c", other])

    def bump() -> None:
        for _ in range(100):
            with shop.db.write() as s:
                n = s.execute(text("SELECT n FROM t_counter")).scalar_one()
                s.execute(text("UPDATE t_counter SET n = :n"), {"n": n + 1})

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert child.wait(timeout=120) == 0
    with shop.db.read() as s:
        assert s.execute(text("SELECT n FROM t_counter")).scalar_one() == 600


def test_fair_slots_serve_waiters_in_arrival_order() -> None:
    slots = FairSlots(1)
    slots.acquire()
    served: list[int] = []
    threads = []

    def take(n: int) -> None:
        slots.acquire()
        served.append(n)
        slots.release()

    for n in range(5):
        t = threading.Thread(target=take, args=(n,))
        t.start()
        threads.append(t)
        while len(slots._waiting) < n + 1:  # each is queued before the next one arrives
            time.sleep(0.001)
    slots.release()
    for t in threads:
        t.join()
    assert served == [0, 1, 2, 3, 4]


def test_admission_lets_a_thread_nest_and_holds_others_at_the_limit() -> None:
    admission = Admission(1)
    inside = threading.Event()
    release = threading.Event()
    entered: list[str] = []

    def holder() -> None:
        with admission.enter(), admission.enter():  # nested: no wait for itself
            inside.set()
            release.wait(10)

    def second() -> None:
        with admission.enter():
            entered.append("second")

    a = threading.Thread(target=holder)
    a.start()
    assert inside.wait(10)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.2)
    assert entered == []  # waiting for the one slot
    with admission.enter(counted=False):  # SQLite's writer never waits for a slot
        entered.append("writer")
    release.set()
    a.join()
    b.join(10)
    assert entered == ["writer", "second"]


def test_a_write_inside_a_read_does_not_deadlock_at_any_limit(shop: Shop) -> None:
    """Readers that go on to write hold their slot; the writer must still get through."""
    errors: list[BaseException] = []

    def read_then_write() -> None:
        try:
            for _ in range(20):
                with shop.db.read() as r:
                    r.execute(text("SELECT 1"))
                    with shop.db.write() as w:
                        w.execute(text("SELECT 1"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read_then_write) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and errors == []


def test_a_concurrency_below_one_is_refused() -> None:
    with pytest.raises(InvalidInput, match="at least 1"):
        Admission(0)


@sqlite_only
def test_commits_leave_checkpoints_to_the_worker(shop: Shop) -> None:
    with shop.db.read() as s:
        pages = s.execute(text("PRAGMA wal_autocheckpoint")).scalar_one()
    assert pages == WAL_AUTOCHECKPOINT_PAGES  # SQLite's own only as a fallback
    with shop.db.write() as s:
        s.execute(text("CREATE TABLE t_wal (n INTEGER)"))
    for n in range(20):
        with shop.db.write() as s:
            s.execute(text("INSERT INTO t_wal VALUES (:n)"), {"n": n})
    done = shop.db.checkpoint()
    assert done is not None
    frames, copied = done
    assert frames > 0 and copied == frames


def test_the_worker_checkpoints_every_cycle(
    container: bootstrap.Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(container.db, "checkpoint", lambda: calls.append("checkpoint"))
    runner.run_once(container, sweep=False)
    assert calls == ["checkpoint"]


def test_postgresql_has_no_checkpoint_to_do(shop: Shop) -> None:
    if BACKEND == "sqlite":
        pytest.skip("PostgreSQL only")
    assert shop.db.checkpoint() is None


@sqlite_only
def test_the_writer_taken_for_a_loop_that_closed_is_let_go(shop: Shop) -> None:
    """A call waited for the writer on an event loop that has since closed: the writer the
    process's waiting thread took for it goes back, and other writers go on."""
    writers = shop.db._writers
    assert writers is not None
    assert writers.acquire(None)  # held here until the loop below has closed
    ran: list[str] = []

    async def wait_then_leave() -> None:
        waiting = asyncio.create_task(writers.run_held(lambda: ran.append("ran"), 30))
        await asyncio.sleep(0.05)  # queued; the loop closes with it still waiting
        waiting.cancel()

    run_async(wait_then_leave)  # a loop of its own, closed when it returns
    writers.release()
    took = threading.Event()

    def write() -> None:
        with shop.db.write():
            took.set()

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(10)
    assert took.is_set() and ran == []


def _in_a_loop_thread(main: Any, seconds: float = 10) -> Any:
    """Run `main()` in a loop of its own thread; fail (rather than hang) if it does not end."""
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(asyncio.run(main())), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the loop never finished: the writer was left held"
    return outcome[0]


def test_a_loop_that_waits_for_the_writer_itself_is_not_handed_it_forever(
    tmp_path: Path,
) -> None:
    """The writer offered to a loop that is itself blocked waiting for it (code on the loop
    that writes outside `no_waiting()`) is taken back, so both go through."""
    writers = WriterQueue(str(tmp_path / "db-writer.lock"))
    assert writers.acquire(None)  # another thread's write, a moment long
    threading.Timer(0.1, writers.release).start()

    async def main() -> list[str]:
        done: list[str] = []
        waiting = asyncio.create_task(writers.run_held(lambda: done.append("checkout"), 5))
        await asyncio.sleep(0.01)  # queued, and the process's thread waits for the writer
        assert writers.acquire(None)  # the loop itself, blocked until the writer is free
        done.append("sign-in")
        writers.release()
        await waiting
        return done

    assert _in_a_loop_thread(main) == ["sign-in", "checkout"]
    assert writers.acquire(1.0)  # and nobody holds it now
    writers.release()


def test_calls_that_gave_up_leave_the_queue(tmp_path: Path) -> None:
    writers = WriterQueue(str(tmp_path / "db-writer.lock"))
    offers = []
    batch = writers._run_batch

    def counted(*args: Any) -> None:
        offers.append(1)
        batch(*args)

    writers._run_batch = counted  # type: ignore[method-assign]

    async def main() -> str:
        assert writers.acquire(None)  # held for longer than the calls wait (an import)

        async def gives_up() -> None:
            with pytest.raises(WouldWait):
                await writers.run_held(lambda: None, 0.05)

        await asyncio.gather(*(gives_up() for _ in range(100)))
        assert len(writers._on_loops) == 0
        live = asyncio.create_task(writers.run_held(lambda: "live", 5))
        writers.release()
        return await live

    assert _in_a_loop_thread(main) == "live"
    assert len(offers) == 1  # one hand-over for the one call still waiting


def test_a_batch_runs_at_most_its_share_and_each_call_once(tmp_path: Path) -> None:
    writers = WriterQueue(str(tmp_path / "db-writer.lock"))
    ran: list[int] = []

    def bad() -> None:
        ran.append(-1)
        raise StopIteration  # cannot travel through a future as it is

    async def main() -> list[object]:
        assert writers.acquire(None)
        calls = [
            asyncio.create_task(writers.run_held(lambda n=n: ran.append(n) or n, 5))
            for n in range(WriterQueue.LOOP_BATCH + 3)
        ]
        calls.insert(2, asyncio.create_task(writers.run_held(bad, 5)))
        await asyncio.sleep(0.05)
        writers.release()
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = _in_a_loop_thread(main)
    assert isinstance(outcomes[2], RuntimeError)
    assert [o for n, o in enumerate(outcomes) if n != 2] == list(range(WriterQueue.LOOP_BATCH + 3))
    assert sorted(ran) == [-1, *range(WriterQueue.LOOP_BATCH + 3)]  # each once


def test_a_batch_counts_a_group_as_the_calls_it_stands_for(tmp_path: Path) -> None:
    """Decision 0023: a call that stands for a group (`weight`) counts that many against
    LOOP_BATCH; one heavier than the batch runs in a hold of its own, and the calls behind it
    keep their order."""
    writers = WriterQueue(str(tmp_path / "db-writer.lock"))
    ran: list[str] = []
    batches: list[list[str]] = []
    batch = writers._run_batch

    def recorded(*args: Any) -> None:
        before = len(ran)
        batch(*args)
        if len(ran) > before:
            batches.append(ran[before:])

    writers._run_batch = recorded  # type: ignore[method-assign]
    light = WriterQueue.LOOP_BATCH - 2
    names = ["a", "b", "c", "group", "d", "e", *(f"x{n}" for n in range(light))]

    async def main() -> None:
        assert writers.acquire(None)
        calls = []
        for name in names:
            weight = WriterQueue.LOOP_BATCH * 4 if name == "group" else 1
            calls.append(
                asyncio.create_task(
                    writers.run_held(lambda name=name: ran.append(name), 5, weight=weight)
                )
            )
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        writers.release()
        await asyncio.gather(*calls)

    _in_a_loop_thread(main)
    assert ran == names  # in order, each once
    assert batches == [["a", "b", "c"], ["group"], names[4:]]  # the last: LOOP_BATCH calls
