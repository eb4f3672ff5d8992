"""The rate limits' counters when they live in this process: a `limits` storage with no thread.

`limits`' own MemoryStorage expires entries from a timer thread that runs 10 ms after the last
one ended, for as long as hits keep coming, and walks every key each time: under steady
traffic a process started about a hundred threads a second, each taking the interpreter from
the event loop for a walk that grows with the number of client addresses (measured, one
address hit in a loop: 14–17 µs of CPU per hit, against 4.4 µs here). Here a key's expired
entries are dropped when the key is next used, and every `SWEEP_EVERY` operations every key is
looked at once, so memory holds only the keys used within their window. The strategies, the
rules and Redis (for several processes) are still `limits`' own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from limits.storage import MovingWindowSupport, Storage

SWEEP_EVERY = 4096


class InProcessStorage(Storage, MovingWindowSupport):
    STORAGE_SCHEME = None  # built directly, never picked by URL

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._lock = threading.Lock()
        self._counters: dict[str, tuple[int, float]] = {}  # fixed windows: (count, ends at)
        self._windows: dict[str, tuple[deque[float], float]] = {}  # hit times, window length
        self._operations = 0

    @property
    def base_exceptions(self) -> type[Exception]:
        return ValueError

    # -- fixed windows ---------------------------------------------------------------------
    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = self._clock()
        with self._lock:
            self._tick(now)
            count, ends = self._counters.get(key, (0, now))
            if ends <= now:
                count, ends = 0, now + expiry
            self._counters[key] = (count + amount, ends)
            return count + amount

    def get(self, key: str) -> int:
        with self._lock:
            count, ends = self._counters.get(key, (0, 0.0))
        return count if ends > self._clock() else 0

    def get_expiry(self, key: str) -> float:
        now = self._clock()
        with self._lock:
            _, ends = self._counters.get(key, (0, now))
        return max(ends, now)

    # -- moving windows --------------------------------------------------------------------
    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self._clock()
        with self._lock:
            self._tick(now)
            hits, _ = self._windows.get(key) or (deque(), expiry)
            _forget_before(hits, now - expiry)
            if len(hits) + amount > limit:
                return False
            hits.extend([now] * amount)
            self._windows[key] = (hits, expiry)
            return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(when the oldest hit still in the window was made, hits in the window)."""
        now = self._clock()
        with self._lock:
            found = self._windows.get(key)
            if found is None:
                return now, 0
            hits = found[0]
            _forget_before(hits, now - expiry)
            return (hits[0], len(hits)) if hits else (now, 0)

    # -- housekeeping ----------------------------------------------------------------------
    def check(self) -> bool:
        return True

    def reset(self) -> int:
        with self._lock:
            gone = len(self._counters) + len(self._windows)
            self._counters.clear()
            self._windows.clear()
        return gone

    def clear(self, key: str) -> None:
        with self._lock:
            self._counters.pop(key, None)
            self._windows.pop(key, None)

    def keys(self) -> int:
        """How many keys are held (for tests and diagnostics)."""
        with self._lock:
            return len(self._counters) + len(self._windows)

    def _tick(self, now: float) -> None:
        """Called with the lock held: every SWEEP_EVERY operations, drop what has expired."""
        self._operations += 1
        if self._operations % SWEEP_EVERY:
            return
        for key in [k for k, (_, ends) in self._counters.items() if ends <= now]:
            del self._counters[key]
        for key in [k for k, (hits, length) in self._windows.items() if _idle(hits, now, length)]:
            del self._windows[key]


def _forget_before(hits: deque[float], start: float) -> None:
    while hits and hits[0] <= start:
        hits.popleft()


def _idle(hits: deque[float], now: float, length: float) -> bool:
    return not hits or hits[-1] <= now - length
