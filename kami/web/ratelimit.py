"""Rate limits on order creation and reveal, per client address (the `limits` library).

In memory by default (`ratelimit_memory`); with `KAMI_REDIS_URL` the counters live in Redis so
that every server process shares them. A refused request gets a 429 problem with `Retry-After`.

`hit` is for code on a worker thread. `hit_on_loop` is for the event loop: in memory it is the
same call (no I/O), with Redis it asks through an asyncio client, so the loop never waits on
the network; both count in the same window, under the same keys.

If Redis does not answer (down, unreachable, slower than `REDIS_TIMEOUT`), the shop keeps
selling: the limits are counted in this process instead, as without Redis, until Redis is asked
again `REDIS_RETRY` seconds later, and the outage and the recovery are logged once each. A rate
limit is a guard against floods, not the authority on stock or caps (the database is), and a
checkout refused because a counter store was away would make a Redis outage a shop outage.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref

import redis
from limits import RateLimitItem, parse
from limits.aio.storage import Storage as LoopStorage
from limits.aio.strategies import MovingWindowRateLimiter as LoopRateLimiter
from limits.errors import StorageError
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


log = logging.getLogger("kami.ratelimit")

REDIS_TIMEOUT = 0.5  # seconds to connect to Redis, and for each answer
REDIS_RETRY = 5.0  # seconds of counting in process after Redis failed, before asking it again
# Passed to the Redis client: its failures arrive as limits' StorageError, and none waits long.
_REDIS_OPTIONS = {
    "wrap_exceptions": True,
    "socket_timeout": REDIS_TIMEOUT,
    "socket_connect_timeout": REDIS_TIMEOUT,
}


class RateLimits:
    def __init__(
        self, redis_url: str | None, rules: dict[str, str], namespace: str = "kami"
    ) -> None:
        storage = (
            storage_from_string(redis_url, key_prefix=namespace, **_REDIS_OPTIONS)
            if redis_url
            else InProcessStorage()
        )
        if not isinstance(storage, Storage):
            raise InvalidInput("KAMI_REDIS_URL must be a redis:// URL", where="KAMI_REDIS_URL")
        self._limiter = MovingWindowRateLimiter(storage)
        self._redis = (redis_url, namespace) if redis_url else None
        # Where the limits are counted while Redis does not answer; None without Redis.
        self._local = MovingWindowRateLimiter(InProcessStorage()) if redis_url else None
        self._redis_away_until = 0.0  # time.monotonic() until which Redis is not asked
        if redis_url:
            self._first_contact(storage)
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
        if self._local is not None and not self._redis_answers():
            self._hit_locally(rule, name, key)
            return
        try:
            if self._limiter.hit(rule, name, key):
                self._redis_back()
                return
            reset = self._limiter.get_window_stats(rule, name, key).reset_time
        except StorageError as exc:
            self._redis_failed(exc)
            self._hit_locally(rule, name, key)
            return
        raise _refused(name, reset)

    async def hit_on_loop(self, name: str, key: str) -> None:
        if self._redis is None:
            self.hit(name, key)  # in memory: nothing to wait for
            return
        rule = self._rules[name]
        if not self._redis_answers():
            self._hit_locally(rule, name, key)
            return
        try:
            limiter = self._loop_limiter(*self._redis)
            if await limiter.hit(rule, name, key):
                self._redis_back()
                return
            reset = (await limiter.get_window_stats(rule, name, key)).reset_time
        except StorageError as exc:
            self._redis_failed(exc)
            self._hit_locally(rule, name, key)
            return
        raise _refused(name, reset)

    def _first_contact(self, storage: Storage) -> None:
        """Ask Redis once at start, so that a Redis away at start is counted around from the
        first request on. A Redis that refuses Kami is handled the same way here (a server
        process must not crash over it); `kami serve` refuses to start instead (`check_redis`)."""
        client = getattr(storage, "storage", None)  # limits' Redis storage keeps its client here
        if client is None:
            return
        try:
            client.ping()
        except redis.RedisError as exc:
            self._redis_failed(StorageError(exc))

    @property
    def counting_locally(self) -> bool:
        """Whether Redis is configured but the limits are counted in this process for now."""
        return self._local is not None and not self._redis_answers()

    def _redis_answers(self) -> bool:
        return time.monotonic() >= self._redis_away_until

    def _hit_locally(self, rule: RateLimitItem, name: str, key: str) -> None:
        local = self._local
        assert local is not None
        if local.hit(rule, name, key):
            return
        raise _refused(name, local.get_window_stats(rule, name, key).reset_time)

    def _redis_failed(self, exc: StorageError) -> None:
        if self._redis_away_until == 0.0:  # logged once an outage, not once a request
            # The exception's class only: a message may carry the URL, and with it a password.
            cause = type(exc.storage_error).__name__
            log.warning(
                "rate limits: Redis did not answer (%s); counting in this process, asking "
                "Redis again every %.0f s",
                cause,
                REDIS_RETRY,
            )
        self._redis_away_until = time.monotonic() + REDIS_RETRY

    def _redis_back(self) -> None:
        if self._redis_away_until != 0.0:
            self._redis_away_until = 0.0
            log.warning("rate limits: Redis answers again; counting there")

    def _loop_limiter(self, url: str, namespace: str) -> LoopRateLimiter:
        loop = asyncio.get_running_loop()
        limiter = self._loop_limiters.get(loop)
        if limiter is None:
            storage = storage_from_string(
                f"async+{url}", key_prefix=namespace, implementation="redispy", **_REDIS_OPTIONS
            )
            if not isinstance(storage, LoopStorage):
                raise InvalidInput("KAMI_REDIS_URL must be a redis:// URL", where="KAMI_REDIS_URL")
            limiter = self._loop_limiters[loop] = LoopRateLimiter(storage)
        return limiter


def check_redis(redis_url: str | None) -> None:
    """Before the server starts: a Redis that answers "no" (a wrong password, a database that
    does not exist) is a mistake in the settings, said at once with the setting's name; one that
    does not answer may come back, and the server counts around it meanwhile."""
    if not redis_url:
        return
    client = redis.Redis.from_url(
        redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        # The class only: the server's message may repeat what was sent.
        raise InvalidInput(
            f"Redis refused the connection ({type(exc).__name__}): check the password and the "
            "database number in the URL",
            where="KAMI_REDIS_URL",
        ) from None
    except (redis.RedisError, ValueError):  # away (counted around), or a URL limits rejects later
        pass
    finally:
        client.close()


def _refused(name: str, reset: float) -> RateLimited:
    retry = max(1, math.ceil(reset - time.time()))
    return RateLimited(f"too many {name} requests from this address; try again in {retry} s", retry)
