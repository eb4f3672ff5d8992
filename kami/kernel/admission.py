"""Who may run a transaction when: first come first served slots, SQLite's one writer across
threads and processes, and the per-process admission of transactions (decisions 0008, 0010)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from kami.kernel import waiting
from kami.kernel.errors import InvalidInput
from kami.kernel.waiting import WouldWait


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
    """

    def __init__(self, lock_path: str | None) -> None:
        self._threads = FairSlots(1)
        self._path = lock_path
        self._fd: int | None = None
        self._pid = 0

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

    def release(self) -> None:
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
