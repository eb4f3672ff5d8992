"""Reservation at order time, on both databases (issue: flash-sale scale)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from kami import catalog, fulfilment, orders
from kami.fulfilment import checkout
from kami.fulfilment.goods import stock
from kami.fulfilment.shop import FLASH_MEMO, SOLD_OUT_ANSWER, SOLD_OUT_MEMO
from kami.kernel import waiting
from kami.kernel.clock import utcnow
from kami.kernel.errors import KamiError
from kami.kernel.pgcursor import LeanCursor
from tests.conftest import (
    BACKEND,
    add_keys,
    make_sku,
    open_flash_sale,
    place,
    raw_notification,
    sandbox_body,
)


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


def test_flash_sale_window_quota_limit_and_short_reservation(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "FLASH", price=5000)
    add_keys(shop, sku, [f"K-{n}" for n in range(10)])
    open_flash_sale(
        shop, "FLASH", start=timedelta(minutes=5), end=timedelta(minutes=10), quota=3, limit=2
    )
    assert _problem(place, shop, "FLASH", 1) == "flash-sale-not-started"
    open_flash_sale(shop, "FLASH", quota=3, limit=2)
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
    open_flash_sale(
        shop, "FLASH", start=timedelta(minutes=-10), end=timedelta(minutes=-1), quota=3, limit=2
    )
    assert _problem(place, shop, "FLASH", 1, email="d@example.com") == "flash-sale-ended"


def test_flash_limit_counts_a_buyer_by_mail_and_by_device_once(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, [f"K-{n}" for n in range(10)])
    open_flash_sale(shop, "FLASH", quota=9, limit=2)

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
    from kami.orders.buyer_counts import _COUNT_OPEN_AND_HELD, _HELD, _HELD_IN_SALE

    values = {
        "sku_id": 1,
        "since": utcnow(),
        "sale_id": 1,
        "email": "a@example.com",
        "device_id": "dev-1",
        "buyer_ip": "10.0.0.1",
    }
    for statement in (_HELD, _HELD_IN_SALE, _COUNT_OPEN_AND_HELD):
        with shop.db.read() as s:
            conn = s.connection()
            plan = statement.plan(conn.dialect)
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
    open_flash_sale(shop, "FQ", quota=7, limit=1)
    results = _race(shop, "FQ", 32)
    assert results.count("ok") == 7 and results.count("sold-out") == 25
    assert _keys(shop)["reserved"] == 7


def test_flash_limit_under_a_race_of_one_buyer(shop: fulfilment.Shop) -> None:
    """One buyer's concurrent checkouts (by e-mail, then by device) cannot pass the limit: the
    buyer's lock is taken before their holdings are counted."""
    sku = make_sku(shop, "FL")
    add_keys(shop, sku, [f"K-{n}" for n in range(50)])
    open_flash_sale(shop, "FL", quota=50, limit=2)
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


def test_the_checkout_reads_its_sku_and_takes_the_buyers_locks_in_one_statement(
    shop: fulfilment.Shop,
) -> None:
    """PostgreSQL: the write transaction's first statement reads the SKU and its sale and takes
    the buyer's advisory locks, held to the end of the transaction; an unknown SKU takes none."""
    if shop.db.dialect != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's; SQLite's one writer serialises checkouts")
    make_sku(shop, "LK")
    open_flash_sale(shop, "LK", quota=5, limit=1)
    keys = orders.buyer_lock_keys("LK", ["e:a@example.com", "d:dev-1"])
    assert len(keys) == 2 and keys == sorted(keys)

    def held() -> set[int]:
        with shop.db.engine.connect() as other:
            rows = other.execute(
                text(
                    "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted"
                )
            )
            return {int(r[0]) for r in rows}

    mine = set(keys)
    with shop.db.write() as s:
        assert catalog.find_sku_on_sale(s, "NOPE", locks=keys) is None
        assert not held() & mine
        sku, sale = catalog.get_sku_on_sale(s, "LK", locks=keys)
        assert sku.code == "LK" and sale is not None and sale.quota == 5
        assert held() & mine == mine
    assert not held() & mine


def test_a_checkout_waits_for_its_buyers_lock_held_elsewhere(shop: fulfilment.Shop) -> None:
    """PostgreSQL: while another session holds one of the buyer's locks, that buyer's checkout
    cannot count their orders; one that may not wait is refused (WouldWait) with nothing
    written, and goes through once the lock is let go. Another buyer is not held up."""
    if shop.db.dialect != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's; SQLite's one writer serialises checkouts")
    add_keys(shop, make_sku(shop, "LW"), ["LW-1", "LW-2"])
    data = orders.OrderIn(sku="LW", quantity=1, email="held@example.com", gateway="sandbox")
    (key,) = orders.buyer_lock_keys("LW", ["e:held@example.com"])
    with shop.db.engine.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        with waiting.no_waiting(), pytest.raises(waiting.WouldWait):
            fulfilment.open_order(shop, data)
        place(shop, "LW", 1, email="free@example.com")
        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    assert _keys(shop) == {"reserved": 1, "available": 1}
    with waiting.no_waiting():
        assert fulfilment.open_order(shop, data).created
    assert _keys(shop) == {"reserved": 2}


def test_an_unknown_sku_is_answered_before_a_reused_idempotency_key(
    shop: fulfilment.Shop,
) -> None:
    """Both databases give the same answers in the same order: an unknown SKU first, then a
    key reused with another request, then the replay of the first order."""
    add_keys(shop, make_sku(shop, "IK"), ["IK-1"])
    data = orders.OrderIn(sku="IK", quantity=1, email="k@example.com", gateway="sandbox")
    first = fulfilment.place_order(shop, data, idempotency_key="key-1")
    unknown = data.model_copy(update={"sku": "NO-SUCH"})
    assert _problem(fulfilment.place_order, shop, unknown, idempotency_key="key-1") == "not-found"
    other = data.model_copy(update={"email": "other@example.com"})
    assert (
        _problem(fulfilment.place_order, shop, other, idempotency_key="key-1")
        == "idempotency-key-reused"
    )
    again = fulfilment.place_order(shop, data, idempotency_key="key-1")
    assert again.order.order_no == first.order.order_no and not again.created


def test_a_lapsed_flash_order_gives_its_quota_to_the_next_buyer_at_once(
    shop: fulfilment.Shop,
) -> None:
    """The quota is taken last (decision 0018); when it is gone, unpaid orders past their time
    go back on sale in the same transaction, as lapsed card keys already did."""
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, [f"K-{n}" for n in range(5)])
    open_flash_sale(shop, "FLASH", quota=1, limit=1)
    a = place(shop, "FLASH", 1, email="a@example.com").order
    assert _problem(place, shop, "FLASH", 1, email="b@example.com") == "sold-out"
    assert _keys(shop) == {"reserved": 1, "available": 4}  # b's claim went back with its order
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET expires_at = :t WHERE id = :i"),
            {"t": utcnow() - timedelta(seconds=1), "i": a.id},
        )
    shop.forget_sold_out()  # as if b's memory of "sold out" were older than this moment
    place(shop, "FLASH", 1, email="c@example.com")
    with shop.db.read() as s:
        assert orders.get_order(s, a.order_no).status == "expired"
        assert catalog.get_sku_on_sale(s, "FLASH")[1].taken == 1  # type: ignore[union-attr]
    assert _keys(shop) == {"reserved": 1, "available": 4}


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """The shop's memory of sold-out answers and flash sales, on a clock the test moves."""
    fake = _Clock()
    monkeypatch.setattr("kami.fulfilment.shop.monotonic", fake)
    return fake


def _raise_quota(shop: fulfilment.Shop, code: str) -> None:
    """More quota behind this process's back, as another process's admin would."""
    with shop.db.write() as s:
        s.execute(
            text(
                "UPDATE catalog_flash_sale SET quota = quota + 1 WHERE sku_id = "
                "(SELECT id FROM catalog_sku WHERE code = :c)"
            ),
            {"c": code},
        )


def test_sold_out_is_answered_from_memory_for_a_moment(
    shop: fulfilment.Shop, clock: _Clock
) -> None:
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, [f"K-{n}" for n in range(5)])
    open_flash_sale(shop, "FLASH", quota=1, limit=1)
    place(shop, "FLASH", 1, email="a@example.com")
    # The write path refuses: the next checkout reads before it queues for the writer.
    assert _problem(place, shop, "FLASH", 1, email="b@example.com") == "sold-out"
    assert shop.recently_sold_out("FLASH") and not shop.sold_out_just_now("FLASH", 1)
    # The read refuses: for SOLD_OUT_ANSWER the answer comes from memory.
    assert _problem(place, shop, "FLASH", 1, email="c@example.com") == "sold-out"
    assert shop.sold_out_just_now("FLASH", 1) and shop.sold_out_just_now("FLASH", 2)
    _raise_quota(shop, "FLASH")
    assert _problem(place, shop, "FLASH", 1, email="d@example.com") == "sold-out"
    clock.now += SOLD_OUT_ANSWER
    place(shop, "FLASH", 1, email="d@example.com")  # asked again, and there was one more


def test_sold_out_memory_holds_for_the_quantity_refused_or_more(
    shop: fulfilment.Shop, clock: _Clock
) -> None:
    sku = make_sku(shop)
    add_keys(shop, sku, ["K-1", "K-2"])
    place(shop, sku.code, 1, email="a@example.com")
    assert _problem(place, shop, sku.code, 2, email="b@example.com") == "sold-out"
    assert _problem(place, shop, sku.code, 2, email="c@example.com") == "sold-out"  # the read
    assert shop.sold_out_just_now(sku.code, 2) and shop.sold_out_just_now(sku.code, 3)
    assert not shop.sold_out_just_now(sku.code, 1)
    place(shop, sku.code, 1, email="d@example.com")  # one was left


def test_sold_out_memory_never_outlasts_the_first_reservation_due_back(
    shop: fulfilment.Shop, clock: _Clock
) -> None:
    shop.mark_sold_out("SKU-X", 1, answer_for=0.01)
    assert shop.sold_out_just_now("SKU-X", 1)
    clock.now += 0.01
    assert not shop.sold_out_just_now("SKU-X", 1) and shop.recently_sold_out("SKU-X")
    shop.mark_sold_out("SKU-X", 1, answer_for=None)  # no unpaid order at all
    clock.now += SOLD_OUT_ANSWER - 0.001
    assert shop.sold_out_just_now("SKU-X", 1)
    clock.now += 0.001
    assert not shop.sold_out_just_now("SKU-X", 1)


def test_goods_back_on_sale_in_this_process_end_the_memory(
    shop: fulfilment.Shop, clock: _Clock
) -> None:
    sku = make_sku(shop)
    add_keys(shop, sku, ["K-1"])
    a = place(shop, sku.code, 1, email="a@example.com")
    for email in ("b@example.com", "c@example.com"):  # the write path, then the read
        assert _problem(place, shop, sku.code, 1, email=email) == "sold-out"
    assert shop.sold_out_just_now(sku.code, 1)
    fulfilment.cancel_order(shop, a.order.order_no, a.access_token)
    b = place(shop, sku.code, 1, email="b@example.com")  # at once
    for email in ("c@example.com", "d@example.com"):
        assert _problem(place, shop, sku.code, 1, email=email) == "sold-out"
    assert shop.sold_out_just_now(sku.code, 1)
    add_keys(shop, sku, ["K-2"])
    place(shop, sku.code, 1, email="c@example.com")  # at once
    assert b.order.status == "pending"


def test_the_read_path_keeps_a_sold_out_skus_buyers_off_the_writer(
    shop: fulfilment.Shop, clock: _Clock
) -> None:
    """While reads keep saying "sold out", the SKU stays marked: its buyers do not all go to
    the write path once a second (they queued there for the writer, all at once)."""
    sku = make_sku(shop)
    add_keys(shop, sku, ["K-1"])
    place(shop, sku.code, 1, email="a@example.com")
    assert _problem(place, shop, sku.code, 1, email="b@example.com") == "sold-out"
    for n in range(4):
        clock.now += SOLD_OUT_MEMO * 0.6
        assert shop.recently_sold_out(sku.code)
        assert _problem(place, shop, sku.code, 1, email=f"r{n}@example.com") == "sold-out"


def test_a_keyed_checkout_after_sold_out_is_answered_early_unless_its_key_placed_an_order(
    shop: fulfilment.Shop, clock: _Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout with an Idempotency-Key (the storefront's form sends one with every order)
    after a SKU sold out is answered "sold out" as a keyless one is, from a read, without a
    write transaction, if its key placed nothing; a retry of an order placed gets it back,
    and a different body with that key its 409. Whether or not the process remembers the SKU
    sold out: a keyed checkout reads the stock, then its key."""
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, ["K-1"])
    open_flash_sale(shop, "FLASH", quota=1, limit=1)
    data = {"sku": "FLASH", "quantity": 1, "gateway": "sandbox"}
    first = fulfilment.open_order(
        shop, orders.OrderIn(email="a@example.com", **data), idempotency_key="key-a"
    )
    assert _problem(place, shop, "FLASH", 1, email="b@example.com") == "sold-out"
    assert shop.recently_sold_out("FLASH") and not shop.sold_out_just_now("FLASH", 1)
    writes = []
    real_write = shop.db.write

    def counted_write() -> object:
        writes.append(1)
        return real_write()

    monkeypatch.setattr(shop.db, "write", counted_write)
    late = orders.OrderIn(email="c@example.com", **data)
    for memory in (False, True):  # the read finds it sold out; then memory says so
        assert shop.sold_out_just_now("FLASH", 1) is memory
        assert _problem(fulfilment.open_order, shop, late, idempotency_key="key-c") == "sold-out"
        assert writes == []
        again = fulfilment.open_order(
            shop, orders.OrderIn(email="a@example.com", **data), idempotency_key="key-a"
        )
        assert (again.order.order_no, again.created) == (first.order.order_no, False)
        other_body = orders.OrderIn(email="z@example.com", **data)
        assert (
            _problem(fulfilment.open_order, shop, other_body, idempotency_key="key-a")
            == "idempotency-key-reused"
        )
        writes.clear()
        # The keyless read that refuses next puts the answer in memory for a moment.
        assert _problem(place, shop, "FLASH", 1, email="d@example.com") == "sold-out"
    with shop.db.read() as s:
        assert orders.idempotency_keys_used(s, ["key-a", "key-c", "key-a"]) == [True, False, True]


@pytest.mark.parametrize("on_sale", [False, True])
def test_a_keyed_refusal_reads_the_sku_then_the_rest_in_one_round_trip(
    shop: fulfilment.Shop, monkeypatch: pytest.MonkeyPatch, on_sale: bool
) -> None:
    """Decision 0024: after the SKU's row, `sold_out_for` reads the stock (unless a flash
    sale's quota is gone), when the next unpaid order lapses and the buyers' keys in one round
    trip on PostgreSQL, in that order (the keys after the stock, decision 0023): two round
    trips, where a plain SKU took four and a sale with its quota gone three."""
    if BACKEND != "postgresql":
        pytest.skip("round trips are PostgreSQL's")
    add_keys(shop, make_sku(shop, "GONE"), ["K-1"])
    if on_sale:
        open_flash_sale(shop, "GONE", quota=1, limit=1)
    data = {"sku": "GONE", "quantity": 1, "gateway": "sandbox"}
    fulfilment.open_order(shop, orders.OrderIn(email="a@example.com", **data), idempotency_key="a")
    late = orders.OrderIn(email="c@example.com", **data)
    assert checkout.sold_out_for(shop, late, ["c"]) == [False]  # its statements prepared
    trips: list[list[str]] = []
    for name in ("execute", "execute_all"):
        real = getattr(LeanCursor, name)

        def counted(self: LeanCursor, *args: Any, _real: Any = real, _name: str = name) -> Any:
            sql = [q for q, _ in args[0]] if _name == "execute_all" else [args[0]]
            trips.append([q.split("FROM ")[1].split()[0] for q in sql])
            return _real(self, *args)

        monkeypatch.setattr(LeanCursor, name, counted)
    assert checkout.sold_out_for(shop, late, ["c", "a"]) == [False, True]
    stock = [] if on_sale else ["vault_key"]
    assert trips == [
        ["catalog_sku"],
        [*stock, "orders_order", "orders_order", "orders_order"],  # the lapse, then the keys
    ]


def test_a_keyed_checkout_is_not_answered_from_the_memory_of_sold_out(
    shop: fulfilment.Shop, clock: _Clock
) -> None:
    """Goods back on sale behind this process's back (another process's cancellation) while
    it remembers the SKU sold out: a keyless buyer of that moment is told "sold out" from
    memory, the race every buyer has; a keyed one reads the stock and gets the key. Its
    retry's first try could be the one that takes it (decision 0023)."""
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, ["K-1"])
    open_flash_sale(shop, "FLASH", quota=2, limit=1)
    a = place(shop, "FLASH", 1, email="a@example.com")
    for email in ("b@example.com", "c@example.com"):  # the write path, then the read
        assert _problem(place, shop, "FLASH", 1, email=email) == "sold-out"
    assert shop.sold_out_just_now("FLASH", 1)
    with shop.db.write() as s:  # as another process's cancellation writes it
        s.execute(
            text("UPDATE orders_order SET status = 'cancelled' WHERE id = :o"), {"o": a.order.id}
        )
        s.execute(
            text("UPDATE vault_key SET status = 'available', order_id = NULL WHERE order_id = :o"),
            {"o": a.order.id},
        )
    assert _problem(place, shop, "FLASH", 1, email="d@example.com") == "sold-out"
    keyed = fulfilment.open_order(
        shop,
        orders.OrderIn(sku="FLASH", quantity=1, email="e@example.com", gateway="sandbox"),
        idempotency_key="key-e",
    )
    assert keyed.created


@pytest.mark.parametrize("first_try", ["holding", "committing"])
def test_a_retry_whose_first_try_took_the_last_goods_is_never_told_sold_out(
    shop: fulfilment.Shop, clock: _Clock, monkeypatch: pytest.MonkeyPatch, first_try: str
) -> None:
    """The early answer to a keyed checkout needs no wait for the buyer's checkouts in flight,
    because the key is looked up after the stock was read (decision 0023). A first try that
    holds the last key, not yet committed, leaves the key counted as there, so its retry goes
    to the write path ("holding"); one that commits while the retry reads, between the SKU and
    the stock, has its order found by the key read after the stock on PostgreSQL, while on
    SQLite the whole read is one snapshot that still counts the key ("committing"). Either way
    the retry ends with the order first placed, never "sold out"."""
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, ["K-1", "K-2"])
    open_flash_sale(shop, "FLASH", quota=2, limit=1)
    place(shop, "FLASH", 1, email="a@example.com")
    data = orders.OrderIn(sku="FLASH", quantity=1, email="t@example.com", gateway="sandbox")
    reserved, go_on = threading.Event(), threading.Event()
    real_reserve = stock.reserve
    first_thread: list[threading.Thread] = []

    def reserve_then_hold(*args: Any, **kwargs: Any) -> Any:
        done = real_reserve(*args, **kwargs)
        if threading.current_thread() in first_thread:
            reserved.set()
            assert go_on.wait(10)
        return done

    monkeypatch.setattr("kami.fulfilment.checkout.reserve", reserve_then_hold)
    opened: list[checkout.OpenedOrder] = []
    t = threading.Thread(
        target=lambda: opened.append(fulfilment.open_order(shop, data, idempotency_key="key-t"))
    )
    first_thread.append(t)
    t.start()
    try:
        assert reserved.wait(10)
        shop.mark_sold_out("FLASH", 1)  # another buyer was just refused
        if first_try == "holding":
            with waiting.no_waiting(), pytest.raises(waiting.WouldWait):
                fulfilment.open_order(shop, data, idempotency_key="key-t")  # the write path
        else:
            real_find = catalog.find_sku_on_sale

            def first_try_commits_meanwhile(*args: Any, **kwargs: Any) -> Any:
                found = real_find(*args, **kwargs)
                if threading.current_thread() is not t and not go_on.is_set():
                    go_on.set()
                    t.join(10)
                    assert opened  # committed
                return found

            monkeypatch.setattr(catalog, "find_sku_on_sale", first_try_commits_meanwhile)
            with waiting.no_waiting():
                again = fulfilment.open_order(shop, data, idempotency_key="key-t")
            assert go_on.is_set()
            assert (again.order.order_no, again.created) == (opened[0].order.order_no, False)
    finally:
        go_on.set()
        t.join(10)
    again = fulfilment.open_order(shop, data, idempotency_key="key-t")
    assert (again.order.order_no, again.created) == (opened[0].order.order_no, False)
    assert _keys(shop) == {"reserved": 2}


def test_flash_sales_are_known_to_the_shop(shop: fulfilment.Shop, clock: _Clock) -> None:
    """Which SKUs' checkouts the web layer runs first (decision 0018): those with a flash sale
    that has not ended, read every FLASH_MEMO seconds, and any a checkout finds one on."""
    for code in ("LIVE", "SOON", "OVER", "PLAIN", "FOUND"):
        make_sku(shop, code)
    open_flash_sale(shop, "LIVE", quota=5, limit=1)
    open_flash_sale(
        shop, "SOON", start=timedelta(minutes=5), end=timedelta(minutes=10), quota=5, limit=1
    )
    open_flash_sale(
        shop, "OVER", start=timedelta(minutes=-9), end=timedelta(minutes=-1), quota=5, limit=1
    )
    assert shop.flash_sales_stale()
    shop.read_flash_sales()
    assert not shop.flash_sales_stale()
    assert [c for c in ("LIVE", "SOON", "OVER", "PLAIN") if shop.on_flash_sale(c)] == [
        "LIVE",
        "SOON",
    ]
    open_flash_sale(shop, "FOUND", quota=5, limit=1)
    assert not shop.on_flash_sale("FOUND")
    assert _problem(place, shop, "FOUND", 1) == "sold-out"  # no keys; the sale was seen
    assert shop.on_flash_sale("FOUND")
    clock.now += FLASH_MEMO
    assert shop.flash_sales_stale()
