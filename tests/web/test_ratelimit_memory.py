"""The in-process store of the rate limits: limits' own strategies over it, no threads."""

from __future__ import annotations

import threading
import time

import pytest
from limits import parse
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from kami.web import ratelimit_memory
from kami.web.ratelimit_memory import InProcessStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_moving_window_refuses_past_its_limit_and_frees_as_hits_age() -> None:
    clock = Clock()
    limiter = MovingWindowRateLimiter(InProcessStorage(clock))
    rule = parse("3/minute")
    assert [limiter.hit(rule, "orders", "198.51.100.7") for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    assert limiter.hit(rule, "orders", "198.51.100.8")  # another address, its own window
    stats = limiter.get_window_stats(rule, "orders", "198.51.100.7")
    assert stats.remaining == 0 and stats.reset_time == clock.now + 60
    clock.now += 30
    assert not limiter.hit(rule, "orders", "198.51.100.7")  # still within the minute
    clock.now += 30.5
    assert limiter.hit(rule, "orders", "198.51.100.7")  # the first three have aged out
    assert limiter.get_window_stats(rule, "orders", "198.51.100.7").remaining == 2


def test_a_fixed_window_counts_until_it_ends() -> None:
    clock = Clock()
    store = InProcessStorage(clock)
    limiter = FixedWindowRateLimiter(store)
    rule = parse("2/second")
    assert [limiter.hit(rule, "k") for _ in range(3)] == [True, True, False]
    assert store.get_expiry(rule.key_for("k")) == clock.now + 1
    clock.now += 1
    assert limiter.hit(rule, "k") and store.get(rule.key_for("k")) == 1


def test_keys_whose_window_has_passed_are_swept() -> None:
    clock = Clock()
    store = InProcessStorage(clock)
    limiter = MovingWindowRateLimiter(store)
    rule = parse("5/second")
    for n in range(1000):
        limiter.hit(rule, "reveals", f"10.0.{n // 256}.{n % 256}")
    assert store.keys() == 1000
    clock.now += 2
    for _ in range(ratelimit_memory.SWEEP_EVERY):
        limiter.hit(rule, "reveals", "192.0.2.1")
    assert store.keys() == 1  # only the address still inside its window


def test_hits_start_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[threading.Thread] = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda t: (started.append(t), start(t))[1])
    limiter = MovingWindowRateLimiter(InProcessStorage())
    rule = parse("100000/second")
    for n in range(2000):
        limiter.hit(rule, "orders", f"203.0.113.{n % 200}")
        if n % 500 == 0:
            time.sleep(0.02)  # long enough for a 10 ms expiry timer to have ended
    assert started == []


def test_clear_and_reset() -> None:
    store = InProcessStorage()
    limiter = MovingWindowRateLimiter(store)
    rule = parse("1/hour")
    assert limiter.hit(rule, "a") and not limiter.hit(rule, "a")
    limiter.clear(rule, "a")
    assert limiter.hit(rule, "a")
    store.incr("b", 60)
    assert store.reset() == 2 and store.keys() == 0 and store.check()
