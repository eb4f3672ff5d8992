"""Calls run together: a flash sale's checkouts of one SKU (decision 0020) and its payment
notifications (decision 0022) that reach the event loop in the same pass run as one call, each
caller getting its own outcome; on SQLite a group that finds the writer busy waits for it as one
call (decision 0023). Where and in what order single calls run is `web.running`'s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar, cast

from kami.kernel import waiting
from kami.web import running

Item = TypeVar("Item")
R = TypeVar("R")

log = logging.getLogger(__name__)

# A group's call (`run_together`): the items in the order they joined, to an outcome for each
# (a value, an exception to raise, or None: run alone).
Together = Callable[[list[Item]], Sequence[R | BaseException | None]]


async def run_together(
    key: Hashable,
    item: Item,
    together: Together[Item, R],
    alone: Callable[[], Awaitable[R]],
    *,
    most: int,
) -> R:
    """For a flash sale's checkout (decision 0020): the calls with the same `key` that join in
    the same pass of the event loop run as one call of `together` on the loop, in the order
    they joined, and each gets its own outcome from it (a value, or an exception to raise).
    Each call whose outcome is None runs `alone` instead; so do all of them when `together`
    would wait for a lock, or fails. A group holds `most` calls at most; the next to join
    starts another. As `running.run_first`, without a turn."""
    running.turns().storm()
    return await _joined(key, item, together, alone, most, running.FLASH)


async def run_payment_together(
    key: Hashable,
    item: Item,
    together: Together[Item, R],
    alone: Callable[[], Awaitable[R]],
    *,
    most: int,
) -> R:
    """As `running.run_payment`, for payment notifications while a flash sale is selling on
    this loop (decision 0022): each takes its turn, and those whose turns come in the same pass
    of the event loop run as one call of `together`. Outside a sale it is `alone()` at once: a
    notification gathered for a pass waited a pass longer (measured on the purchase benchmark:
    notify p50 4–5 ms became 10 ms), and few arrive together. `alone` takes no turn
    (`running.run_now`)."""
    mine = running.turns()
    if not mine.storming():
        return await alone()
    await mine.take(running.PAYMENT)
    return await _joined(key, item, together, alone, most, running.PAYMENT)


async def _joined(
    key: Hashable,
    item: Item,
    together: Together[Item, R],
    alone: Callable[[], Awaitable[R]],
    most: int,
    rank: int,
) -> R:
    outcome = await _gathering().join(key, item, together, most, rank)
    if outcome is _ALONE:
        return await alone()
    if outcome is _ALONE_WAITED:
        # Its group waited `running.WRITER_WAIT` for the writer already: if this call alone
        # would wait for it too, it does so on a worker thread at once, not on the loop again.
        waited = running.WAITED_FOR_WRITER.set(True)
        try:
            return await alone()
        finally:
            running.WAITED_FOR_WRITER.reset(waited)
    if isinstance(outcome, BaseException):
        raise outcome
    return cast(R, outcome)


_ALONE = object()
_ALONE_WAITED = object()  # alone, after its group waited for SQLite's writer in vain


class _Gathering:
    """The groups of `run_together` forming on one event loop. A group runs in the pass after
    its first call joined, so every call that joins meanwhile runs with it.

    A group that finds SQLite's writer busy waits for it as one call (`WriterQueue.run_held`,
    at its calls' rank), while the loop goes on with other requests, and runs when the writer
    is had for it. Split into calls each waiting alone, as before, a group on SQLite was
    placed together only when the other process happened not to be writing; together, a
    flash sale's checkout cost a fifth of one placed alone (decision 0023). When it runs, it
    runs for the calls whose callers still wait (`_GroupRun`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._open: dict[Hashable, list[tuple[Any, asyncio.Future[Any]]]] = {}
        self._held: set[asyncio.Task[None]] = set()  # groups waiting for the writer

    def join(
        self, key: Hashable, item: Any, together: Callable[[list[Any]], Any], most: int, rank: int
    ) -> asyncio.Future[Any]:
        joined: asyncio.Future[Any] = self._loop.create_future()
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = []
            self._loop.call_soon(self._run, key, group, together, rank)
        group.append((item, joined))
        if len(group) >= most:
            del self._open[key]  # full: it runs as it is, and the next call starts another
        return joined

    def _run(
        self,
        key: Hashable,
        group: list[tuple[Any, asyncio.Future[Any]]],
        together: Callable[[list[Any]], Any],
        rank: int,
    ) -> None:
        if self._open.get(key) is group:
            del self._open[key]
        run = _GroupRun(group, together)
        try:
            run()
        except waiting.WouldWait as refused:
            if refused.ahead is not None and not refused.after_commit:
                held = self._loop.create_task(self._run_held(refused.ahead, run, rank))
                self._held.add(held)
                held.add_done_callback(self._held.discard)
                return
            run.refused(refused)
        except Exception as exc:
            run.failed(exc)
        run.settle()

    async def _run_held(self, ahead: waiting.WaitsOnLoop, run: _GroupRun, rank: int) -> None:
        try:
            await ahead.run_held(run, running.WRITER_WAIT, rank=rank, weight=len(run.members))
        except waiting.WouldWait as refused:
            run.refused(refused, waited=True)
        except Exception as exc:
            run.failed(exc)
        finally:  # whatever ended the wait (the loop shutting down too), nobody is left waiting
            run.settle()


class _GroupRun:
    """One group's call, and what each of its calls is answered: its outcome from the call,
    or None (run alone), or, if the call cannot be run again, the error that says so.

    The members are the calls whose callers still wait when the call runs: one that went away
    while its group waited for the writer is left out, as a single call that gave up waiting
    is not run (`_LoopCall.wanted`)."""

    def __init__(
        self, group: list[tuple[Any, asyncio.Future[Any]]], together: Callable[[list[Any]], Any]
    ) -> None:
        self._group = group
        self._together = together
        self.members: list[tuple[Any, asyncio.Future[Any]]] = []
        self._outcomes: list[Any] | None = None
        self._error: str | None = None
        self._alone: object = _ALONE  # what a call to be run alone is answered

    def __call__(self) -> None:
        self.members = [(item, joined) for item, joined in self._group if not joined.done()]
        self._outcomes = None
        if len(self.members) < 2:
            return  # each on its own
        with waiting.no_waiting(running.PAYMENT_LOCK_WAIT):
            self._outcomes = list(self._together([item for item, _ in self.members]))

    def refused(self, refused: waiting.WouldWait, *, waited: bool = False) -> None:
        """Refused for a wait: each call runs alone, where it may wait; but not if the group
        reached for it after its commit, which a run of each again would repeat. `waited`: the
        group waited for SQLite's writer and did not get it (or its run there was refused), so
        a call alone that would wait for the writer waits on a worker thread at once
        (`_ALONE_WAITED`): it has waited `running.WRITER_WAIT` on the loop already, and waiting
        there again, as before, took up to twice that before a thread was tried."""
        if waited:
            self._alone = _ALONE_WAITED
        if refused.after_commit:
            self._error = (
                f"{getattr(self._together, '__qualname__', 'a group')} reached for "
                f"{refused.what} after it committed, so it cannot run again"
            )

    def failed(self, exc: Exception) -> None:
        # By its type only, as a failure that leaves the app (invariant 5): a payment
        # notification's error may quote what the channel sent.
        log.error("calls run together failed (%s); each runs alone", type(exc).__name__)

    def settle(self) -> None:
        outcomes = self._outcomes
        if outcomes is not None and len(outcomes) != len(self.members):
            log.error(
                "calls run together gave %d outcomes for %d; each runs alone",
                len(outcomes),
                len(self.members),
            )
            outcomes = None
        for n, (_, joined) in enumerate(self.members):
            if joined.done():  # its caller went away meanwhile
                continue
            outcome = None if outcomes is None else outcomes[n]
            if self._error is not None:
                joined.set_exception(RuntimeError(self._error))
            elif isinstance(outcome, BaseException):
                joined.set_exception(outcome)
            else:
                joined.set_result(self._alone if outcome is None else outcome)


def _gathering() -> _Gathering:
    return running.of_loop(_Gathering)
