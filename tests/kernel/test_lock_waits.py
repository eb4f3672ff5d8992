"""PostgreSQL row locks and calls that must not wait (`kernel.db._Kept._limit_lock_waits`): on
the event loop a locked row is waited for a few milliseconds and then refused, so that a slow
transaction elsewhere cannot stop every request of the process; elsewhere it is waited for."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from kami import fulfilment, orders
from kami.kernel import waiting
from kami.web import running
from tests.conftest import BACKEND, add_keys, make_sku, place, sandbox_body, sign

pytestmark = pytest.mark.skipif(BACKEND != "postgresql", reason="PostgreSQL's row locks")


@contextmanager
def order_locked(shop: fulfilment.Shop, order_no: str) -> Iterator[None]:
    """The order's row locked by another connection's transaction until the block ends."""
    with shop.db.engine.connect() as conn:
        conn.execute(
            text("SELECT id FROM orders_order WHERE order_no = :n FOR UPDATE"), {"n": order_no}
        )
        try:
            yield
        finally:
            conn.rollback()


def in_thread(fn: Callable[[], Any]) -> threading.Thread:
    """`fn` on a thread of its own; its outcome lands in the thread's `outcome` list."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(("returned", fn()))
        except BaseException as exc:
            outcome.append(("raised", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.outcome = outcome  # type: ignore[attr-defined]
    thread.start()
    return thread


def outcome_of(thread: threading.Thread) -> tuple[str, Any]:
    thread.join(30)
    assert not thread.is_alive(), "the call is still waiting for the lock"
    return thread.outcome[0]  # type: ignore[attr-defined,no-any-return]


def wait_for_a_lock_wait(shop: fulfilment.Shop) -> None:
    """Until some session of the server waits for a lock."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with shop.db.read() as s:
            if s.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar_one():
                return
        time.sleep(0.02)
    raise AssertionError("nothing waited for the lock")


def lock_timeout(shop: fulfilment.Shop) -> str:
    with shop.db.write() as s:
        return str(s.execute(text("SHOW lock_timeout")).scalar_one())


@pytest.fixture
def order_no(shop: fulfilment.Shop) -> str:
    add_keys(shop, make_sku(shop), ["K-1"])
    return place(shop, "SKU-1").order.order_no


def test_a_call_that_must_not_wait_is_refused_at_a_locked_row(
    shop: fulfilment.Shop, order_no: str
) -> None:
    def locked_by_prepared_statement() -> Any:
        with waiting.no_waiting(), shop.db.write() as s:
            return orders.find_order(s, order_no, for_update=True)

    def locked_by_update() -> Any:  # through SQLAlchemy's own execution path
        with waiting.no_waiting(), shop.db.write() as s:
            return s.execute(
                text("UPDATE orders_order SET note = 'x' WHERE order_no = :n"), {"n": order_no}
            )

    def nested_in_a_read() -> Any:  # a write inside a read has a pooled connection of its own
        with waiting.no_waiting(), shop.db.read(), shop.db.write() as s:
            return orders.find_order(s, order_no, for_update=True)

    with order_locked(shop, order_no):
        for call in (locked_by_prepared_statement, locked_by_update, nested_in_a_read):
            how, what = outcome_of(in_thread(call))
            assert how == "raised" and isinstance(what, waiting.WouldWait), (call, what)
            assert "row lock" in what.what and not what.after_commit
    # Nothing was changed by the refused calls, and the connection that met the lock is sound.
    with shop.db.read() as s:
        assert s.execute(
            text("SELECT note FROM orders_order WHERE order_no = :n"), {"n": order_no}
        ).scalar_one() in (None, "")
    assert outcome_of(in_thread(locked_by_update))[0] == "returned"


def test_a_call_that_may_wait_waits_for_the_lock(shop: fulfilment.Shop, order_no: str) -> None:
    refused = threading.Event()

    def refused_then_waits() -> Any:
        with waiting.no_waiting(), pytest.raises(waiting.WouldWait), shop.db.write() as s:
            orders.find_order(s, order_no, for_update=True)
        refused.set()
        with shop.db.write() as s:  # the same thread and connection, no longer refusing
            return orders.find_order(s, order_no, for_update=True)

    with order_locked(shop, order_no):
        waiter = in_thread(refused_then_waits)
        assert refused.wait(30)
        wait_for_a_lock_wait(shop)
        assert waiter.is_alive()
    how, found = outcome_of(waiter)
    assert how == "returned" and found.order_no == order_no, found


def test_the_limit_follows_the_call(shop: fulfilment.Shop) -> None:
    """The connection's setting is changed when a call of the other kind comes, including after
    a rollback undid the SET."""
    limit = f"{round(waiting.ROW_LOCK_WAIT * 1000)}ms"
    assert lock_timeout(shop) == "0"
    with waiting.no_waiting():
        assert lock_timeout(shop) == limit
    with waiting.no_waiting(running.PAYMENT_LOCK_WAIT):  # the same for every call that refuses
        assert lock_timeout(shop) == limit
        assert lock_timeout(shop) == "0"  # after its first commit a call waits as usual
    with waiting.no_waiting():
        with pytest.raises(LookupError), shop.db.write() as s:  # rolled back: SET undone
            s.execute(text("SELECT 1"))
            raise LookupError
        assert lock_timeout(shop) == limit
    with shop.db.write() as s:
        s.execute(text("SELECT 1"))
        s.rollback()  # the block itself rolls back part-way: the setting is no longer known
    assert lock_timeout(shop) == "0"
    with waiting.no_waiting():
        assert lock_timeout(shop) == limit


def test_a_notification_at_a_locked_order_does_not_stop_the_server(
    client: TestClient, shop: fulfilment.Shop, order_no: str
) -> None:
    """The event loop answers other requests while the notification waits for the order, on a
    worker thread, and the order is paid and delivered once the lock is let go."""
    with shop.db.read() as s:
        order = orders.find_order(s, order_no)
    assert order is not None
    body = sandbox_body(order_no, order.amount_minor)
    with order_locked(shop, order_no):
        notification = in_thread(
            lambda: client.post(
                "/api/v1/payments/sandbox/notify",
                content=body,
                headers={"X-Sandbox-Signature": sign(body)},
            )
        )
        wait_for_a_lock_wait(shop)
        how, health = outcome_of(in_thread(lambda: client.get("/healthz")))
        assert how == "returned" and health.status_code == 200
        assert notification.is_alive()  # still waiting for the order
    how, answer = outcome_of(notification)
    assert how == "returned" and answer.status_code == 200, answer.text
    with shop.db.read() as s:
        paid = orders.find_order(s, order_no)
    assert paid is not None and paid.status == "delivered"
