"""Reservation at order time, on both databases (issue: flash-sale scale)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import text

from kami import catalog, fulfilment, orders
from kami.kernel.clock import utcnow
from kami.kernel.errors import KamiError
from tests.conftest import add_keys, make_sku, place, raw_notification, sandbox_body


def _keys(shop: fulfilment.Shop) -> dict[str, int]:
    with shop.db.read() as s:
        return dict(s.execute(text("SELECT status, count(*) FROM vault_key GROUP BY status")).all())


def _problem(fn: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(KamiError) as exc:
        fn(*args, **kwargs)  # type: ignore[operator]
    return exc.value.slug


def test_sold_out_is_answered_at_order_time(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop)
    add_keys(shop, sku, ["K-1", "K-2", "K-3"])
    place(shop, sku.code, 2, email="a@example.com")
    assert _keys(shop) == {"reserved": 2, "available": 1}
    assert _problem(place, shop, sku.code, 2, email="b@example.com") == "sold-out"
    place(shop, sku.code, 1, email="c@example.com")
    assert _problem(place, shop, sku.code, 1, email="d@example.com") == "sold-out"
    with shop.db.read() as s:
        assert len(orders.list_orders(s)) == 2  # refused orders leave nothing behind


def test_payment_sells_exactly_the_reserved_keys(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, price=100)
    add_keys(shop, sku, [f"K-{n}" for n in range(5)])
    a = place(shop, sku.code, 2, email="a@example.com").order
    with shop.db.read() as s:
        held = [
            i
            for (i,) in s.execute(
                text("SELECT id FROM vault_key WHERE order_id = :o ORDER BY id"), {"o": a.id}
            )
        ]
    place(shop, sku.code, 2, email="b@example.com")
    fulfilment.handle_notification(shop, raw_notification(sandbox_body(a.order_no, 200)))
    with shop.db.read() as s:
        sold = [i for (i,) in s.execute(text("SELECT key_id FROM delivery_item ORDER BY key_id"))]
    assert sold == held
    assert _keys(shop) == {"sold": 2, "reserved": 2, "available": 1}


def test_expiry_and_cancellation_release_at_once(client: object, shop: fulfilment.Shop) -> None:
    sku = make_sku(shop)
    add_keys(shop, sku, ["K-1", "K-2"])
    a = place(shop, sku.code, 1, email="a@example.com")
    b = place(shop, sku.code, 1, email="b@example.com")
    assert _problem(place, shop, sku.code, 1, email="c@example.com") == "sold-out"
    # a's time runs out: the next buyer gets its key at once, with no sweep in between.
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET expires_at = :t WHERE id = :i"),
            {"t": utcnow() - timedelta(seconds=1), "i": a.order.id},
        )
    c = place(shop, sku.code, 1, email="c@example.com")
    with shop.db.read() as s:
        assert orders.get_order(s, a.order.order_no).status == "expired"
    # b cancels: released at once, and a cancelled order cannot be cancelled twice.
    assert (
        _problem(fulfilment.cancel_order, shop, b.order.order_no, "wrong-token")
        == "invalid-order-token"
    )
    assert fulfilment.cancel_order(shop, b.order.order_no, b.access_token).status == "cancelled"
    assert (
        _problem(fulfilment.cancel_order, shop, b.order.order_no, b.access_token)
        == "not-cancellable"
    )
    assert _keys(shop) == {"reserved": 1, "available": 1}
    place(shop, sku.code, 1, email="d@example.com")
    assert _keys(shop) == {"reserved": 2}
    assert c.order.status == "pending"


def test_per_buyer_caps(shop: fulfilment.Shop) -> None:
    shop.open_orders_per_buyer = 2
    shop.open_orders_per_ip = 3
    sku = make_sku(shop)
    add_keys(shop, sku, [f"K-{n}" for n in range(20)])
    data = orders.OrderIn(sku=sku.code, quantity=1, email="hoarder@example.com", gateway="sandbox")
    for _ in range(2):
        fulfilment.place_order(shop, data)
    assert _problem(fulfilment.place_order, shop, data) == "too-many-open-orders"
    # The same mailbox spelled another way is the same buyer.
    respelled = orders.OrderIn(
        sku=sku.code, quantity=1, email=" Hoarder@Example.COM", gateway="sandbox"
    )
    assert respelled.email == "hoarder@example.com"
    assert _problem(fulfilment.place_order, shop, respelled) == "too-many-open-orders"
    # A fresh address on the same device is still the same buyer.
    other = data.model_copy(update={"email": "alias@example.com"})
    fulfilment.place_order(shop, other, device_id="dev-1")
    fulfilment.place_order(
        shop, other.model_copy(update={"email": "alias2@example.com"}), device_id="dev-1"
    )
    assert (
        _problem(
            fulfilment.place_order,
            shop,
            other.model_copy(update={"email": "alias3@example.com"}),
            device_id="dev-1",
        )
        == "too-many-open-orders"
    )
    # Per IP, with a higher cap (shared carrier addresses).
    for n in range(3):
        fulfilment.place_order(
            shop, data.model_copy(update={"email": f"ip{n}@example.com"}), buyer_ip="10.0.0.1"
        )
    assert (
        _problem(
            fulfilment.place_order,
            shop,
            data.model_copy(update={"email": "ip9@example.com"}),
            buyer_ip="10.0.0.1",
        )
        == "too-many-open-orders"
    )
    # Paying an order frees a slot: only unpaid orders count.
    with shop.db.read() as s:
        first = orders.list_orders(s, email="hoarder@example.com")[0]
    fulfilment.handle_notification(
        shop, raw_notification(sandbox_body(first.order_no, first.amount_minor))
    )
    fulfilment.place_order(shop, data)


def _flash(
    shop: fulfilment.Shop, code: str, *, start: timedelta, end: timedelta, quota: int, limit: int
) -> None:
    now = utcnow()
    with shop.db.write() as s:
        catalog.set_flash_sale(
            s,
            code,
            catalog.FlashSaleIn(
                starts_at=now + start,
                ends_at=now + end,
                price_minor=99,
                per_buyer_limit=limit,
                quota=quota,
                reservation_minutes=2,
            ),
        )


def test_flash_sale_window_quota_limit_and_short_reservation(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "FLASH", price=5000)
    add_keys(shop, sku, [f"K-{n}" for n in range(10)])
    _flash(shop, "FLASH", start=timedelta(minutes=5), end=timedelta(minutes=10), quota=3, limit=2)
    assert _problem(place, shop, "FLASH", 1) == "flash-sale-not-started"
    _flash(shop, "FLASH", start=timedelta(minutes=-1), end=timedelta(minutes=10), quota=3, limit=2)
    a = place(shop, "FLASH", 2, email="a@example.com").order
    assert a.amount_minor == 198  # the sale price
    assert a.expires_at - a.created_at == timedelta(minutes=2)  # the shorter time to pay
    assert _problem(place, shop, "FLASH", 1, email="a@example.com") == "limit-reached"
    assert _problem(place, shop, "FLASH", 1, email="A@Example.com ") == "limit-reached"
    place(shop, "FLASH", 1, email="b@example.com")
    assert (
        _problem(place, shop, "FLASH", 1, email="c@example.com") == "sold-out"
    )  # quota, not stock
    assert _keys(shop) == {"reserved": 3, "available": 7}
    # An expired flash order gives its quota back as well as its keys.
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET expires_at = :t WHERE id = :i"),
            {"t": utcnow() - timedelta(seconds=1), "i": a.id},
        )
    assert fulfilment.expire_orders(shop) == 1
    place(shop, "FLASH", 2, email="c@example.com")
    with shop.db.read() as s:
        assert catalog.get_sku_on_sale(s, sku.code)[1].taken == 3  # type: ignore[union-attr]
    _flash(shop, "FLASH", start=timedelta(minutes=-10), end=timedelta(minutes=-1), quota=3, limit=2)
    assert _problem(place, shop, "FLASH", 1, email="d@example.com") == "flash-sale-ended"


def test_flash_limit_counts_a_buyer_by_mail_and_by_device_once(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, [f"K-{n}" for n in range(10)])
    _flash(shop, "FLASH", start=timedelta(minutes=-1), end=timedelta(minutes=10), quota=9, limit=2)

    def buy(email: str, device: str | None) -> fulfilment.PlacedOrder:
        data = orders.OrderIn(sku="FLASH", quantity=1, email=email, gateway="sandbox")
        return fulfilment.place_order(shop, data, device_id=device)

    # One order matched by both its e-mail and its device counts once.
    buy("a@example.com", "dev-1")
    buy("a@example.com", "dev-1")
    assert _problem(buy, "a@example.com", "dev-2") == "limit-reached"  # by e-mail
    assert _problem(buy, "b@example.com", "dev-1") == "limit-reached"  # by device
    buy("b@example.com", "dev-2")
    buy("c@example.com", "dev-2")
    assert _problem(buy, "d@example.com", "dev-2") == "limit-reached"
    buy("c@example.com", None)
    assert _problem(buy, "c@example.com", None) == "limit-reached"
    # A cancelled order holds nothing.
    cancelled = buy("e@example.com", None)
    fulfilment.cancel_order(shop, cancelled.order.order_no, cancelled.access_token)
    buy("e@example.com", None)
    buy("e@example.com", "dev-3")


def test_flash_limit_reads_only_the_buyers_orders(shop: fulfilment.Shop) -> None:
    """The per-buyer counts go by (email, sku_id) and (device_id, sku_id), on both databases.

    Through (sku_id, status), SQLite's choice without statistics for `email = ? OR device_id =
    ?`, it read every order of the SKU, and a flash sale slowed with each sale. PostgreSQL, with
    statistics older than the rows (here: none yet, as on a new shop), took any index that began
    with sku_id for the same reason (migration 0015)."""
    from kami.orders.queries import _COUNT_OPEN_AND_HELD, _HELD

    values = {
        "sku_id": 1,
        "since": utcnow(),
        "email": "a@example.com",
        "device_id": "dev-1",
        "buyer_ip": "10.0.0.1",
    }
    for statement in (_HELD, _COUNT_OPEN_AND_HELD):
        with shop.db.read() as s:
            conn = s.connection()
            plan = statement._plan(conn.dialect)
            params = plan.parameters({k: values[k] for k in statement.keys})
            if shop.db.dialect == "sqlite":
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + plan.sql, params)
                text_plan = "\n".join(r[3] for r in rows)
                assert " SCAN " not in f" {text_plan} ".replace("SCAN CONSTANT ROW", "")
            else:
                rows = conn.exec_driver_sql("EXPLAIN " + plan.sql, params)
                text_plan = "\n".join(r[0] for r in rows)
                assert "Seq Scan" not in text_plan
        assert "ix_orders_order_email_sku" in text_plan
        assert "ix_orders_order_device_sku" in text_plan
        if statement is _COUNT_OPEN_AND_HELD:
            assert "ix_orders_order_sku_ip_pending" in text_plan
        assert "sku_status" not in text_plan
        assert "status_sku" not in text_plan


def _race(shop: fulfilment.Shop, code: str, buyers: int) -> list[str]:
    """`buyers` threads each try to buy one unit at the same moment; their answers."""
    start = threading.Barrier(buyers, timeout=30)

    def buy(n: int) -> str:
        start.wait()
        try:
            place(shop, code, 1, email=f"racer{n}@example.com")
            return "ok"
        except KamiError as exc:
            return exc.slug

    with ThreadPoolExecutor(buyers) as pool:
        return list(pool.map(buy, range(buyers)))


def test_64_threads_racing_for_10_keys_get_exactly_10(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "RACE")
    add_keys(shop, sku, [f"K-{n}" for n in range(10)])
    results = _race(shop, "RACE", 64)
    assert results.count("ok") == 10
    assert results.count("sold-out") == 54
    assert _keys(shop) == {"reserved": 10}
    with shop.db.read() as s:
        assert s.execute(text("SELECT count(DISTINCT order_id) FROM vault_key")).scalar_one() == 10


def test_flash_quota_under_a_race(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "FQ")
    add_keys(shop, sku, [f"K-{n}" for n in range(50)])
    _flash(shop, "FQ", start=timedelta(minutes=-1), end=timedelta(minutes=10), quota=7, limit=1)
    results = _race(shop, "FQ", 32)
    assert results.count("ok") == 7 and results.count("sold-out") == 25
    assert _keys(shop)["reserved"] == 7


def test_flash_limit_under_a_race_of_one_buyer(shop: fulfilment.Shop) -> None:
    """One buyer's concurrent checkouts (by e-mail, then by device) cannot pass the limit: the
    buyer's lock is taken before their holdings are counted."""
    sku = make_sku(shop, "FL")
    add_keys(shop, sku, [f"K-{n}" for n in range(50)])
    _flash(shop, "FL", start=timedelta(minutes=-1), end=timedelta(minutes=10), quota=50, limit=2)
    threads = 16
    start = threading.Barrier(threads, timeout=30)

    def buy(n: int, by_device: bool) -> str:
        email = f"racer{n}@example.com" if by_device else "racer@example.com"
        data = orders.OrderIn(sku="FL", quantity=1, email=email, gateway="sandbox")
        start.wait()
        try:
            fulfilment.place_order(shop, data, device_id="dev-race" if by_device else None)
            return "ok"
        except KamiError as exc:
            return exc.slug

    for by_device in (False, True):
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(buy, range(threads), [by_device] * threads))
        assert results.count("ok") == 2, (by_device, results)
        assert results.count("limit-reached") == threads - 2
    assert _keys(shop)["reserved"] == 4
