"""Where a request's blocking work runs, and in what order (decisions 0010, 0015).

Where: on the event loop itself when nothing would make it wait, on a worker thread otherwise.
The hot requests (checkout, payment notification, reveal) spend well under a millisecond in the
database. Handing that work to the thread pool and back cost more than the work: two switches
between threads, and each thread then waiting its turn for the interpreter (measured on the
purchase benchmark, SQLite: 6.3 ms of server CPU per purchase through the thread pool, 3.4 ms on
the loop). So the loop runs the call itself under `kernel.waiting.no_waiting()`. If the call
finds SQLite's writer busy, it is refused before it has changed anything and waits, while the
loop answers other requests, until the writer is had for it; then the loop runs it again from
the start (`WriterQueue.run_held`). If it meets another lock held for more than a few
milliseconds, waits for the writer longer than WRITER_WAIT, or would reach for the network, it
runs again from the start on a worker thread.

In what order: a payment notification first. A paid buyer waits for their key and the channel
for its answer, and a channel that times out sends again; a new checkout can wait a moment. So
`run` takes turns, one call per pass of the event loop, and between two turns the loop reads
what has arrived: a notification (`run_now`) does not take a turn and runs as soon as it is
read, ahead of every checkout and reveal already waiting, and it goes ahead of them in the
queue for SQLite's writer too.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from kami.kernel import waiting

P = ParamSpec("P")
T = TypeVar("T")


async def run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` when its turn comes, on the loop if it needs no waiting.

    `fn` must be safe to start again after a refusal: everything it does before its first
    commit must be undone by the rollback (no counters bumped, no mail sent).
    """
    await _turns().take()
    return await _run(waiting.LOCK_WAIT, False, fn, *args, **kwargs)


async def run_now(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """As `run`, without taking a turn: for payment notifications, and for the short second
    step of a request that has had its turn (asking the channel for a new order's payment
    instruction), which would otherwise queue a second time behind every waiting request.

    It also waits longer for a database slot or SQLite's lock held by a writer that is not
    Kami's before it is refused (PAYMENT_LOCK_WAIT): a payment sent to a worker thread waits
    there for the interpreter, and those were the slowest hundredth of notifications (measured:
    1.2 % of them refused at 5 ms, SQLite). For SQLite's own writer it goes ahead of the other
    calls waiting in the writer's queue instead (decision 0015)."""
    return await _run(PAYMENT_LOCK_WAIT, True, fn, *args, **kwargs)


PAYMENT_LOCK_WAIT = 0.025


# How long a call refused on the loop for SQLite's writer waits there for it (`WriterQueue.
# run_held`) before it runs on a worker thread instead.
WRITER_WAIT = 1.0


async def _run(
    lock_wait: float, first: bool, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    def call() -> T:
        with waiting.no_waiting(lock_wait):
            return fn(*args, **kwargs)

    try:
        return call()
    except waiting.WouldWait as refused:
        _not_after_commit(fn, refused)
        ahead = refused.ahead
    if ahead is not None:
        try:
            return await ahead.run_held(call, WRITER_WAIT, first=first)
        except waiting.WouldWait as refused:
            _not_after_commit(fn, refused)
    return await run_in_threadpool(fn, *args, **kwargs)


def _not_after_commit(fn: Callable[..., object], refused: waiting.WouldWait) -> None:
    if refused.after_commit:
        raise RuntimeError(
            f"{getattr(fn, '__qualname__', fn)} reached for {refused.what} after it "
            "committed, so it cannot run again: reach for the network before the commit, "
            "or in a call of its own"
        ) from None


class _Turns:
    """Calls waiting for their turn on one event loop, first come first served, one released
    per pass of the loop. A call released now runs in the next pass, after the loop has read
    its sockets and started what arrived; the release of the next call is queued behind it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._pumping = False

    def take(self) -> asyncio.Future[None]:
        turn = self._loop.create_future()
        self._waiting.append(turn)
        if not self._pumping:
            self._pumping = True
            self._loop.call_soon(self._pump)
        return turn

    def _pump(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # done: cancelled, its client went away
                turn.set_result(None)
                break
        if self._waiting:
            self._loop.call_soon(self._pump)
        else:
            self._pumping = False


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Turns] = weakref.WeakKeyDictionary()


def _turns() -> _Turns:
    loop = asyncio.get_running_loop()
    turns = _by_loop.get(loop)
    if turns is None:
        turns = _by_loop[loop] = _Turns(loop)
    return turns
