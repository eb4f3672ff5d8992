"""Rate limits on order creation and reveal, per client address (the `limits` library).

In memory by default (`ratelimit_memory`); with `KAMI_REDIS_URL` the counters live in Redis so
that every server process shares them. A refused request gets a 429 problem with `Retry-After`.

`hit` is for code on a worker thread. `hit_on_loop` is for the event loop: in memory it is the
same call (no I/O), with Redis it asks through an asyncio client, so the loop never waits on
the network; both count in the same window, under the same keys.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref

from limits import RateLimitItem, parse
from limits.aio.storage import Storage as LoopStorage
from limits.aio.strategies import MovingWindowRateLimiter as LoopRateLimiter
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from kami.kernel.errors import InvalidInput, KamiError
from kami.web.ratelimit_memory import InProcessStorage


class RateLimited(KamiError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, where="client")
        self.retry_after = retry_after


class RateLimits:
    def __init__(
        self, redis_url: str | None, rules: dict[str, str], namespace: str = "kami"
    ) -> None:
        storage = (
            storage_from_string(redis_url, key_prefix=namespace)
            if redis_url
            else InProcessStorage()
        )
        if not isinstance(storage, Storage):
            raise InvalidInput("KAMI_REDIS_URL must be a redis:// URL", where="KAMI_REDIS_URL")
        self._limiter = MovingWindowRateLimiter(storage)
        self._redis = (redis_url, namespace) if redis_url else None
        # An asyncio client belongs to the loop it was made on: one per loop (a process has one).
        self._loop_limiters: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, LoopRateLimiter
        ] = weakref.WeakKeyDictionary()
        self._rules: dict[str, RateLimitItem] = {}
        for name, text in rules.items():
            try:
                self._rules[name] = parse(text)
            except ValueError:
                raise InvalidInput(
                    f"{text!r} is not a rate like '30/minute'",
                    where=f"KAMI_RATE_LIMIT_{name.upper()}",
                ) from None

    def hit(self, name: str, key: str) -> None:
        rule = self._rules[name]
        if self._limiter.hit(rule, name, key):
            return
        raise _refused(name, self._limiter.get_window_stats(rule, name, key).reset_time)

    async def hit_on_loop(self, name: str, key: str) -> None:
        if self._redis is None:
            self.hit(name, key)  # in memory: nothing to wait for
            return
        limiter = self._loop_limiter(*self._redis)
        rule = self._rules[name]
        if await limiter.hit(rule, name, key):
            return
        raise _refused(name, (await limiter.get_window_stats(rule, name, key)).reset_time)

    def _loop_limiter(self, url: str, namespace: str) -> LoopRateLimiter:
        loop = asyncio.get_running_loop()
        limiter = self._loop_limiters.get(loop)
        if limiter is None:
            storage = storage_from_string(
                f"async+{url}", key_prefix=namespace, implementation="redispy"
            )
            if not isinstance(storage, LoopStorage):
                raise InvalidInput("KAMI_REDIS_URL must be a redis:// URL", where="KAMI_REDIS_URL")
            limiter = self._loop_limiters[loop] = LoopRateLimiter(storage)
        return limiter


def _refused(name: str, reset: float) -> RateLimited:
    retry = max(1, math.ceil(reset - time.time()))
    return RateLimited(f"too many {name} requests from this address; try again in {retry} s", retry)
