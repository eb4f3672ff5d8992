"""Who may run a transaction when: first come first served slots, and the per-process
admission of transactions (decisions 0008, 0010). SQLite's one writer is `kernel.writer`'s."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

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
