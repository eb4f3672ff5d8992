"""Calls that must not wait long: a thread asks every place where it could wait to refuse
instead.

A web server process answers all its connections from one event loop; while the loop waits on a
lock or on the network, every one of them waits. Handing each request's database work to a
worker thread avoids that, but costs more than many of the requests themselves (measured on the
purchase benchmark: half of a purchase's server CPU, decision 0010). So the loop runs such a
call itself under `no_waiting()`, and the places where a thread can wait ask first:

- admission to the database (`kernel.admission`) waits at most what `no_waiting()` was given
  (`lock_wait()`; `LOCK_WAIT`, 5 ms, unless told otherwise);
- SQLite's one writer is asked once, without waiting; a call refused for it says how to wait
  for it without blocking the loop (`WouldWait.ahead`, `WriterQueue.run_held`, decision 0015);
- SQLite's own lock, held by a writer that is not Kami's (the sqlite3 shell), is waited for
  `lock_wait()` too, in SQLite's busy handler (`db._Kept._limit_busy_wait`);
- PostgreSQL's row locks wait at most `ROW_LOCK_WAIT` (`row_lock_wait()`, see there);
- a payment channel's network call (`payments` transport) is never waited for.

Past that, they raise `WouldWait`, and the caller runs the call again from the start: on the loop
once SQLite's writer is had for it, else on a worker thread, where waiting harms nobody.

What a refused call read before it asked for the writer need not be read again: a read made
through `read_once` is kept for the call's next run on the loop, which then spends its hold of
the writer on writing (decision 0025).

Starting again is safe only if the refused call changed nothing. A call may therefore be
refused only until its first commit: after it, database waits are waited where the call is
(its work must finish where it started; the hot calls commit once and are done), and reaching
for the network is a programming error that `WouldWait` reports with `after_commit` set, so that
the caller does not run the call a second time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar, cast

T = TypeVar("T")


class WaitsOnLoop(Protocol):
    """What a refused call met, if the call can wait for it without blocking the event loop.

    `run_held(call, within, rank=, weight=)` runs `call` on the loop once it is held, and
    returns what `call` returns (or raises what it raises); if it was not had within `within`
    seconds, it raises WouldWait without having run `call`. `rank`: ahead of the calls waiting
    with a lower one. `weight`: how many calls `call` stands for."""

    async def run_held(
        self, call: Callable[[], T], within: float, *, rank: int = 0, weight: int = 1
    ) -> T: ...


class WouldWait(BaseException):
    """Raised under `no_waiting()` where the code would have had to wait.

    A BaseException, like GeneratorExit: it must pass every `except Exception` on its way out
    (an adapter that turns network failures into `Unavailable`, a flow that records a failure),
    so that only the caller that asked for it handles it. Transactions roll back on it.
    """

    def __init__(
        self, what: str, *, after_commit: bool = False, ahead: WaitsOnLoop | None = None
    ) -> None:
        super().__init__(what)
        self.what = what
        self.after_commit = after_commit
        self.ahead = ahead  # how to wait for it on the loop, if there is a way


LOCK_WAIT = 0.005  # seconds


class _State(threading.local):
    refusing = False
    committed = False
    lock_wait = LOCK_WAIT
    reads: dict[Hashable, Any] | None = None


_state = _State()


@contextmanager
def no_waiting(
    lock_wait: float = LOCK_WAIT, reads: dict[Hashable, Any] | None = None
) -> Iterator[None]:
    """Within the block, this thread refuses to wait (see the module's docstring), or to wait
    longer than `lock_wait` for a database lock. `reads`: where `read_once` keeps what the call
    read, the same dict for each run of one call (empty at its first)."""
    if _state.refusing:
        raise RuntimeError("no_waiting() is already in force on this thread")
    _state.refusing, _state.committed, _state.lock_wait = True, False, lock_wait
    _state.reads = reads
    try:
        yield
    finally:
        _state.refusing = _state.committed = False
        _state.reads = None


def read_once(what: Hashable, read: Callable[[], T], *, of: object = None) -> tuple[T, bool]:
    """`read()`, or what it returned in this call's refused run; and whether it was read just
    now. `what` names the read and what it is of (a notice, an order number), so that a call
    that reads twice, for two things, is never handed the first's; `of`, if given, is an input
    that cannot be named by value (a request body): the read is kept for that very object.

    For the reads a call makes before it asks for SQLite's writer: run again once the writer is
    had for it, the call would read them again while every other writer waits. Measured on the
    purchase benchmark, every checkout, payment and reveal was refused once, and read 75-111 µs
    of its work twice, the second time holding the writer (decision 0025). A kept read is as
    old as the wait, up to a second: the caller rechecks under the writer what must be current
    (a reveal, its order), or acts only on what does not change. Outside a call run under
    `no_waiting(..., reads)`, or if `read` raises, nothing is kept."""
    reads = _state.reads if _state.refusing else None
    if reads is None:
        return read(), True
    kept = reads.get(what)
    if kept is not None and kept[0] is of:  # kept with `of`, which keeps it alive: no id reuse
        return cast(T, kept[1]), False
    value = read()
    reads[what] = (of, value)
    return value, True


def lock_wait() -> float | None:
    """How long this thread may wait for a database lock: what `no_waiting()` said (LOCK_WAIT
    unless told otherwise) before a commit, else as long as it takes (None)."""
    return _state.lock_wait if _state.refusing and not _state.committed else None


ROW_LOCK_WAIT = 0.025  # seconds


def row_lock_wait() -> float | None:
    """How long this thread may wait for a PostgreSQL row lock: ROW_LOCK_WAIT while it refuses
    to wait and has not committed, else as long as it takes (None).

    One limit for every call that refuses, not each call's `lock_wait()`: the limit is a setting
    of the connection, changed with a round trip, and checkouts (5 ms) and notifications (25 ms)
    alternate on the same connections. Rows are locked for the length of a short transaction
    (a flash sale's quota, an order being paid), so the larger limit is rarely reached; it is
    there for the lock held by something slow."""
    return ROW_LOCK_WAIT if _state.refusing and not _state.committed else None


def committed() -> None:
    """Called by the database after a write transaction committed on this thread."""
    if _state.refusing:
        _state.committed = True


def check_network(what: str) -> None:
    """Called before a network call: under `no_waiting()` it raises WouldWait instead."""
    if _state.refusing:
        raise WouldWait(what, after_commit=_state.committed)
