"""One SKU, one flash sale after another, on both databases: a window set after the current
sale ended starts a new sale with its own quota and per-buyer counts; the ended one is kept for
the orders placed in it, whose expiries and late payments give back and take its units, not the
new sale's. Any other window edits the current sale, whose units taken stay taken."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import text

from kami import catalog, fulfilment, payments
from kami.kernel.clock import utcnow
from kami.kernel.errors import KamiError
from tests.conftest import add_keys, lapse, make_sku, open_flash_sale, place, raw_notification
from tests.conftest import sandbox_body as body


def _sales(shop: fulfilment.Shop) -> list[tuple[int, int, int, bool]]:
    """Every sale of the SKU: (id, quota, taken, current), oldest first."""
    with shop.db.read() as s:
        rows = s.execute(
            text(
                "SELECT id, quota, taken, superseded_at IS NULL FROM catalog_flash_sale ORDER BY id"
            )
        )
        return [(int(i), int(q), int(t), bool(c)) for i, q, t, c in rows.tuples()]


def _refused(sku: str, email: str, shop: fulfilment.Shop) -> str:
    with pytest.raises(KamiError) as refused:
        place(shop, sku, email=email)
    return refused.value.slug


def _end_the_sale(shop: fulfilment.Shop, code: str, quota: int, limit: int = 1) -> None:
    """The current sale's window moved into the past: an edit, since it has not ended yet."""
    window = {"start": timedelta(minutes=-20), "end": timedelta(minutes=-5)}
    open_flash_sale(shop, code, quota=quota, limit=limit, **window)


def test_a_window_after_the_last_sale_ended_is_a_new_sale(shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop, "WEEKLY"), [f"K-{n}" for n in range(10)])
    open_flash_sale(shop, "WEEKLY", quota=2, limit=1)
    place(shop, "WEEKLY", email="a@example.com")
    place(shop, "WEEKLY", email="b@example.com")
    assert _refused("WEEKLY", "c@example.com", shop) == "sold-out"
    _end_the_sale(shop, "WEEKLY", quota=2)
    [(first, *rest)] = _sales(shop)  # still the same sale: its window was edited
    assert rest == [2, 2, True]
    assert _refused("WEEKLY", "c@example.com", shop) == "flash-sale-ended"
    # Next week's sale, with the same quota: nothing of it is taken yet.
    open_flash_sale(shop, "WEEKLY", quota=2, limit=1, start=timedelta(minutes=-1))
    [(old, *old_rest), (new, *new_rest)] = _sales(shop)
    assert old == first and old_rest == [2, 2, False] and new_rest == [2, 0, True]
    with shop.db.read() as s:
        sale = catalog.get_sku_on_sale(s, "WEEKLY")[1]
    assert sale is not None and (sale.id, sale.taken, sale.quota) == (new, 0, 2)
    # The first sale's buyer is a new buyer of this one; its quota holds as before.
    again = place(shop, "WEEKLY", email="a@example.com").order
    assert again.amount_minor == 99
    assert _refused("WEEKLY", "a@example.com", shop) == "limit-reached"
    place(shop, "WEEKLY", email="c@example.com")
    assert _refused("WEEKLY", "d@example.com", shop) == "sold-out"
    assert [t for _, _, t, _ in _sales(shop)] == [2, 2]
    with shop.db.read() as s:
        assert catalog.flash_sale_codes(s, utcnow()) == frozenset({"WEEKLY"})


def test_a_window_that_overlaps_the_ended_sale_edits_it(shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop, "AGAIN"), [f"K-{n}" for n in range(5)])
    open_flash_sale(shop, "AGAIN", quota=3, limit=1)
    place(shop, "AGAIN", email="a@example.com")
    place(shop, "AGAIN", email="b@example.com")
    _end_the_sale(shop, "AGAIN", quota=3)
    # Reopened from before its end: the same sale, longer; what was taken stays taken.
    open_flash_sale(shop, "AGAIN", quota=3, limit=1, start=timedelta(minutes=-20))
    assert [rest for _, *rest in _sales(shop)] == [[3, 2, True]]
    assert _refused("AGAIN", "a@example.com", shop) == "limit-reached"  # still counted
    place(shop, "AGAIN", email="c@example.com")
    assert _refused("AGAIN", "d@example.com", shop) == "sold-out"
    with pytest.raises(KamiError) as lower:
        open_flash_sale(shop, "AGAIN", quota=2, limit=1, start=timedelta(minutes=-20))
    assert lower.value.where == "quota"


def test_the_ended_sales_orders_give_back_and_take_its_own_units(
    shop: fulfilment.Shop,
) -> None:
    add_keys(shop, make_sku(shop, "ROUNDS"), [f"K-{n}" for n in range(10)])
    open_flash_sale(shop, "ROUNDS", quota=2, limit=1)
    unpaid = place(shop, "ROUNDS", email="a@example.com").order
    place(shop, "ROUNDS", email="b@example.com")
    _end_the_sale(shop, "ROUNDS", quota=2)
    open_flash_sale(shop, "ROUNDS", quota=1, limit=1, start=timedelta(minutes=-1))
    place(shop, "ROUNDS", email="c@example.com")
    assert [t for _, _, t, _ in _sales(shop)] == [2, 1]
    # The first sale's unpaid order runs out: its unit goes back to the first sale.
    lapse(shop, unpaid)
    assert [t for _, _, t, _ in _sales(shop)] == [1, 1]
    # Its money arrives after all: it takes its unit of the first sale back, and is served,
    # though the second sale is sold out; and it is counted in the first sale, not the second.
    with shop.db.write() as s:
        trade = payments.record_sandbox_trade(s, unpaid.order_no, unpaid.amount_minor, "CNY")
    raw = raw_notification(body(unpaid.order_no, unpaid.amount_minor, trade_no=trade))
    out = fulfilment.handle_notification(shop, raw)
    assert (out.reason, out.delivered) == (None, True)
    assert [t for _, _, t, _ in _sales(shop)] == [2, 1]
    assert _refused("ROUNDS", "d@example.com", shop) == "sold-out"


def test_a_selling_sale_cannot_be_moved_past_its_own_end(shop: fulfilment.Shop) -> None:
    """Setting next week's window while this week's sale is selling would end it at once and
    carry what it sold into next week: refused, with what to do. A sale that has not started
    yet may be moved anywhere: that is an edit."""
    add_keys(shop, make_sku(shop, "SELLING"), ["K-1", "K-2"])
    open_flash_sale(shop, "SELLING", quota=2, limit=1)  # selling until ten minutes from now
    place(shop, "SELLING", email="a@example.com")
    with pytest.raises(KamiError) as refused:
        open_flash_sale(
            shop, "SELLING", quota=2, start=timedelta(days=7), end=timedelta(days=7, hours=1)
        )
    assert (refused.value.slug, refused.value.where) == ("flash-sale-selling", "starts_at")
    assert [rest for _, *rest in _sales(shop)] == [[2, 1, True]]
    place(shop, "SELLING", email="b@example.com")  # still selling
    # Scheduled, not started: moved a week on, the same sale.
    add_keys(shop, make_sku(shop, "LATER"), ["L-1"])
    later = {"start": timedelta(hours=1), "end": timedelta(hours=2)}
    open_flash_sale(shop, "LATER", quota=1, **later)
    open_flash_sale(shop, "LATER", quota=1, start=timedelta(days=7), end=timedelta(days=8))
    with shop.db.read() as s:
        rows = s.execute(text("SELECT count(*) FROM catalog_flash_sale")).scalar_one()
    assert rows == 2  # one per SKU


def test_two_admins_setting_a_first_sale_at_once_go_one_after_the_other(
    shop: fulfilment.Shop,
) -> None:
    """PostgreSQL: the second waits for the SKU's row, then reads the sale the first set and
    changes it; without that wait it inserted a second current sale and failed on the unique
    index. (SQLite's one writer already puts them one after the other.)"""
    if shop.db.dialect != "postgresql":
        pytest.skip("SQLite's one writer serialises the two")
    make_sku(shop, "TWICE")
    now = utcnow()

    def sale(quota: int) -> catalog.FlashSaleIn:
        return catalog.FlashSaleIn(
            starts_at=now, ends_at=now + timedelta(hours=1), price_minor=99, quota=quota
        )

    first_set, release = threading.Event(), threading.Event()

    def first() -> None:
        with shop.db.write() as s:
            catalog.set_flash_sale(s, "TWICE", sale(5))
            first_set.set()
            release.wait(30)

    def second() -> None:
        with shop.db.write() as s:
            catalog.set_flash_sale(s, "TWICE", sale(7))

    a = threading.Thread(target=first)
    a.start()
    assert first_set.wait(30)
    b = threading.Thread(target=second)
    b.start()
    b.join(0.5)
    assert b.is_alive()  # waiting for the SKU's row (bounded: not a timing test)
    release.set()
    a.join(30)
    b.join(30)
    assert not b.is_alive()
    assert [rest for _, *rest in _sales(shop)] == [[7, 0, True]]
