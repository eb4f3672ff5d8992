"""Where and in what order a request's blocking work runs (kami.web.running): on the event loop
when nothing would wait, again from the start on a worker thread when it would, payments first."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import cast

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from kami import catalog
from kami.config import Settings
from kami.fulfilment import Shop
from kami.fulfilment import shop as fulfilment_shop
from kami.kernel import prepared, waiting
from kami.kernel.clock import utcnow
from kami.payments.gateways.transport import opener
from kami.web import app as web_app
from kami.web import groups as web_groups
from kami.web import running
from tests.conftest import (
    BACKEND,
    add_keys,
    make_sku,
    run_async,
    sandbox_body,
    sign,
    writer_held_by_a_thread,
)

ORDER = {"sku": "SKU-1", "quantity": 1, "email": "buyer@example.com", "gateway": "sandbox"}


def _rows(shop: Shop) -> int:
    with shop.db.read() as s:
        return int(s.execute(text("SELECT count(*) FROM t_scratch")).scalar_one())


@pytest.fixture
def slots_taken(shop: Shop, scratch_table: str) -> Iterator[threading.Event]:
    """Every admission slot of the process held by other threads' reads, until the event."""
    leave = threading.Event()
    entered = threading.Barrier(shop.db._admission.limit + 1)

    def hold() -> None:
        with shop.db.read():
            entered.wait(5)
            leave.wait(30)

    holders = [threading.Thread(target=hold) for _ in range(shop.db._admission.limit)]
    for h in holders:
        h.start()
    entered.wait(5)
    yield leave
    leave.set()
    for h in holders:
        h.join(10)


def test_a_call_runs_on_the_event_loop_when_nothing_waits(shop: Shop, scratch_table: str) -> None:

    def insert() -> int:
        with shop.db.write() as s:
            s.execute(text("INSERT INTO t_scratch VALUES (1)"))
        return threading.get_ident()

    async def scene() -> tuple[int, int]:
        return threading.get_ident(), await running.run(insert)

    loop_thread, ran_on = run_async(scene)
    assert ran_on == loop_thread
    assert _rows(shop) == 1


def test_a_refused_call_runs_again_on_a_worker_thread_and_changes_things_once(
    shop: Shop, slots_taken: threading.Event
) -> None:
    attempts: list[int] = []

    def read_then_insert() -> int:
        attempts.append(threading.get_ident())
        with shop.db.read() as s:  # refused here on the loop: every slot is taken
            s.execute(text("SELECT 1"))
        with shop.db.write() as s:
            s.execute(text("INSERT INTO t_scratch VALUES (1)"))
        return threading.get_ident()

    async def scene() -> tuple[int, int]:
        return threading.get_ident(), await running.run(read_then_insert)

    threading.Timer(0.2, slots_taken.set).start()
    loop_thread, ran_on = run_async(scene)
    assert ran_on != loop_thread
    assert attempts == [loop_thread, ran_on]  # refused on the loop, run again on a thread
    assert _rows(shop) == 1


def test_a_call_that_reaches_for_the_network_after_its_commit_is_not_run_again(
    shop: Shop, scratch_table: str
) -> None:

    def insert_then_call() -> None:
        with shop.db.write() as s:
            s.execute(text("INSERT INTO t_scratch VALUES (1)"))
        opener().open("http://127.0.0.1:9/", timeout=1)

    with pytest.raises(RuntimeError, match="after it committed"):
        run_async(lambda: running.run(insert_then_call))
    assert _rows(shop) == 1


def test_a_payment_runs_ahead_of_the_calls_waiting_for_their_turn() -> None:
    ran: list[str] = []

    async def scene() -> None:
        checkouts = [
            asyncio.create_task(running.run(ran.append, f"checkout {n}")) for n in range(3)
        ]
        await asyncio.sleep(0)  # the checkouts have asked for their turns
        payment = asyncio.create_task(running.run_payment(ran.append, "payment"))
        await asyncio.gather(*checkouts, payment)

    run_async(scene)
    assert ran == ["payment", "checkout 0", "checkout 1", "checkout 2"]


def test_during_a_flash_sale_its_checkouts_go_first_and_payments_take_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decision 0018: a flash sale's checkout runs as soon as it is read; for a moment after
    one, payments take turns, PAYMENTS_PER_PASS of them per pass of the loop, still ahead of
    the other calls (one per pass); once the moment has passed, payments run at once again."""
    monkeypatch.setattr(running, "PAYMENTS_PER_PASS", 2)
    ran: list[str] = []

    async def scene() -> None:
        await running.run_first(ran.append, "flash 0")
        others = [asyncio.create_task(running.run(ran.append, f"other {n}")) for n in range(2)]
        payments = [
            asyncio.create_task(running.run_payment(ran.append, f"payment {n}")) for n in range(5)
        ]
        flash = asyncio.create_task(running.run_first(ran.append, "flash 1"))
        await asyncio.gather(*others, *payments, flash)
        monkeypatch.setattr(running, "STORM", 0.0)
        await running.run_first(ran.append, "flash 2")  # the storm ends as it starts
        other = asyncio.create_task(running.run(ran.append, "other 2"))
        await asyncio.sleep(0)
        await running.run_payment(ran.append, "payment 5")
        await other

    run_async(scene)
    assert ran == [
        "flash 0",
        "flash 1",  # read last, ran first
        "payment 0",  # first pass: two payments and one other call
        "payment 1",
        "other 0",
        "payment 2",  # second pass
        "payment 3",
        "other 1",
        "payment 4",  # third pass
        "flash 2",
        "payment 5",  # no storm: at once, ahead of the other call waiting
        "other 2",
    ]


def _checkouts_run_by(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the `running` functions that run each checkout (`open_order`) from now on."""
    used: list[str] = []

    def recorder(name: str) -> Callable[..., Awaitable[object]]:
        original = getattr(running, name)

        def recorded(fn: Callable[..., object], *args: object, **kw: object) -> Awaitable[object]:
            if getattr(fn, "__name__", "") == "open_order":
                used.append(name)
            return cast(Awaitable[object], original(fn, *args, **kw))

        return recorded

    for name in ("run", "run_first"):
        monkeypatch.setattr(running, name, recorder(name))
    return used


def _plain_and_flash(shop: Shop) -> None:
    for code in ("PLAIN", "FLASH"):
        add_keys(shop, make_sku(shop, code), [f"{code}-{n}" for n in range(3)])
    now = utcnow()
    with shop.db.write() as s:
        catalog.set_flash_sale(
            s,
            "FLASH",
            catalog.FlashSaleIn(
                starts_at=now - timedelta(minutes=1),
                ends_at=now + timedelta(minutes=10),
                price_minor=99,
                quota=3,
            ),
        )


def test_the_checkouts_of_a_sku_on_flash_sale_are_run_first(
    client: TestClient, shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = _checkouts_run_by(monkeypatch)
    _plain_and_flash(shop)
    for code, n in (("PLAIN", 0), ("FLASH", 1), ("PLAIN", 2)):
        order = dict(ORDER, sku=code, email=f"b{n}@example.com")
        assert client.post("/api/v1/orders", json=order).status_code == 201
    assert used == ["run", "run_first", "run"]


def test_the_checkout_forms_orders_go_the_way_the_apis_do(
    client: TestClient, shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storefront's form runs its checkout on the loop, a flash sale's first (in a group
    with the checkouts read in the same pass), with its Idempotency-Key: the same form sent
    twice is one order."""
    used = _checkouts_run_by(monkeypatch)
    _plain_and_flash(shop)
    locations = []
    for n, code in enumerate(("PLAIN", "FLASH", "FLASH")):
        client.cookies.clear()  # another buyer, on another device
        page = client.get(f"/checkout/{code}").text
        fields = dict(re.findall(r'name="(csrf_token|idempotency)" value="([^"]+)"', page))
        form = {"email": f"b{n}@example.com", "quantity": "1", "gateway": "sandbox", **fields}
        for _ in range(1 if code == "PLAIN" else 2):  # a flash sale's buyer presses twice
            r = client.post(f"/checkout/{code}", data=form, follow_redirects=False)
            assert r.status_code == 303, r.text
            locations.append(r.headers["location"].split("#")[0])
    assert used == ["run", *(["run_first"] * 4)]
    assert locations[1] == locations[2] and locations[3] == locations[4]
    assert len(set(locations)) == 3
    with shop.db.read() as s:
        count = s.execute(text("SELECT count(*) FROM orders_order")).scalar_one()
    assert count == 3


def test_after_a_sellout_a_keyless_checkout_is_answered_from_memory_at_once(
    client: TestClient, shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 0024: the "sold out" the process remembers is given before the checkout joins a
    group or waits for a turn, to a buyer without an Idempotency-Key, and a flash sale's still
    counts as its checkout for the payments' turns; a keyed one still goes the checkout's way
    (its key is looked up), and so does an unknown channel (its 422)."""
    monkeypatch.setattr(fulfilment_shop, "SOLD_OUT_ANSWER", 600.0)  # no lapse mid-test
    _plain_and_flash(shop)
    for n in range(3):  # the flash sale's quota
        order = dict(ORDER, sku="FLASH", email=f"w{n}@example.com")
        assert client.post("/api/v1/orders", json=order).status_code == 201
    late = dict(ORDER, sku="FLASH", email="late@example.com")
    for n in range(2):  # the write path says so, then a read that is remembered
        r = client.post("/api/v1/orders", json=dict(late, email=f"d{n}@example.com"))
        assert r.status_code == 409 and r.json()["type"].endswith("/sold-out")
    used = _checkouts_run_by(monkeypatch)
    gathered: list[object] = []
    run_together = web_groups.run_together

    def recorded(key: object, *args: object, **kw: object) -> Awaitable[object]:
        gathered.append(key)
        return run_together(key, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(web_groups, "run_together", recorded)
    busy: list[int] = []  # the sale is still busy on the loop: its payments keep taking turns
    monkeypatch.setattr(running, "flash_sale_answered", lambda: busy.append(1))
    for n in range(3):
        r = client.post("/api/v1/orders", json=dict(late, email=f"l{n}@example.com"))
        assert r.status_code == 409 and r.json()["type"].endswith("/sold-out")
    assert used == [] and gathered == [] and len(busy) == 3
    r = client.post(
        "/api/v1/orders", json=dict(late, email="k@example.com"), headers={"Idempotency-Key": "k1"}
    )
    assert r.status_code == 409 and r.json()["type"].endswith("/sold-out")
    assert used == ["run_first"] and len(gathered) == 1
    r = client.post("/api/v1/orders", json=dict(late, gateway="nowhere"))
    assert r.status_code == 422 and r.json()["type"].endswith("/unknown-gateway")
    used.clear()
    for n in range(5):  # a SKU not on sale: its three keys, then the database, then memory
        r = client.post("/api/v1/orders", json=dict(ORDER, sku="PLAIN", email=f"p{n}@example.com"))
        assert r.status_code == (201 if n < 3 else 409)
    r = client.post("/api/v1/orders", json=dict(ORDER, sku="PLAIN", email="p@example.com"))
    assert r.status_code == 409 and r.json()["type"].endswith("/sold-out")
    assert used == ["run"] * 5  # the last one took no turn
    assert len(busy) == 3  # nor counts for a flash sale's payments
    with shop.db.read() as s:
        assert s.execute(text("SELECT count(*) FROM orders_order")).scalar_one() == 6


def test_turns_skip_a_caller_that_went_away() -> None:
    ran: list[str] = []

    async def scene() -> None:
        first = asyncio.create_task(running.run(ran.append, "gone"))
        second = asyncio.create_task(running.run(ran.append, "stays"))
        await asyncio.sleep(0)
        first.cancel()  # its client disconnected while it waited
        await asyncio.gather(first, second, return_exceptions=True)

    run_async(scene)
    assert ran == ["stays"]


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's writer")
def test_a_purchase_goes_through_while_another_process_holds_the_writer(
    client: TestClient, shop: Shop
) -> None:
    add_keys(shop, make_sku(shop), ["K-1"])
    lock = str(shop.db.engine.url.database) + "-writer.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            "f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(0.3)",
            lock,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        created = client.post("/api/v1/orders", json=ORDER)  # waits for it on the loop
        assert created.status_code == 201
    finally:
        holder.wait(10)
    order = created.json()
    body = sandbox_body(order["order_no"], order["amount_minor"])
    paid = client.post(
        "/api/v1/payments/sandbox/notify", content=body, headers={"X-Sandbox-Signature": sign(body)}
    )
    assert paid.status_code == 200
    revealed = client.post(
        f"/api/v1/orders/{order['order_no']}/reveal",
        headers={"Authorization": f"Bearer {order['access_token']}"},
    )
    assert [i["card"] for i in revealed.json()["items"]] == ["K-1"]


@pytest.fixture
def writer_held(shop: Shop) -> Iterator[threading.Event]:
    """SQLite's writer held by another thread of this process until the event is set."""
    if BACKEND != "sqlite":
        pytest.skip("SQLite's writer")
    assert shop.db._writers is not None
    with writer_held_by_a_thread(shop) as leave:
        yield leave


def _insert(shop: Shop, n: int, ran: list[tuple[int, int]]) -> int:
    with shop.db.write() as s:
        s.execute(text("INSERT INTO t_scratch VALUES (:n)"), {"n": n})
    ran.append((n, threading.get_ident()))
    return n


def _ticking() -> tuple[asyncio.Task[None], list[int]]:
    """A task on the running loop that counts every 5 ms: whether the loop was left free."""
    ticks = [0]

    async def ticker() -> None:
        while True:
            ticks[0] += 1
            await asyncio.sleep(0.005)

    return asyncio.create_task(ticker()), ticks


def test_calls_that_find_the_writer_busy_wait_for_it_without_blocking_the_loop(
    shop: Shop, scratch_table: str, writer_held: threading.Event
) -> None:
    """Refused at once, they wait off the loop's back: the loop goes on answering (here, a
    ticker) until the writer is free, then runs them itself, in arrival order."""
    ran: list[tuple[int, int]] = []

    async def scene() -> tuple[int, list[int], int]:
        tick, ticks = _ticking()
        calls = [asyncio.create_task(running.run(_insert, shop, n, ran)) for n in range(5)]
        await asyncio.sleep(0.2)
        ticks_while_held, done_while_held = ticks[0], sum(c.done() for c in calls)
        writer_held.set()
        results = await asyncio.gather(*calls)
        tick.cancel()
        assert done_while_held == 0
        return threading.get_ident(), results, ticks_while_held

    loop_thread, results, ticks = run_async(scene)
    assert results == [0, 1, 2, 3, 4]
    assert ran == [(n, loop_thread) for n in range(5)]  # on the loop, first come first served
    assert ticks >= 5  # the loop was not blocked while they waited (about 40 in 0.2 s)
    assert _rows(shop) == 5


def test_a_call_that_waits_too_long_for_the_writer_runs_on_a_worker_thread_once(
    shop: Shop, scratch_table: str, writer_held: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(running, "WRITER_WAIT", 0.05)
    ran: list[tuple[int, int]] = []

    async def scene() -> tuple[int, int]:
        return threading.get_ident(), await running.run(_insert, shop, 7, ran)

    threading.Timer(0.3, writer_held.set).start()
    loop_thread, result = run_async(scene)
    assert result == 7
    assert len(ran) == 1 and ran[0][1] != loop_thread  # given up on the loop, run on a thread
    assert _rows(shop) == 1


def test_a_failure_of_a_call_that_waited_for_the_writer_reaches_its_caller_alone(
    shop: Shop, scratch_table: str, writer_held: threading.Event
) -> None:
    ran: list[tuple[int, int]] = []

    def fails() -> None:
        with shop.db.write() as s:
            s.execute(text("INSERT INTO t_scratch VALUES (99)"))
            raise LookupError("no such thing")

    async def scene() -> list[object]:
        calls = [
            asyncio.create_task(running.run(_insert, shop, 1, ran)),
            asyncio.create_task(running.run(fails)),
            asyncio.create_task(running.run(_insert, shop, 2, ran)),
        ]
        await asyncio.sleep(0.05)
        writer_held.set()
        return await asyncio.gather(*calls, return_exceptions=True)

    first, failed, third = run_async(scene)
    assert (first, third) == (1, 2)
    assert isinstance(failed, LookupError)
    with shop.db.read() as s:
        assert sorted(s.execute(text("SELECT n FROM t_scratch")).scalars()) == [1, 2]


def test_a_call_whose_caller_left_while_it_waited_for_the_writer_is_not_run(
    shop: Shop, scratch_table: str, writer_held: threading.Event
) -> None:
    ran: list[tuple[int, int]] = []

    async def scene() -> None:
        gone = asyncio.create_task(running.run(_insert, shop, 1, ran))
        stays = asyncio.create_task(running.run(_insert, shop, 2, ran))
        await asyncio.sleep(0.05)  # both wait for the writer
        gone.cancel()  # its client hung up
        writer_held.set()
        await asyncio.gather(gone, stays, return_exceptions=True)

    run_async(scene)
    assert [n for n, _ in ran] == [2]
    assert _rows(shop) == 1


def test_a_payment_waiting_for_the_writer_goes_before_the_checkouts_waiting(
    shop: Shop, scratch_table: str, writer_held: threading.Event
) -> None:
    ran: list[tuple[int, int]] = []

    async def scene() -> None:
        checkouts = [asyncio.create_task(running.run(_insert, shop, n, ran)) for n in range(3)]
        await asyncio.sleep(0.05)  # they wait for the writer
        payment = asyncio.create_task(running.run_now(_insert, shop, 9, ran))
        await asyncio.sleep(0.05)
        writer_held.set()
        await asyncio.gather(*checkouts, payment)

    run_async(scene)
    assert [n for n, _ in ran] == [9, 0, 1, 2]


def test_a_flash_checkout_waiting_for_the_writer_goes_before_payments_and_the_rest(
    shop: Shop, scratch_table: str, writer_held: threading.Event
) -> None:
    ran: list[tuple[int, int]] = []

    async def scene() -> None:
        checkout = asyncio.create_task(running.run(_insert, shop, 1, ran))
        await asyncio.sleep(0.05)  # it waits for the writer
        payment = asyncio.create_task(running.run_payment(_insert, shop, 2, ran))
        await asyncio.sleep(0.05)
        flash = [asyncio.create_task(running.run_first(_insert, shop, n, ran)) for n in (3, 4)]
        await asyncio.sleep(0.05)
        payment_later = asyncio.create_task(running.run_payment(_insert, shop, 5, ran))
        await asyncio.sleep(0.05)
        writer_held.set()
        await asyncio.gather(checkout, payment, *flash, payment_later)

    run_async(scene)
    assert [n for n, _ in ran] == [3, 4, 2, 5, 1]


def test_payments_wait_longer_for_a_lock_before_they_are_refused() -> None:
    """A payment refused to a worker thread waits there for the interpreter: it may wait longer
    on the loop first. Asked inside the call, as the database asks."""

    async def scene() -> tuple[float | None, float | None]:
        return await running.run(waiting.lock_wait), await running.run_now(waiting.lock_wait)

    assert run_async(scene) == (waiting.LOCK_WAIT, running.PAYMENT_LOCK_WAIT)
    assert running.PAYMENT_LOCK_WAIT > waiting.LOCK_WAIT
    assert waiting.lock_wait() is None  # outside, as long as it takes


def test_a_server_process_freezes_its_start_up_heap(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kami serve`'s processes build the app with `create_app_from_env`: once started, what
    start-up made is out of the full collection's sight (kami.web.app.settle_heap), so that a
    full collection does not hold the loop for the 100 ms it takes to scan it all."""
    monkeypatch.setattr(web_app, "Settings", lambda: settings)
    monkeypatch.setattr(web_app.logging, "basicConfig", lambda **_: None)
    app = web_app.create_app_from_env()
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        with TestClient(app) as client:
            frozen = gc.get_freeze_count()
            assert client.get("/healthz").status_code == 200
    finally:
        gc.unfreeze()  # this process goes on building apps: let them be collected
        app.state.container.close()
        logging.getLogger("uvicorn.error").removeFilter(web_app.keep_traces_out_of_logs())
    assert frozen > 50_000


def test_a_server_process_compiles_every_statement_as_it_starts(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 0024: compiled on first use, a flash sale's first group of payments spent 7 to
    9 ms of CPU where the next ones spent 1 to 2, while every buyer of the process waited. A
    server process compiles all the statements (`prepared.ready_all`) before it answers
    anyone."""
    monkeypatch.setattr(web_app, "Settings", lambda: settings)
    monkeypatch.setattr(web_app.logging, "basicConfig", lambda **_: None)
    app = web_app.create_app_from_env()
    dialect = app.state.container.db.engine.dialect.name
    for statement in prepared._MADE:
        statement._plans.pop(dialect, None)  # as a process that has run none of them yet
    try:
        with TestClient(app):
            unready = [s for s in prepared._MADE if dialect not in s._plans]
    finally:
        gc.unfreeze()
        app.state.container.close()
        logging.getLogger("uvicorn.error").removeFilter(web_app.keep_traces_out_of_logs())
    assert len(prepared._MADE) > 20
    assert unready == []


def test_apps_built_for_tests_leave_the_heap_alone(client: TestClient) -> None:
    assert gc.get_freeze_count() == 0


def test_a_failure_that_leaves_the_app_is_logged_by_its_type_only(
    served: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Starlette answers an unhandled failure with a 500 and raises it again to uvicorn, which
    logs its whole trace: `kami serve` puts a filter on uvicorn's logger that keeps the type
    only (invariant 5: the message could carry a key)."""

    def failing(*_args: object) -> None:
        raise RuntimeError("KEY-SECRET-0002 was in the message")

    monkeypatch.setattr(catalog, "public_tree", failing)
    kept = web_app.keep_traces_out_of_logs()
    try:
        assert web_app.keep_traces_out_of_logs() is kept  # once per process
        assert httpx.get(f"{served}/api/v1/catalog", timeout=10).status_code == 500
        for _ in range(500):  # uvicorn logs it after the answer has gone
            if "Exception in ASGI application" in caplog.text:
                break
            time.sleep(0.01)
    finally:
        logging.getLogger("uvicorn.error").removeFilter(kept)
    assert "Exception in ASGI application: RuntimeError" in caplog.text
    assert "KEY-SECRET" not in caplog.text and "Traceback" not in caplog.text


def test_calls_that_join_together_in_one_pass_run_as_one_group() -> None:
    """Decision 0020: the calls of one key that join in the same pass of the loop run as one
    call of `together`, `most` at a time, in the order they joined; each gets its own outcome,
    and one whose outcome is None runs `alone`."""
    groups: list[list[str]] = []

    def together(items: list[str]) -> list[object]:
        groups.append(items)
        return [
            None if i.endswith("alone") else ValueError(i) if "bad" in i else i.upper()
            for i in items
        ]

    async def scene() -> list[object]:
        async def one(key: str, item: str) -> object:
            async def alone() -> object:
                return f"{item} by itself"

            try:
                return await web_groups.run_together(key, item, together, alone, most=3)
            except ValueError as exc:
                return f"refused {exc}"

        calls = [("k", "a"), ("k", "b alone"), ("other", "x"), ("k", "c bad"), ("k", "d")]
        first = await asyncio.gather(*(one(k, i) for k, i in calls))
        later = await one("k", "e")  # a pass of its own: a group of one
        return [*first, later]

    assert run_async(scene) == [
        "A",
        "b alone by itself",
        "x by itself",  # alone in its group: `together` is not asked
        "refused c bad",
        "d by itself",  # the group was full: d started another, a group of one
        "e by itself",
    ]
    assert groups == [["a", "b alone", "c bad"]]


def test_a_group_that_would_wait_or_fails_runs_each_call_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def would_wait(items: list[str]) -> list[object]:
        raise waiting.WouldWait("a lock")

    def fails(items: list[str]) -> list[object]:
        raise RuntimeError("broken: secret-token-123")

    async def scene(together: Callable[[list[str]], list[object]]) -> list[object]:
        async def one(item: str) -> object:
            async def alone() -> object:
                return f"{item} alone"

            return await web_groups.run_together("k", item, together, alone, most=8)

        return list(await asyncio.gather(one("a"), one("b")))

    assert run_async(lambda: scene(would_wait)) == ["a alone", "b alone"]
    with caplog.at_level(logging.ERROR, logger="kami.web.running"):
        assert run_async(lambda: scene(fails)) == ["a alone", "b alone"]
    assert "run together failed (RuntimeError)" in caplog.text
    assert "secret-token-123" not in caplog.text


def _insert_group(shop: Shop, items: list[int], groups: list[tuple[list[int], int]]) -> list[int]:
    with shop.db.write() as s:
        for n in items:
            s.execute(text("INSERT INTO t_scratch VALUES (:n)"), {"n": n})
    groups.append((items, threading.get_ident()))
    return [n * 10 for n in items]


async def _grouped(shop: Shop, n: int, groups: list[tuple[list[int], int]]) -> object:
    """Call `n` of a group of `_insert_group`; alone, it answers -n."""

    async def alone() -> object:
        return -n

    return await web_groups.run_together(
        "k", n, lambda items: _insert_group(shop, items, groups), alone, most=8
    )


def test_a_group_that_finds_the_writer_busy_waits_for_it_as_one_group(
    shop: Shop, scratch_table: str, writer_held: threading.Event
) -> None:
    """Decision 0023: on SQLite a group refused for the writer waits for it as one call
    (`run_held`), while the loop goes on, and then runs on the loop as one group. A caller
    that went away meanwhile is left out of it, as a single call that gave up is not run;
    the others get their outcomes."""
    groups: list[tuple[list[int], int]] = []

    async def scene() -> tuple[int, list[object], int, int]:
        tick, ticks = _ticking()
        calls = [asyncio.create_task(_grouped(shop, n, groups)) for n in range(1, 5)]
        await asyncio.sleep(0.2)
        ticks_while_held, done_while_held = ticks[0], sum(c.done() for c in calls)
        calls[1].cancel()  # its client hung up
        writer_held.set()
        results = await asyncio.gather(*calls, return_exceptions=True)
        tick.cancel()
        return threading.get_ident(), results, ticks_while_held, done_while_held

    loop_thread, results, ticks, done_while_held = run_async(scene)
    assert done_while_held == 0
    assert ticks >= 5  # the loop was not blocked while the group waited
    assert results[0] == 10 and results[2:] == [30, 40]
    assert isinstance(results[1], asyncio.CancelledError)
    assert groups == [([1, 3, 4], loop_thread)]  # one group, on the loop
    assert _rows(shop) == 3


def test_a_group_that_waits_too_long_for_the_writer_runs_each_call_alone(
    shop: Shop, scratch_table: str, writer_held: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(running, "WRITER_WAIT", 0.05)
    groups: list[tuple[list[int], int]] = []

    async def scene() -> list[object]:
        return list(await asyncio.gather(_grouped(shop, 1, groups), _grouped(shop, 2, groups)))

    assert run_async(scene) == [-1, -2]
    writer_held.set()
    assert groups == [] and _rows(shop) == 0


def test_the_calls_of_a_group_that_waited_too_long_for_the_writer_wait_for_it_on_threads(
    shop: Shop, scratch_table: str, writer_held: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group that waited WRITER_WAIT for the writer in vain has its calls run alone; one that
    finds the writer still busy waits for it on a worker thread at once, not on the loop a
    second time (which made up to twice WRITER_WAIT before a thread was tried)."""
    monkeypatch.setattr(running, "WRITER_WAIT", 0.05)
    writers = shop.db._writers
    assert writers is not None
    held_waits: list[int] = []
    run_held = type(writers).run_held

    async def counted(self: object, call: object, within: float, **kw: int) -> object:
        held_waits.append(kw.get("weight", 1))
        return await run_held(self, call, within, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(type(writers), "run_held", counted)
    groups: list[tuple[list[int], int]] = []
    ran: list[tuple[int, int]] = []

    async def one(n: int) -> object:
        async def alone() -> object:
            return await running.run_first(_insert, shop, n, ran)

        got = await web_groups.run_together(
            "k", n, lambda items: _insert_group(shop, items, groups), alone, most=8
        )
        assert not running.WAITED_FOR_WRITER.get()  # the caller's next call waits as any does
        return got

    async def scene() -> tuple[int, list[object]]:
        calls = [asyncio.create_task(one(n)) for n in (1, 2)]
        await asyncio.sleep(0.3)  # the group has given up; its calls wait on threads
        writer_held.set()
        return threading.get_ident(), list(await asyncio.gather(*calls))

    loop_thread, results = run_async(scene)
    assert results == [1, 2]
    assert held_waits == [2]  # the group's wait on the loop, and no other
    assert groups == [] and sorted(n for n, _ in ran) == [1, 2]
    assert all(thread != loop_thread for _, thread in ran)
    assert _rows(shop) == 2


@pytest.mark.parametrize("leave", [2, 3])
def test_a_group_whose_callers_left_while_it_waited_for_the_writer_is_not_run(
    shop: Shop, scratch_table: str, writer_held: threading.Event, leave: int
) -> None:
    """All but one gone: the one left runs alone; all gone: nothing runs."""
    groups: list[tuple[list[int], int]] = []

    async def scene() -> list[object]:
        calls = [asyncio.create_task(_grouped(shop, n, groups)) for n in range(1, 4)]
        await asyncio.sleep(0.1)
        for call in calls[:leave]:
            call.cancel()
        await asyncio.sleep(0.05)
        writer_held.set()
        left = list(await asyncio.gather(*calls[leave:]))
        await asyncio.sleep(0.2)  # time for a group that would still run
        return left

    assert run_async(scene) == ([] if leave == 3 else [-3])
    assert groups == [] and _rows(shop) == 0


def test_a_group_that_reached_for_a_wait_after_its_commit_is_not_run_again() -> None:
    """As a single call (`_not_after_commit`): its callers get the error, not a second run of
    each that would repeat what it committed."""
    runs: list[list[str]] = []

    def together(items: list[str]) -> list[object]:
        runs.append(items)
        raise waiting.WouldWait("the network", after_commit=True)

    async def scene() -> list[object]:
        async def one(item: str) -> object:
            async def alone() -> object:
                runs.append([f"{item} alone"])
                return item

            return await web_groups.run_together("k", item, together, alone, most=8)

        return list(await asyncio.gather(one("a"), one("b"), return_exceptions=True))

    outcomes = run_async(scene)
    assert all(isinstance(o, RuntimeError) and "after it committed" in str(o) for o in outcomes)
    assert runs == [["a", "b"]]


def test_payments_read_in_one_pass_run_as_one_group_after_their_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decision 0022: during a flash sale each payment notification takes its turn
    (PAYMENTS_PER_PASS per pass), and the payments released in one pass run as one call of
    `together`; one that runs alone takes no second turn. Outside a sale each runs alone at
    once, as `run_payment`."""
    monkeypatch.setattr(running, "PAYMENTS_PER_PASS", 2)
    groups: list[list[str]] = []
    ran: list[str] = []

    def together(items: list[str]) -> list[object]:
        groups.append(items)
        ran.extend(items)
        return [None if i.endswith("alone") else i.upper() for i in items]

    async def payment(item: str) -> object:
        async def alone() -> object:
            return await running.run_now(lambda: ran.append(item) or f"{item} by itself")

        return await web_groups.run_payment_together("pay", item, together, alone, most=8)

    async def scene() -> list[object]:
        quiet = await asyncio.gather(payment("a"), payment("b alone"), payment("c"))
        await running.run_first(ran.append, "flash")
        other = asyncio.create_task(running.run(ran.append, "other"))
        stormy = asyncio.gather(*(payment(p) for p in ("d", "e alone", "f", "g", "h")))
        return [*quiet, *(await stormy), await other]

    assert run_async(scene) == [
        "a by itself",
        "b alone by itself",
        "c by itself",
        "D",
        "e alone by itself",
        "F",
        "G",
        "h by itself",
        None,
    ]
    assert groups == [["d", "e alone"], ["f", "g"]]
    # "h", alone in its pass's group, ran by itself; "e alone" without a second turn, before
    # the next pass's payments. (The other call released with "d" and "e" ran a pass before
    # their group, which gathers for one pass.)
    assert ran == [
        "a",
        "b alone",
        "c",
        "flash",
        "other",
        "d",
        "e alone",
        "e alone",
        "f",
        "g",
        "h",
    ]
