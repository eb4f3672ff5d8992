"""SQLite's one writer across threads and processes, and how calls on an event loop wait for
it without blocking the loop (decisions 0008, 0015)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine

from kami.kernel.admission import FairSlots
from kami.kernel.waiting import WouldWait

T = TypeVar("T")


class _Offer:
    """The writer offered to a loop for one batch: taken by the batch, or withdrawn by the
    thread that offered it (both decided under `WriterQueue._loop_calls`)."""

    __slots__ = ("taken", "withdrawn")

    def __init__(self) -> None:
        self.taken = threading.Event()
        self.withdrawn = False


def _comes_round(loop: asyncio.AbstractEventLoop) -> bool:
    """Wait until `loop` runs a callback; False if it is closed."""
    ran = threading.Event()
    try:
        loop.call_soon_threadsafe(ran.set)
    except RuntimeError:
        return False
    while not ran.wait(0.5):
        if loop.is_closed():
            return False
    return True


def _settle(done: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Give a waiting call its outcome, unless it has one. A StopIteration cannot travel
    through a future; like a coroutine, the caller gets a RuntimeError from it."""
    if done.done():
        return
    if ok:
        done.set_result(value)
    elif isinstance(value, StopIteration):
        error = RuntimeError("the call raised StopIteration")
        error.__cause__ = value
        done.set_exception(error)
    else:
        done.set_exception(value)


@dataclass(frozen=True, slots=True)
class _LoopCall:
    """A call waiting on an event loop for the writer (`WriterQueue.run_held`)."""

    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[Any]  # its outcome
    call: Callable[[], Any]
    rank: int
    caller: asyncio.Task[Any] | None
    weight: int = 1  # the calls it stands for (a group, decision 0023)

    def wanted(self) -> bool:
        """Not given up on: neither timed out nor its caller cancelled (a client that hung up;
        the cancellation may not have reached the caller yet)."""
        return not self.done.cancelled() and not (self.caller and self.caller.cancelling())


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
    # How long the writer is offered to a loop before the offer is withdrawn (see
    # `_wait_for_loops`); a loop under load takes it within a pass, a few milliseconds.
    HAND_OVER = 0.05

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

    async def run_held(
        self, call: Callable[[], T], within: float, *, rank: int = 0, weight: int = 1
    ) -> T:
        """On an event loop: run `call` there once this process has the writer, without
        blocking the loop meanwhile; WouldWait (and `call` not run) if not within `within` s.
        `rank`: ahead of the calls waiting with a lower rank, behind those of its own rank or
        higher (payment notifications go before checkouts, a flash sale's before both).
        `weight`: how many calls `call` stands for (a group of them), counted against
        LOOP_BATCH; a call heavier than that runs in a hold of its own.

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
            place = next(
                (n for n, c in enumerate(self._on_loops) if c.rank < rank), len(self._on_loops)
            )
            entry = _LoopCall(loop, done, call, rank, asyncio.current_task(), weight)
            self._on_loops.insert(place, entry)
            self._loop_calls.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(done), within)
        except TimeoutError:
            if self._withdraw(entry):  # not run, and now it never will be
                raise WouldWait("SQLite's writer stayed busy") from None
            return done.result()  # run in the same instant
        except asyncio.CancelledError:
            self._withdraw(entry)  # its caller went away (a client that hung up): not run
            raise

    def _withdraw(self, entry: _LoopCall) -> bool:
        """Take a call that was given up on out of the queue; False if it ran already."""
        with self._loop_calls, suppress(ValueError):
            self._on_loops.remove(entry)
        return entry.done.cancel()

    def _wait_for_loops(self) -> None:
        """The thread that waits for the writer on behalf of the loops' calls; it ends after
        IDLE_EXIT seconds without any, and the next `run_held` starts another.

        Having the writer, it offers it to the loop for HAND_OVER seconds. A loop that does not
        take it in that time may itself be waiting for the writer (code on the loop that writes
        outside `no_waiting()` waits for it in place): the offer is withdrawn and the writer let
        go, and it is asked for again once the loop has run a callback, so that a busy loop does
        not keep the writer from other processes."""
        while True:
            with self._loop_calls:
                if not self._loop_calls.wait_for(lambda: self._on_loops, self.IDLE_EXIT):
                    self._waiter_pid = 0
                    return
                loop = self._on_loops[0].loop
            self.acquire(None)
            with self._loop_calls:
                wanted = any(c.loop is loop for c in self._on_loops)
            offer = _Offer()
            if wanted:
                try:
                    loop.call_soon_threadsafe(self._run_batch, loop, offer)
                except RuntimeError:  # that loop is closed: its calls are gone with it
                    self._drop_loop(loop)
                    wanted = False
            if not wanted:  # they all gave up while the writer was waited for, or their loop closed
                self.release()
                continue
            if offer.taken.wait(self.HAND_OVER):
                continue  # the batch lets the writer go when it ends
            with self._loop_calls:
                offer.withdrawn = not offer.taken.is_set()
            if offer.withdrawn:
                self.release()
                if not _comes_round(loop):
                    self._drop_loop(loop)

    def _drop_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._loop_calls:
            kept = [c for c in self._on_loops if c.loop is not loop]
            self._on_loops.clear()
            self._on_loops.extend(kept)

    def _run_batch(self, loop: asyncio.AbstractEventLoop, offer: _Offer) -> None:
        """On `loop`, holding the writer: the calls waiting there, in order, then let it go.
        Each call's outcome is its caller's alone; calls not reached (a failure here) are
        refused, to run again on their own."""
        batch: list[_LoopCall] = []
        with self._loop_calls:
            if offer.withdrawn:
                return  # the writer went back; this loop's calls wait for the next offer
            offer.taken.set()
            rest: deque[_LoopCall] = deque()
            weight, full = 0, False
            for entry in self._on_loops:
                if entry.loop is loop and not entry.wanted():
                    entry.done.cancel()  # given up on: dropped, not counted
                    continue
                mine = entry.loop is loop and not full
                if mine and batch and weight + entry.weight > self.LOOP_BATCH:
                    mine, full = False, True  # the rest of this loop's calls wait, in order
                if mine:
                    weight += entry.weight
                (batch if mine else rest).append(entry)
            self._on_loops = rest
        self._holder = threading.get_ident()
        try:
            for entry in batch:  # given-up calls were dropped above, and none can give up now
                try:
                    _settle(entry.done, True, entry.call())
                except BaseException as exc:  # the caller's, to raise where it waits
                    _settle(entry.done, False, exc)
        finally:
            self._holder = None
            self.release()
            for entry in batch:  # not reached: nothing of them ran
                _settle(entry.done, False, WouldWait("the batch it waited in was cut short"))

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
