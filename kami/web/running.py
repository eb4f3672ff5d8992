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

In what order (decisions 0010, 0018): a payment notification first. A paid buyer waits for
their key and the channel for its answer, and a channel that times out sends again; a new
checkout can wait a moment. So `run` takes turns, one call per pass of the event loop, and
between two turns the loop reads what has arrived: a notification (`run_payment`) does not take a
turn and runs as soon as it is read, ahead of every checkout and reveal already waiting, and it
goes ahead of them in the queue for SQLite's writer too.

Except during a flash sale. There a checkout is the buyer asking "did I get one?", thousands of
them in the same second, and the answer is what the sale promises; the payments of those who
won follow seconds later in life, and wait a few hundred milliseconds without harm. So a flash
sale's checkout (`run_first`) takes no turn and goes first in the writer's queue, and for a
moment after one (STORM) the notifications on that loop take turns of their own,
PAYMENTS_PER_PASS per pass, still ahead of every other call.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar, cast

from starlette.concurrency import run_in_threadpool

from kami.kernel import waiting

P = ParamSpec("P")
T = TypeVar("T")


# Set while a call runs whose group waited for SQLite's writer in vain (`groups._joined`).
WAITED_FOR_WRITER: ContextVar[bool] = ContextVar("kami_waited_for_writer", default=False)

# Ranks in SQLite's writer queue (`WriterQueue.run_held`): a higher one goes first.
OTHER, PAYMENT, FLASH = 0, 1, 2


async def run(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)` when its turn comes, on the loop if it needs no waiting.

    `fn` must be safe to start again after a refusal: everything it does before its first
    commit must be undone by the rollback (no counters bumped, no mail sent).
    """
    await turns().take(OTHER)
    return await _run(waiting.LOCK_WAIT, OTHER, fn, *args, **kwargs)


async def run_payment(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """As `run`, for a payment notification: without taking a turn, unless a flash sale is
    selling on this loop (then with a turn ahead of every other call's), and ahead of the
    checkouts and reveals in SQLite's writer queue.

    It also waits longer for a database slot or SQLite's lock held by a writer that is not
    Kami's before it is refused (PAYMENT_LOCK_WAIT): a payment sent to a worker thread waits
    there for the interpreter, and those were the slowest hundredth of notifications (measured:
    1.2 % of them refused at 5 ms, SQLite). For SQLite's own writer it goes ahead of the other
    calls waiting in the writer's queue instead (decision 0015)."""
    mine = turns()
    if mine.storming():
        await mine.take(PAYMENT)
    return await _run(PAYMENT_LOCK_WAIT, PAYMENT, fn, *args, **kwargs)


async def run_first(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """As `run`, for a flash sale's checkout: without a turn, first in SQLite's writer queue,
    and for STORM seconds after it the payments on this loop take turns (decision 0018)."""
    turns().storm()
    return await _run(PAYMENT_LOCK_WAIT, FLASH, fn, *args, **kwargs)


def flash_sale_answered() -> None:
    """A flash sale's checkout was answered without running (from memory, decision 0024): the
    sale is still busy on this loop, so for STORM seconds its payments take turns and are
    gathered, as after any of its checkouts (decisions 0018, 0022)."""
    turns().storm()


async def run_now(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """As `run_payment`, never with a turn: for the short second step of a request that has had
    its turn (asking the channel for a new order's payment instruction), which would otherwise
    queue a second time behind every waiting request."""
    return await _run(PAYMENT_LOCK_WAIT, PAYMENT, fn, *args, **kwargs)


PAYMENT_LOCK_WAIT = 0.025

# How long after a flash sale's checkout the payments on its loop take turns, and how many of
# them one pass of the loop lets run (decision 0018).
STORM = 1.0
PAYMENTS_PER_PASS = 8


# How long a call refused on the loop for SQLite's writer waits there for it (`WriterQueue.
# run_held`) before it runs on a worker thread instead.
WRITER_WAIT = 1.0


async def _run(
    lock_wait: float, rank: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    reads: dict[Hashable, Any] = {}  # its refused run's reads, for the next (`waiting.read_once`)

    def call() -> T:
        with waiting.no_waiting(lock_wait, reads):
            return fn(*args, **kwargs)

    try:
        return call()
    except waiting.WouldWait as refused:
        _not_after_commit(fn, refused)
        ahead = refused.ahead
    if ahead is not None and not WAITED_FOR_WRITER.get():
        try:
            return await ahead.run_held(call, WRITER_WAIT, rank=rank)
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
    """Calls waiting for their turn on one event loop, first come first served within their
    kind. Each pass of the loop releases one call of the others' queue and up to
    PAYMENTS_PER_PASS of the payments' (which have one only during a flash sale). A call
    released now runs in the next pass, after the loop has read its sockets and started what
    arrived; the next release is queued behind it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: dict[int, deque[asyncio.Future[None]]] = {PAYMENT: deque(), OTHER: deque()}
        self._pumping = False
        self._storm_until = 0.0

    def storm(self) -> None:
        self._storm_until = self._loop.time() + STORM

    def storming(self) -> bool:
        return self._loop.time() < self._storm_until

    def take(self, kind: int) -> asyncio.Future[None]:
        turn = self._loop.create_future()
        self._waiting[kind].append(turn)
        if not self._pumping:
            self._pumping = True
            self._loop.call_soon(self._pump)
        return turn

    def _pump(self) -> None:
        _release(self._waiting[PAYMENT], PAYMENTS_PER_PASS)
        _release(self._waiting[OTHER], 1)
        if any(self._waiting.values()):
            self._loop.call_soon(self._pump)
        else:
            self._pumping = False


def _release(waiting: deque[asyncio.Future[None]], count: int) -> None:
    while waiting and count:
        turn = waiting.popleft()
        if not turn.done():  # done: cancelled, its client went away
            turn.set_result(None)
            count -= 1


def turns() -> _Turns:
    return of_loop(_Turns)


# Per running event loop, one of each kind (`_Turns`, `groups._Gathering`), gone with its loop.
_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, Any]] = (
    weakref.WeakKeyDictionary()
)
L = TypeVar("L")


def of_loop(kind: Callable[[asyncio.AbstractEventLoop], L]) -> L:
    loop = asyncio.get_running_loop()
    mine = _by_loop.get(loop)
    if mine is None:  # setdefault would build a dict and a weak reference on every call
        mine = _by_loop[loop] = {}
    found = mine.get(kind)
    if found is None:
        found = mine[kind] = kind(loop)
    return cast(L, found)
