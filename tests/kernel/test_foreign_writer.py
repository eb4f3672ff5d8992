"""SQLite, a writer that is not Kami's (the sqlite3 shell, a backup tool): it holds SQLite's
lock without Kami's writer queue knowing. A call that must not wait (the event loop's) waits for
it a few milliseconds and is refused; any other call waits as before
(`kernel.db._Kept._limit_busy_wait`)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from kami import fulfilment
from kami.kernel import waiting
from kami.kernel.engine import BUSY_TIMEOUT_MS
from tests.conftest import BACKEND, add_keys, make_sku

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's own lock")

ORDER = {"sku": "SKU-1", "quantity": 1, "email": "buyer@example.com", "gateway": "sandbox"}


@pytest.fixture
def foreign_writer(shop: fulfilment.Shop) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection; the test begins its write transaction and commits it."""
    conn = sqlite3.connect(str(shop.db.engine.url.database), isolation_level=None, timeout=30)
    yield conn
    if conn.in_transaction:
        conn.rollback()
    conn.close()


def in_thread(fn: Callable[[], Any]) -> threading.Thread:
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(("returned", fn()))
        except BaseException as exc:
            outcome.append(("raised", exc))

    thread = threading.Thread(target=target, daemon=True)  # a hang fails the test, not the run
    thread.outcome = outcome  # type: ignore[attr-defined]
    thread.start()
    return thread


def outcome_of(thread: threading.Thread) -> tuple[str, Any]:
    thread.join(20)  # less than SQLite's own 30 s: a call that waited for it fails here
    assert not thread.is_alive(), "the call is still waiting for the other writer"
    return thread.outcome[0]  # type: ignore[attr-defined,no-any-return]


def busy_timeout(shop: fulfilment.Shop) -> int:
    with shop.db.write() as s:
        return int(s.execute(text("PRAGMA busy_timeout")).scalar_one())


def test_a_call_that_must_not_wait_is_refused_then_a_call_that_may_waits(
    shop: fulfilment.Shop, foreign_writer: sqlite3.Connection
) -> None:
    foreign_writer.execute("BEGIN IMMEDIATE")
    refused = threading.Event()

    def refused_then_waits() -> Any:
        with waiting.no_waiting(), pytest.raises(waiting.WouldWait) as no, shop.db.write() as s:
            s.execute(text("SELECT 1"))
        assert "not Kami's" in no.value.what and not no.value.after_commit
        refused.set()
        with shop.db.write() as s:  # the same connection, no longer refusing: it waits
            return s.execute(text("SELECT count(*) FROM orders_order")).scalar_one()

    waiter = in_thread(refused_then_waits)
    assert refused.wait(20), outcome_of(waiter)
    time.sleep(0.2)
    assert waiter.is_alive()  # waiting for the other writer
    foreign_writer.commit()
    assert outcome_of(waiter) == ("returned", 0)


def test_the_busy_wait_follows_the_call(shop: fulfilment.Shop) -> None:
    assert busy_timeout(shop) == BUSY_TIMEOUT_MS
    with waiting.no_waiting():
        assert busy_timeout(shop) == round(waiting.LOCK_WAIT * 1000)
        assert busy_timeout(shop) == BUSY_TIMEOUT_MS  # after its first commit, as usual
    with waiting.no_waiting(0.025):
        assert busy_timeout(shop) == 25
    assert busy_timeout(shop) == BUSY_TIMEOUT_MS


def test_a_checkout_behind_another_writer_does_not_stop_the_server(
    client: TestClient, shop: fulfilment.Shop, foreign_writer: sqlite3.Connection
) -> None:
    add_keys(shop, make_sku(shop), ["K-1"])
    foreign_writer.execute("BEGIN IMMEDIATE")
    checkout = in_thread(lambda: client.post("/api/v1/orders", json=ORDER))
    how, health = outcome_of(in_thread(lambda: client.get("/healthz")))
    assert how == "returned" and health.status_code == 200
    foreign_writer.commit()
    how, answer = outcome_of(checkout)
    assert how == "returned" and answer.status_code == 201, answer.text
