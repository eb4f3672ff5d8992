"""A flash sale's checkouts placed together (decision 0020), on both databases: each buyer gets
the answer they would have had alone, and a group that cannot be placed as one writes nothing."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from kami import catalog, fulfilment, orders, vault
from kami.kernel.clock import utcnow
from kami.kernel.errors import KamiError
from tests.conftest import add_keys, make_sku, open_flash_sale, place


def _checkout(
    email: str,
    *,
    sku: str = "FLASH",
    quantity: int = 1,
    device: str | None = None,
    ip: str | None = None,
    gateway: str = "sandbox",
) -> fulfilment.Checkout:
    data = orders.OrderIn(sku=sku, quantity=quantity, email=email, gateway=gateway)
    return fulfilment.Checkout(data, ip, device)


def _answer(outcome: fulfilment.together.Outcome) -> str:
    if outcome is None:
        return "alone"
    if isinstance(outcome, KamiError):
        return outcome.slug
    return "placed"


def _state(shop: fulfilment.Shop, code: str = "FLASH") -> dict[str, object]:
    with shop.db.read() as s:
        keys = dict(s.execute(text("SELECT status, count(*) FROM vault_key GROUP BY status")).all())
        pending = s.execute(
            text("SELECT count(*) FROM orders_order WHERE status = 'pending'")
        ).scalar_one()
        sale = catalog.get_sku_on_sale(s, code)[1]
    return {"keys": keys, "pending": pending, "taken": sale.taken if sale else None}


def _keys_of(shop: fulfilment.Shop, order_id: int) -> list[tuple[int, str]]:
    with shop.db.read() as s:
        return list(
            s.execute(
                text("SELECT id, status FROM vault_key WHERE order_id = :o ORDER BY id"),
                {"o": order_id},
            ).tuples()
        )


def test_each_buyer_gets_the_answer_they_would_have_had_alone(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "FLASH", max_quantity=3)
    add_keys(shop, sku, [f"K-{n}" for n in range(20)])
    open_flash_sale(shop, "FLASH", quota=6, limit=2)
    group = [
        _checkout("a@example.com", quantity=2),
        _checkout("b@example.com", device="dev-b"),
        _checkout("a@example.com"),  # a holds 2 already, placed just before in the group
        _checkout("c@example.com", gateway="nowhere"),
        _checkout("d@example.com", quantity=3),  # over the per-buyer limit on its own
        _checkout("e@example.com", device="dev-b"),  # b's device, b's one unit counted
        _checkout("f@example.com", quantity=2),
        _checkout("g@example.com"),
        _checkout("h@example.com"),  # the quota (6) is gone by now
        _checkout("b@example.com", sku="OTHER"),  # another SKU: alone
    ]
    outcomes = fulfilment.open_orders_together(shop, group)
    assert [_answer(o) for o in outcomes] == [
        "placed",
        "placed",
        "limit-reached",
        "unknown-gateway",
        "limit-reached",
        "placed",
        "placed",
        "sold-out",
        "sold-out",
        "alone",
    ]
    placed = [o for o in outcomes if isinstance(o, fulfilment.OpenedOrder)]
    assert [p.order.email for p in placed] == [
        "a@example.com",
        "b@example.com",
        "e@example.com",
        "f@example.com",
    ]
    assert all(p.created and p.order.status == "pending" for p in placed)
    assert [p.order.amount_minor for p in placed] == [198, 99, 99, 198]  # the sale price
    assert placed[0].order.expires_at - placed[0].order.created_at == timedelta(minutes=2)
    with shop.db.read() as s:
        written = s.execute(
            text("SELECT device_id, buyer_ip, channel FROM orders_order WHERE id = :i"),
            {"i": placed[1].order.id},
        ).one()
    assert tuple(written) == ("dev-b", None, "shop")
    # Each order holds exactly its own keys, reserved; the quota counts every unit.
    held = [_keys_of(shop, p.order.id) for p in placed]
    assert [len(h) for h in held] == [2, 1, 1, 2]
    assert all(status == "reserved" for h in held for _, status in h)
    assert len({k for h in held for k, _ in h}) == 6
    assert _state(shop) == {"keys": {"reserved": 6, "available": 14}, "pending": 4, "taken": 6}
    # What was placed together stands as placed alone would: the next buyer alone is refused.
    with pytest.raises(KamiError) as exc:
        place(shop, "FLASH", 1, email="z@example.com")
    assert exc.value.slug == "sold-out"
    with pytest.raises(KamiError) as exc:
        place(shop, "FLASH", 1, email="a@example.com")
    assert exc.value.slug == "sold-out"  # the quota is checked first, as alone


def _capped_sale(shop: fulfilment.Shop, **caps: int) -> fulfilment.Shop:
    """The shop with these caps on unpaid orders, and a flash sale on FLASH (20 keys, quota 20,
    10 per buyer) where only the caps refuse."""
    shop = dataclasses.replace(shop, **caps)
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, [f"K-{n}" for n in range(20)])
    open_flash_sale(shop, "FLASH", quota=20, limit=10)
    return shop


def _answers(shop: fulfilment.Shop, group: list[fulfilment.Checkout]) -> list[str]:
    return [_answer(o) for o in fulfilment.open_orders_together(shop, group)]


def test_the_caps_on_unpaid_orders_count_the_group_too(shop: fulfilment.Shop) -> None:
    shop = _capped_sale(shop, open_orders_per_buyer=2, open_orders_per_ip=3)
    place(shop, "FLASH", 1, email="a@example.com")
    group = [
        _checkout("a@example.com", ip="10.0.0.1"),
        _checkout("a@example.com", ip="10.0.0.2"),  # a's third unpaid order
        _checkout("b@example.com", device="dev-1", ip="10.0.0.1"),
        _checkout("c@example.com", device="dev-1", ip="10.0.0.1"),
        _checkout("d@example.com", device="dev-1", ip="10.0.0.2"),  # dev-1's third
        _checkout("e@example.com", ip="10.0.0.1"),  # 10.0.0.1's fourth
        _checkout("f@example.com", ip="10.0.0.3"),
    ]
    assert _answers(shop, group) == [
        "placed",
        "too-many-open-orders",
        "placed",
        "placed",
        "too-many-open-orders",
        "too-many-open-orders",
        "placed",
    ]
    assert _state(shop)["pending"] == 5


def test_an_address_counted_once_counts_for_every_buyer_from_it(shop: fulfilment.Shop) -> None:
    # The group counts each address once, for its first buyer: the orders it already had
    # must still count for the buyers after that one.
    shop = _capped_sale(shop, open_orders_per_ip=3)
    for n in range(2):
        data = orders.OrderIn(sku="FLASH", email=f"early{n}@example.com", gateway="sandbox")
        fulfilment.open_order(shop, data, buyer_ip="10.0.0.9")
    group = [
        _checkout("a@example.com", ip="10.0.0.9"),  # the address's third
        _checkout("b@example.com", ip="10.0.0.8"),
        _checkout("c@example.com", ip="10.0.0.9"),  # its fourth
        _checkout("d@example.com", ip="10.0.0.9"),
        _checkout("e@example.com", ip="10.0.0.8"),
    ]
    assert _answers(shop, group) == [
        "placed",
        "placed",
        "too-many-open-orders",
        "too-many-open-orders",
        "placed",
    ]
    assert _state(shop)["pending"] == 5


def test_a_group_that_cannot_be_placed_as_one_writes_nothing(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, ["K-1", "K-2"])
    open_flash_sale(shop, "FLASH", quota=5)
    before = _state(shop)
    # Fewer keys than the quota: the claim comes up short, and each is placed alone.
    group = [_checkout(f"{n}@example.com") for n in "abc"]
    assert fulfilment.open_orders_together(shop, group) == [None, None, None]
    assert _state(shop) == before
    answers = []
    for c in group:
        try:
            fulfilment.open_order(shop, c.data)
            answers.append("placed")
        except KamiError as exc:
            answers.append(exc.slug)
    assert answers == ["placed", "placed", "sold-out"]


def test_a_lapsed_reservation_sends_the_group_alone_and_is_put_back_by_it(
    shop: fulfilment.Shop,
) -> None:
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, [f"K-{n}" for n in range(5)])
    open_flash_sale(shop, "FLASH", quota=2)
    first = place(shop, "FLASH", 1, email="a@example.com").order
    place(shop, "FLASH", 1, email="b@example.com")
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET expires_at = :t WHERE id = :i"),
            {"t": utcnow() - timedelta(seconds=1), "i": first.id},
        )
    before = _state(shop)
    group = [_checkout("c@example.com"), _checkout("d@example.com")]
    assert fulfilment.open_orders_together(shop, group) == [None, None]
    assert _state(shop) == before  # the release was rolled back with the rest
    fulfilment.open_order(shop, group[0].data)  # alone, it puts the lapsed one back and sells
    with pytest.raises(KamiError) as exc:
        fulfilment.open_order(shop, group[1].data)
    assert exc.value.slug == "sold-out"


def test_idempotency_keys_are_answered_in_a_group_as_alone(shop: fulfilment.Shop) -> None:
    """A key used before gets its order back (or a 409 for another body), a new one is written
    with its order, and one that comes twice in the group is placed alone the second time."""
    sku = make_sku(shop, "FLASH", max_quantity=3)
    add_keys(shop, sku, [f"K-{n}" for n in range(10)])
    open_flash_sale(shop, "FLASH", quota=10, limit=3)
    before = fulfilment.open_order(
        shop, _checkout("a@example.com").data, idempotency_key="key-a"
    ).order

    def keyed(email: str, key: str, quantity: int = 1) -> fulfilment.Checkout:
        c = _checkout(email, quantity=quantity)
        return dataclasses.replace(c, idempotency_key=key)

    group = [
        keyed("a@example.com", "key-a"),  # a retry: the order placed before
        keyed("b@example.com", "key-a"),  # the same key, another body: in the group, alone
        keyed("c@example.com", "key-c"),
        keyed("c@example.com", "key-c"),  # a retry within the group: alone, after it
        keyed("d@example.com", "key-a", quantity=2),
        _checkout("e@example.com"),
    ]
    outcomes = fulfilment.open_orders_together(shop, group)
    assert [_answer(o) for o in outcomes] == [
        "placed",
        "alone",
        "placed",
        "alone",
        "alone",
        "placed",
    ]
    replay, new_c = outcomes[0], outcomes[2]
    assert isinstance(replay, fulfilment.OpenedOrder) and isinstance(new_c, fulfilment.OpenedOrder)
    assert (replay.order.order_no, replay.created) == (before.order_no, False)
    assert new_c.created
    assert _state(shop)["pending"] == 3  # a's from before, c's and e's
    # Alone afterwards, each gets what alone gives: the 409, and c's retry its order.
    with pytest.raises(KamiError) as exc:
        fulfilment.open_order(shop, group[1].data, idempotency_key="key-a")
    assert exc.value.slug == "idempotency-key-reused"
    again = fulfilment.open_order(shop, group[3].data, idempotency_key="key-c")
    assert (again.order.order_no, again.created) == (new_c.order.order_no, False)
    # Another body under a key used before, first in its group: the 409 is its answer there.
    clash = fulfilment.open_orders_together(
        shop, [keyed("x@example.com", "key-c"), _checkout("y@example.com")]
    )
    assert [_answer(o) for o in clash] == ["idempotency-key-reused", "placed"]
    # A key alone refuses (empty, or past 128 characters) is left to be refused alone.
    odd = [keyed("p@example.com", ""), keyed("q@example.com", "k" * 129)]
    others = [_checkout("r@example.com"), _checkout("s@example.com")]
    outcomes = fulfilment.open_orders_together(shop, [*odd, *others])
    assert [_answer(o) for o in outcomes] == ["alone", "alone", "placed", "placed"]
    for c in odd:
        with pytest.raises(KamiError) as refused:
            fulfilment.open_order(shop, c.data, idempotency_key=c.idempotency_key)
        assert refused.value.status == 422


def test_a_key_taken_meanwhile_sends_the_group_alone(
    shop: fulfilment.Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, [f"K-{n}" for n in range(5)])
    open_flash_sale(shop, "FLASH", quota=5, limit=3)
    fulfilment.open_order(shop, _checkout("a@example.com").data, idempotency_key="taken")
    # As if another process wrote it after this group looked for it.
    monkeypatch.setattr(orders, "find_idempotent_each", lambda s, asked: [None] * len(asked))
    before = _state(shop)
    group = [
        dataclasses.replace(_checkout("a@example.com"), idempotency_key="taken"),
        _checkout("b@example.com"),
    ]
    assert fulfilment.open_orders_together(shop, group) == [None, None]
    assert _state(shop) == before


def test_after_a_sellout_a_group_is_answered_from_memory_and_one_read_of_its_keys(
    shop: fulfilment.Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decision 0023: while this process remembers the SKU sold out, a group's checkouts are
    answered "sold out" as alone, without a write; the keyed ones after one read of all their
    keys, and a key that placed an order goes alone to be given it back."""
    sku = make_sku(shop, "FLASH", max_quantity=3)
    add_keys(shop, sku, ["K-1"])
    open_flash_sale(shop, "FLASH", quota=1, limit=3)
    fulfilment.open_order(shop, _checkout("a@example.com").data, idempotency_key="key-a")
    for email in ("b@example.com", "c@example.com"):  # the write path, then the read
        with pytest.raises(KamiError):
            fulfilment.open_order(shop, _checkout(email).data)
    assert shop.sold_out_just_now("FLASH", 1)
    calls: list[str] = []
    for name in ("read", "write"):

        def counted(real: Any = getattr(shop.db, name), name: str = name) -> Any:
            calls.append(name)
            return real()

        monkeypatch.setattr(shop.db, name, counted)

    def keyed(email: str, key: str) -> fulfilment.Checkout:
        return dataclasses.replace(_checkout(email), idempotency_key=key)

    group = [
        _checkout("d@example.com"),
        keyed("e@example.com", "key-e"),  # placed nothing
        keyed("a@example.com", "key-a"),  # a retry: alone, to be given its order back
        keyed("f@example.com", ""),  # alone refuses it (422)
        _checkout("g@example.com", gateway="nowhere"),
        _checkout("h@example.com", sku="OTHER"),
        keyed("i@example.com", "key-i"),
    ]
    outcomes = fulfilment.open_orders_together(shop, group)
    assert [_answer(o) for o in outcomes] == [
        "sold-out",
        "sold-out",
        "alone",
        "alone",
        "unknown-gateway",
        "alone",
        "sold-out",
    ]
    assert calls == ["read"]
    again = fulfilment.open_order(shop, group[2].data, idempotency_key="key-a")
    assert not again.created
    # Without keys to look up, nothing is read at all.
    calls.clear()
    outcomes = fulfilment.open_orders_together(shop, [_checkout("j@example.com")] * 2)
    assert [_answer(o) for o in outcomes] == ["sold-out", "sold-out"] and calls == []


@pytest.mark.parametrize("case", ["no-sale", "not-card-keys", "one", "sold-out-memory"])
def test_what_is_never_placed_together(shop: fulfilment.Shop, case: str) -> None:
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, [f"K-{n}" for n in range(5)])
    if case != "no-sale":
        open_flash_sale(shop, "FLASH", quota=5)
    if case == "not-card-keys":
        with shop.db.write() as s:
            s.execute(text("UPDATE catalog_sku SET delivery_kind = 'text' WHERE code = 'FLASH'"))
    if case == "sold-out-memory":
        shop.mark_sold_out("FLASH", 1)
    group = [_checkout("a@example.com")] if case == "one" else [_checkout("a@example.com")] * 2
    assert fulfilment.open_orders_together(shop, group) == [None] * len(group)
    assert _state(shop)["pending"] == 0


def test_reserve_keys_for_hands_each_order_its_own(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "SKU")
    add_keys(shop, sku, [f"K-{n}" for n in range(8)])
    now = utcnow()
    with shop.db.write() as s:
        got = vault.reserve_keys_for(s, sku.id, [(101, 2), (102, 1), (103, 3)], now)
    assert got is not None
    assert [len(got[o]) for o in (101, 102, 103)] == [2, 1, 3]
    with shop.db.read() as s:
        rows = s.execute(
            text("SELECT id, order_id FROM vault_key WHERE status = 'reserved' ORDER BY id")
        ).all()
    assert {(k, o) for o, ks in got.items() for k in ks} == {tuple(r) for r in rows}
    # Earliest first: the orders take the keys in the order they are given.
    assert got[101] < got[102] < got[103]
    with shop.db.write() as s:
        assert vault.reserve_keys_for(s, sku.id, [(104, 1), (105, 2)], now) is None
    assert _state(shop, "SKU")["keys"] == {"reserved": 6, "available": 2}  # nothing taken


def test_groups_racing_each_other_and_single_checkouts_never_oversell(
    shop: fulfilment.Shop,
) -> None:
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, [f"K-{n}" for n in range(60)])
    open_flash_sale(shop, "FLASH", quota=25, limit=1)
    answers: list[str] = []
    lock = threading.Lock()

    def buyers(t: int) -> None:
        # Every buyer appears in two threads: the per-buyer limit is raced as well.
        group = [_checkout(f"b{(t % 4) * 8 + n}@example.com") for n in range(8)]
        out = _answers(shop, group)
        for c, answer in zip(group, out, strict=True):
            if answer == "alone":
                try:
                    fulfilment.open_order(shop, c.data)
                    answer = "placed"
                except KamiError as exc:
                    answer = exc.slug
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=buyers, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    counts = Counter(answers)
    state = _state(shop)
    assert counts["placed"] == state["pending"] == state["taken"] == 25
    assert state["keys"] == {"reserved": 25, "available": 35}
    assert counts["placed"] + counts["sold-out"] + counts["limit-reached"] == 64
    with shop.db.read() as s:
        per_buyer = s.execute(
            text("SELECT max(n) FROM (SELECT count(*) AS n FROM orders_order GROUP BY email) AS c")
        ).scalar_one()
        per_order = s.execute(
            text(
                "SELECT count(*) FROM orders_order o WHERE (SELECT count(*) FROM vault_key k "
                "WHERE k.order_id = o.id) <> 1"
            )
        ).scalar_one()
    assert per_buyer == 1
    assert per_order == 0
