"""Rate limits on order creation and reveal, per client address (the `limits` library).

In memory by default; with `KAMI_REDIS_URL` the counters live in Redis so that every server
process shares them. A refused request gets a 429 problem with `Retry-After`.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from kami.kernel.errors import InvalidInput, KamiError


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
            storage_from_string(redis_url, key_prefix=namespace) if redis_url else MemoryStorage()
        )
        if not isinstance(storage, Storage):
            raise InvalidInput("KAMI_REDIS_URL must be a redis:// URL", where="KAMI_REDIS_URL")
        self._limiter = MovingWindowRateLimiter(storage)
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
        reset = self._limiter.get_window_stats(rule, name, key).reset_time
        retry = max(1, math.ceil(reset - time.time()))
        raise RateLimited(
            f"too many {name} requests from this address; try again in {retry} s", retry
        )
