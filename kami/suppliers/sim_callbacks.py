"""The simulator's callback sender: one thread POSTing signed callbacks, retrying on a schedule
until the receiver answers the way the protocol wants (or the attempts run out)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kami.suppliers.base import HttpAnswer, TransportError, post


@dataclass(frozen=True, slots=True)
class CallbackJob:
    url: str
    body: bytes
    headers: Mapping[str, str]
    acknowledged: Callable[[HttpAnswer], bool]
    on_attempt: Callable[[bool], None]  # told after every attempt whether it was acknowledged


class CallbackSender:
    def __init__(self, delays: tuple[float, ...], stop: threading.Event) -> None:
        """`delays[i]` is the wait before attempt i+1 (so len(delays) attempts in all)."""
        self._delays = delays or (0.0,)
        self._stop = stop
        self._heap: list[tuple[float, int, int, CallbackJob]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sim-callbacks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        with self._wake:
            self._wake.notify_all()
        self._thread.join(timeout)

    def enqueue(self, job: CallbackJob) -> None:
        self._schedule(job, 0)

    def _schedule(self, job: CallbackJob, attempt: int) -> None:
        due = time.monotonic() + self._delays[attempt]
        with self._wake:
            heapq.heappush(self._heap, (due, next(self._seq), attempt, job))
            self._wake.notify()

    def pending(self) -> int:
        with self._wake:
            return len(self._heap)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                if not self._heap:
                    self._wake.wait(0.2)
                    continue
                due, _, attempt, job = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._wake.wait(min(wait, 0.2))
                    continue
                heapq.heappop(self._heap)
            try:
                answer = post(job.url, job.body, job.headers, timeout=2.0, max_bytes=64 * 1024)
                acked = job.acknowledged(answer)
            except TransportError:
                acked = False
            job.on_attempt(acked)
            if not acked and attempt + 1 < len(self._delays) and not self._stop.is_set():
                self._schedule(job, attempt + 1)
