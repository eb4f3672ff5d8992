"""Who may run a transaction when: first come first served slots, SQLite's one writer across
threads and processes, and the per-process admission of transactions (decisions 0008, 0010)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine

from kami.kernel import waiting
from kami.kernel.errors import InvalidInput
from kami.kernel.waiting import WouldWait

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _LoopCall:
    """A call waiting on an event loop for the writer (`WriterQueue.run_held`)."""

    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[Any]  # its outcome
    call: Callable[[], Any]
    first: bool
    caller: asyncio.Task[Any] | None

    def wanted(self) -> bool:
        """Not given up on: neither timed out nor its caller cancelled (a client that hung up;
        the cancellation may not have reached the caller yet)."""
        return not self.done.cancelled() and not (self.caller and self.caller.cancelling())


class FairSlots:
    """A semaphore that serves its waiters in arrival order.

    `threading.Semaphore` and `Lock` wake an arbitrary waiter, and a thread that releases and
    asks again at once usually wins: under load a few requests wait for seconds while others
    pass (measured on the purchase bench, PostgreSQL: checkout p99 1.17 s with a plain
    semaphore, 0.70 s first come first served). Here a released slot goes to the longest waiter.
    """

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._guard = threading.Lock()
        self._waiting: deque[threading.Lock] = deque()

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait for a slot, at most `timeout` seconds if given; whether one was taken."""
        with self._guard:
            if self._free and not self._waiting:
                self._free -= 1
                return True
            if timeout is not None and timeout <= 0:
                return False
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        # Released by the release() that hands this thread its slot.
        if turn.acquire(timeout=-1 if timeout is None else timeout):
            return True
        with self._guard:
            try:
                self._waiting.remove(turn)  # still queued: leave the queue empty-handed
            except ValueError:
                turn.acquire()  # handed the slot just as the wait ended: it is ours (no wait)
                return True
        return False

    def release(self) -> None:
        with self._guard:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._free += 1


class WriterQueue:
    """One SQLite writer at a time, handed over at once, across threads and processes.

    SQLite allows one writer. Left to its busy handler, waiting writers poll with sleeps of up
    to 100 ms (measured: 16 writer threads got a tenth of one thread's rate, and two server
    processes put a 1.7 s p99 on every write request). So this process's writers queue on a
    lock, and the one at its head waits for the other processes' writer on an exclusive
    `flock` of a file beside the database, which the kernel hands over the moment it is
    released (and releases by itself if its holder dies). Writers that are not Kami's (the
    sqlite3 shell, a migration) still meet SQLite's own lock and busy timeout.

    A call on an event loop does not wait in either queue: it asks once, and if refused waits
    in `run_held` without blocking the loop (decision 0015).
    """

    # Calls run on an event loop in one hold of the writer at most (`run_held`): 8 kept the
    # purchase bench's notification p99 at 34 ms; 16 and 32 ran it up to 97 and 126 ms, as the
    # other process's calls waited for a longer hold. And how long the thread that waits for
    # the writer on the loops' behalf stays without any calls before it ends.
    LOOP_BATCH = 8
    IDLE_EXIT = 30.0

    def __init__(self, lock_path: str | None) -> None:
        self._threads = FairSlots(1)
        self._path = lock_path
        self._fd: int | None = None
        self._pid = 0
        # Calls waiting on event loops (`run_held`), in arrival order, and the process's thread
        # that waits for the writer on their behalf.
        self._on_loops: deque[_LoopCall] = deque()
        self._loop_calls = threading.Condition()
        self._waiter_pid = 0
        self._holder: int | None = None  # the loop's thread while it runs a batch of them

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked child opens its own
            self._fd = os.open(self._path or "", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def acquire(self, timeout: float | None = None) -> bool:
        """Become the writer, waiting at most `timeout` seconds if given; whether it did.

        The other processes' writer is waited for on the flock, which has no time limit of
        its own: with a limit, it is asked again and again without blocking until the limit
        passes (a write transaction lasts a fraction of a millisecond)."""
        if self._holder is not None and self._holder == threading.get_ident():
            return True  # a call of a batch that this thread runs holding the writer
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._threads.acquire(timeout):
            return False
        if self._path is None:
            return True
        try:
            if deadline is None:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
                return True
            pause = 0.00002
            while True:
                try:
                    fcntl.flock(self._file(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() + pause > deadline:
                        break
                    time.sleep(pause)
                    pause = min(pause * 2, 0.0005)
        except BaseException:
            self._threads.release()
            raise
        self._threads.release()
        return False

    async def run_held(self, call: Callable[[], T], within: float, *, first: bool = False) -> T:
        """On an event loop: run `call` there once this process has the writer, without
        blocking the loop meanwhile; WouldWait (and `call` not run) if not within `within` s.
        `first`: ahead of the calls waiting without it (payment notifications).

        A call on the loop that finds the writer busy is refused at once (it asks with no
        wait) and waits here while the loop answers other requests. Waiting on the loop
        itself, as before, left each of two server processes blocked for a third of its time
        while the other one wrote (measured with py-spy on the flash sale). A thread of this
        process waits for the writer, in arrival order with the process's other writers, and
        the loop then runs every call waiting there (LOOP_BATCH at most) in one hold of it:
        handing the writer over for each call cost more than the call."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        with self._loop_calls:
            if self._waiter_pid != os.getpid():  # the first such call of this process
                self._waiter_pid = os.getpid()
                self._on_loops.clear()
                threading.Thread(
                    target=self._wait_for_loops, name="kami-writer", daemon=True
                ).start()
            place = len(self._on_loops)
            if first:  # behind the other calls that go first, ahead of the rest
                place = next((n for n, c in enumerate(self._on_loops) if not c.first), place)
            entry = _LoopCall(loop, done, call, first, asyncio.current_task())
            self._on_loops.insert(place, entry)
            self._loop_calls.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(done), within)
        except TimeoutError:
            if done.cancel():  # not run, and now it never will be
                raise WouldWait("SQLite's writer stayed busy") from None
            return done.result()  # run in the same instant
        except asyncio.CancelledError:
            done.cancel()  # its caller went away (a client that hung up): it is not run
            raise

    def _wait_for_loops(self) -> None:
        """The thread that waits for the writer on behalf of the loops' calls; it ends after
        IDLE_EXIT seconds without any, and the next `run_held` starts another."""
        while True:
            with self._loop_calls:
                if not self._loop_calls.wait_for(lambda: self._on_loops, self.IDLE_EXIT):
                    self._waiter_pid = 0
                    return
                loop = self._on_loops[0].loop
            self.acquire(None)
            started = threading.Event()
            with suppress(RuntimeError):  # a closed loop takes no more callbacks
                loop.call_soon_threadsafe(self._run_batch, loop, started)
                # The batch lets the writer go when it ends. A loop closed before it ran the
                # batch never will: its calls are gone with it, and the writer is let go here.
                while not started.wait(0.5):
                    if loop.is_closed():
                        break
                else:
                    continue
            with self._loop_calls:
                kept = [c for c in self._on_loops if c.loop is not loop]
                self._on_loops.clear()
                self._on_loops.extend(kept)
            self.release()

    def _run_batch(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        """On `loop`, holding the writer: the calls waiting there, in order, then let it go."""
        started.set()
        with self._loop_calls:
            batch: list[_LoopCall] = []
            rest: deque[_LoopCall] = deque()
            for entry in self._on_loops:
                mine = entry.loop is loop and len(batch) < self.LOOP_BATCH
                (batch if mine else rest).append(entry)
            self._on_loops = rest
        self._holder = threading.get_ident()
        try:
            for entry in batch:
                if not entry.wanted():
                    continue
                try:
                    result = entry.call()
                except BaseException as exc:  # the caller's, to raise where it waits
                    entry.done.set_exception(exc)
                else:
                    entry.done.set_result(result)
        finally:
            self._holder = None
            self.release()

    def release(self) -> None:
        if self._holder is not None and self._holder == threading.get_ident():
            return  # the batch lets it go when it ends
        try:
            if self._path is not None and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


def writer_queue(engine: Engine) -> WriterQueue | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if database in (None, "", ":memory:") or str(database).startswith("file:"):
        return WriterQueue(None)  # one process only: the thread lock is enough
    return WriterQueue(os.path.abspath(str(database)) + "-writer.lock")


class Admission:
    """At most `limit` transactions of this process run at once; the rest wait their turn.

    A Python process runs one thread at a time. Forty threads inside forty transactions do not
    get forty times the work done: each holds its connection, row locks (and on SQLite perhaps
    the writer) while it waits for the interpreter, so every transaction takes longer and holds
    more (measured on the purchase bench on PostgreSQL: 24 connections idle in transaction on
    average; with four at a time per process, 5). Threads that wait here hold nothing. Threads that
    wait on the network (a payment channel, a supplier) are not counted: only transactions are.

    Nested transactions of one thread pass (the outer one already counts), so a thread never
    waits for itself. SQLite's writer does not count either: it is one at a time already, and
    must never wait for readers that may themselves be waiting for it.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise InvalidInput("must be at least 1", where="KAMI_DB_CONCURRENCY")
        self.limit = limit
        self._slots = FairSlots(limit)
        self._free = list(range(limit))  # slot numbers; only holders of a slot touch it
        self._guard = threading.Lock()
        self._local = threading.local()

    @contextmanager
    def enter(self, counted: bool = True) -> Iterator[int | None]:
        """Yields the slot's number (0 … limit-1), or None for a pass (nested, not counted)."""
        depth: int = getattr(self._local, "depth", 0)
        slot: int | None = None
        if counted and depth == 0:
            if not self._slots.acquire(waiting.lock_wait()):
                raise WouldWait("every database slot of this process is in use")
            with self._guard:
                slot = self._free.pop()
        self._local.depth = depth + 1
        try:
            yield slot
        finally:
            self._local.depth = depth
            if slot is not None:
                with self._guard:
                    self._free.append(slot)
                self._slots.release()
