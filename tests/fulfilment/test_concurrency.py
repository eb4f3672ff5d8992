"""Invariants 1 and 2 under load: concurrent duplicate notifications, one set of keys each."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import text

from kami import bootstrap, fulfilment, orders
from kami.config import Settings
from tests.conftest import add_keys, make_sku, random_keys, raw_notification, sandbox_body

ORDERS = 1000
THREADS = 32


def _orders(shop: fulfilment.Shop, n: int, stock: int) -> list[orders.OrderView]:
    sku = make_sku(shop, "FLASH", price=300, max_quantity=5)
    add_keys(shop, sku, random_keys(stock))
    return [
        fulfilment.place_order(
            shop,
            orders.OrderIn(sku="FLASH", quantity=1, email=f"b{i}@example.com", gateway="sandbox"),
        ).order
        for i in range(n)
    ]


def _assert_each_delivered_once(shop: fulfilment.Shop, placed: list[orders.OrderView]) -> None:
    with shop.db.read() as s:
        q = lambda sql: s.execute(text(sql)).scalar_one()  # noqa: E731
        assert q("SELECT count(*) FROM vault_key WHERE status = 'sold'") == len(placed)
        assert q("SELECT count(*) FROM delivery_item") == len(placed)
        assert q("SELECT count(DISTINCT key_id) FROM delivery_item") == len(placed)
        assert q("SELECT count(DISTINCT order_id) FROM delivery_item") == len(placed)
        assert q("SELECT count(*) FROM payments_inbox") == len(placed)
        # Each sold key belongs to the order its delivery row names.
        assert q(
            "SELECT count(*) FROM delivery_item d JOIN vault_key k ON k.id = d.key_id "
            "WHERE k.order_id = d.order_id AND k.status = 'sold'"
        ) == len(placed)
        statuses = dict(
            s.execute(text("SELECT status, count(*) FROM orders_order GROUP BY status")).all()
        )
    assert statuses == {"delivered": len(placed)}


def test_duplicate_notifications_from_32_threads(shop: fulfilment.Shop) -> None:
    placed = _orders(shop, ORDERS, stock=ORDERS + 200)
    barriers = {o.order_no: threading.Barrier(2, timeout=10) for o in placed}
    outcomes: list[str] = []

    def notify(order: orders.OrderView) -> None:
        body = sandbox_body(order.order_no, order.amount_minor)
        with contextlib.suppress(threading.BrokenBarrierError):
            barriers[order.order_no].wait()  # both copies go in at the same moment
        outcome = fulfilment.handle_notification(shop, raw_notification(body))
        assert outcome.ack.status_code == 200  # duplicates are acknowledged too
        outcomes.append(outcome.verdict)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(notify, [o for o in placed for _ in range(2)]))
    assert outcomes.count("accepted") == ORDERS
    assert outcomes.count("duplicate") == ORDERS
    _assert_each_delivered_once(shop, placed)


def _process_notify(settings_json: str, bodies: list[bytes], start: Any) -> None:
    container = bootstrap.build(Settings.model_validate_json(settings_json))
    start.wait(30)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda b: fulfilment.handle_notification(container.shop, raw_notification(b)),
                    bodies,
                )
            )
    finally:
        container.close()


def test_duplicate_notifications_from_3_processes(
    shop: fulfilment.Shop, settings: Settings
) -> None:
    placed = _orders(shop, ORDERS, stock=ORDERS + 200)
    bodies = [sandbox_body(o.order_no, o.amount_minor) for o in placed]
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    data = settings.model_dump_json(exclude={"master_key", "sandbox_secret"})
    import json

    payload = json.loads(data)
    payload["master_key"] = settings.master_key.get_secret_value() if settings.master_key else None
    payload["sandbox_secret"] = (
        settings.sandbox_secret.get_secret_value() if settings.sandbox_secret else None
    )
    procs = [
        ctx.Process(target=_process_notify, args=(json.dumps(payload), bodies, start))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    _assert_each_delivered_once(shop, placed)
