"""Calls that must not wait long (kernel.waiting): refused where they would wait, before they
change anything; waited for as usual once they have committed."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Hashable, Iterator

import pytest
from sqlalchemy import text

from kami.fulfilment import Shop
from kami.kernel import waiting
from kami.kernel.admission import Admission, FairSlots
from kami.kernel.writer import WriterQueue
from kami.payments.gateways.transport import opener
from tests.conftest import BACKEND

sqlite_only = pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's writer queue")

HOLD = """
import fcntl, sys, time
with open(sys.argv[1], "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def held_by_another_process(shop: Shop) -> Iterator[subprocess.Popen[str]]:
    """SQLite's writer taken by another process until the test lets it go."""
    lock = str(shop.db.engine.url.database) + "-writer.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, lock], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield holder
    holder.kill()
    holder.wait(10)


def _let_go(holder: subprocess.Popen[str], after: float) -> None:
    assert holder.stdin is not None
    threading.Timer(after, lambda: (holder.stdin.write("\n"), holder.stdin.flush())).start()


def _count(shop: Shop) -> int:
    with shop.db.read() as s:
        return int(s.execute(text("SELECT count(*) FROM t_scratch")).scalar_one())


def test_fair_slots_wait_at_most_their_timeout_and_leave_the_queue() -> None:
    slots = FairSlots(1)
    assert slots.acquire()
    taken: list[bool] = []
    waiter = threading.Thread(target=lambda: taken.append(slots.acquire(timeout=0.05)))
    waiter.start()
    waiter.join(5)
    assert taken == [False]
    slots.release()
    # Nobody is left queued: the released slot is free, not handed to the thread that gave up.
    assert slots.acquire(timeout=0)
    assert not slots.acquire(timeout=0)


def test_admission_refuses_a_call_that_must_not_wait_when_every_slot_is_taken() -> None:
    admission = Admission(1)
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with admission.enter():
            entered.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(5)
    try:
        with waiting.no_waiting(), pytest.raises(waiting.WouldWait), admission.enter():
            pass
    finally:
        leave.set()
        holder.join(5)
    with waiting.no_waiting(), admission.enter() as slot:  # free again: no refusal
        assert slot == 0


@sqlite_only
def test_a_write_that_must_not_wait_is_refused_while_another_process_writes(
    shop: Shop, held_by_another_process: subprocess.Popen[str]
) -> None:
    started = time.monotonic()
    with waiting.no_waiting(), pytest.raises(waiting.WouldWait) as refused, shop.db.write() as s:
        s.execute(text("SELECT 1"))
    assert "writer" in refused.value.what and not refused.value.after_commit
    assert time.monotonic() - started < 2  # gave up after a few milliseconds, not the 30 s
    # A thread that may wait waits for the other process and then writes.
    _let_go(held_by_another_process, 0.2)
    with shop.db.write() as s:
        s.execute(text("SELECT 1"))


@sqlite_only
def test_the_writer_of_another_process_is_waited_for_up_to_the_limit(
    shop: Shop, held_by_another_process: subprocess.Popen[str]
) -> None:
    # With a limit the other process's lock is asked for again and again without blocking;
    # it is taken as soon as that process lets go.
    queue = WriterQueue(str(shop.db.engine.url.database) + "-writer.lock")
    assert not queue.acquire(timeout=0.05)
    _let_go(held_by_another_process, 0.2)
    assert queue.acquire(timeout=30)
    queue.release()


def test_after_its_commit_a_call_waits_for_the_database_as_usual(
    shop: Shop, scratch_table: str
) -> None:
    with waiting.no_waiting():
        assert waiting.lock_wait() == waiting.LOCK_WAIT
        with shop.db.read() as s:
            s.execute(text("SELECT 1"))
        assert waiting.lock_wait() == waiting.LOCK_WAIT  # a read commits nothing
        with shop.db.write() as s:
            s.execute(text("INSERT INTO t_scratch VALUES (1)"))
        assert waiting.lock_wait() is None
    assert waiting.lock_wait() is None
    assert _count(shop) == 1


def test_a_refused_transaction_is_rolled_back(shop: Shop, scratch_table: str) -> None:
    with waiting.no_waiting(), pytest.raises(waiting.WouldWait), shop.db.write() as s:
        s.execute(text("INSERT INTO t_scratch VALUES (1)"))
        waiting.check_network("a channel")  # as a channel's call inside the transaction would
    assert _count(shop) == 0


def test_the_network_is_refused_before_a_request_leaves() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        with waiting.no_waiting(), pytest.raises(waiting.WouldWait) as refused:
            opener().open(f"http://127.0.0.1:{port}/pay", timeout=2)
        assert "127.0.0.1" in refused.value.what
        with pytest.raises(TimeoutError):
            server.accept()  # nothing ever connected
    finally:
        server.close()


def test_reaching_for_the_network_after_a_commit_says_so(shop: Shop, scratch_table: str) -> None:
    with waiting.no_waiting():
        with shop.db.write() as s:
            s.execute(text("INSERT INTO t_scratch VALUES (1)"))
        with pytest.raises(waiting.WouldWait) as refused:
            waiting.check_network("a channel")
    assert refused.value.after_commit


def test_no_waiting_is_not_nested() -> None:
    with waiting.no_waiting(), pytest.raises(RuntimeError), waiting.no_waiting():
        pass
    assert waiting.lock_wait() is None


def test_a_read_is_kept_for_the_next_run_of_its_call_only() -> None:
    """`read_once` keeps what a call read in the dict its runs share (`no_waiting(reads=)`),
    and says whether it read just now: not kept outside such a run, nor what failed to be
    read, nor for another call's dict or another thing's read."""
    runs: list[str] = []

    def read(value: str) -> str:
        runs.append(value)
        return value

    assert [waiting.read_once("r", lambda: read("a")) for _ in range(2)] == [("a", True)] * 2
    assert runs == ["a", "a"]  # outside a call: read every time
    with waiting.no_waiting():
        waiting.read_once("r", lambda: read("b"))
        waiting.read_once("r", lambda: read("b"))
    assert runs[2:] == ["b", "b"]  # a call with nowhere to keep it: read every time
    kept: dict[Hashable, object] = {}
    got = []
    for n in range(2):  # the call's refused run, then its run again
        with waiting.no_waiting(reads=kept):
            got.append(waiting.read_once("r", lambda n=n: read(f"c{n}")))
    assert got == [("c0", True), ("c0", False)] and runs[4:] == ["c0"]

    def failing() -> str:
        runs.append("failed")
        raise ValueError("no such order")

    for _ in range(2):
        with waiting.no_waiting(reads=kept), pytest.raises(ValueError):
            waiting.read_once("f", failing)
    assert runs[5:] == ["failed", "failed"] and "f" not in kept
    with waiting.no_waiting(reads={}):  # another call
        assert waiting.read_once("r", lambda: read("d")) == ("d", True)
    with waiting.no_waiting(reads=kept):  # the same read, of something else
        assert waiting.read_once(("r", 2), lambda: read("e")) == ("e", True)
        assert waiting.read_once(("r", 3), lambda: read("f")) == ("f", True)
    body, other_body = {"sku": "A"}, {"sku": "A"}  # equal, but two requests' own
    for n, given in enumerate((body, body, other_body)):  # kept for the very object given
        with waiting.no_waiting(reads=kept):
            got.append(waiting.read_once("terms", lambda n=n: read(f"g{n}"), of=given))
    assert got[2:] == [("g0", True), ("g0", False), ("g2", True)]
