"""Money that arrives after an order lapsed (expired or cancelled), on both databases.

An order outside a flash sale is paid and served from fresh keys. An order placed in a flash
sale gave its units of the sale's quota back when it lapsed: paid late, it takes them again and
its buyer is counted against the sale's per-buyer limit again, as a checkout would be. When the
quota is gone or the buyer is at the limit, the order fails, takes no key, and is refunded in
full by the worker, and the buyer is told why by mail."""

from __future__ import annotations

import html
import re
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from kami import accounts, bootstrap, catalog, fulfilment, orders, payments
from kami.config import Settings, SmtpConfig
from kami.fulfilment import notify
from kami.kernel import outbox
from kami.kernel.clock import utcnow
from kami.kernel.errors import KamiError
from kami.worker import runner
from tests.conftest import (
    Inbox,
    add_keys,
    lapse,
    make_sku,
    open_flash_sale,
    place,
    raw_notification,
)
from tests.conftest import sandbox_body as body
from tests.web.conftest import make_admin, sign_in


def _pay(shop: fulfilment.Shop, order: orders.OrderView) -> fulfilment.Outcome:
    """The buyer pays in the sandbox (booked, so that it can be refunded) and its notice comes."""
    with shop.db.write() as s:
        trade = payments.record_sandbox_trade(s, order.order_no, order.amount_minor, "CNY")
    raw = raw_notification(body(order.order_no, order.amount_minor, trade_no=trade))
    return fulfilment.handle_notification(shop, raw)


def _order(shop: fulfilment.Shop, order_no: str) -> orders.OrderView:
    with shop.db.read() as s:
        return orders.get_order(s, order_no)


def _taken(shop: fulfilment.Shop, code: str) -> int:
    with shop.db.read() as s:
        sale = catalog.get_sku_on_sale(s, code)[1]
    assert sale is not None
    return sale.taken


def _keys_of(shop: fulfilment.Shop, order: orders.OrderView) -> list[str]:
    with shop.db.read() as s:
        rows = s.execute(
            text("SELECT status FROM vault_key WHERE order_id = :o ORDER BY id"), {"o": order.id}
        )
        return [str(status) for (status,) in rows.tuples()]


def _refused_late(shop: fulfilment.Shop, email: str = "a@example.com") -> orders.OrderView:
    """A flash-sale order paid after it lapsed and its unit went to another buyer: failed."""
    add_keys(shop, make_sku(shop, "FLASH"), ["K-1", "K-2"])
    open_flash_sale(shop, "FLASH", quota=1, limit=1)
    late = place(shop, "FLASH", email=email).order
    lapse(shop, late)
    place(shop, "FLASH", email="b@example.com")
    assert _pay(shop, late).reason == "late-payment-quota-gone"
    return late


def test_a_late_payment_outside_a_flash_sale_is_served(shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop, "PLAIN"), ["K-1", "K-2"])
    placed = place(shop, "PLAIN")
    late = placed.order
    fulfilment.cancel_order(shop, late.order_no, placed.access_token)  # the money still comes
    assert _keys_of(shop, late) == []
    out = _pay(shop, late)
    assert (out.verdict, out.reason, out.delivered) == ("accepted", None, True)
    assert _order(shop, late.order_no).status == "delivered"
    assert _keys_of(shop, late) == ["sold"]


def test_a_late_flash_payment_takes_its_quota_back_and_is_delivered(
    shop: fulfilment.Shop,
) -> None:
    add_keys(shop, make_sku(shop, "FLASH"), [f"K-{n}" for n in range(5)])
    open_flash_sale(shop, "FLASH", quota=2, limit=1)
    late = place(shop, "FLASH", email="a@example.com").order
    lapse(shop, late)
    assert _taken(shop, "FLASH") == 0
    out = _pay(shop, late)
    assert (out.verdict, out.reason, out.delivered) == ("accepted", None, True)
    assert _order(shop, late.order_no).status == "delivered"
    assert _taken(shop, "FLASH") == 1  # taken again
    # The one unit left is still there for the next buyer, and no more.
    place(shop, "FLASH", email="b@example.com")
    assert _taken(shop, "FLASH") == 2
    with pytest.raises(KamiError) as refused:
        place(shop, "FLASH", email="c@example.com")
    assert refused.value.slug == "sold-out"


def test_a_late_flash_payment_without_keys_holds_its_quota_while_it_waits(
    shop: fulfilment.Shop,
) -> None:
    """The quota is there but the keys are gone (voided meanwhile): the order waits for stock,
    as every paid order does, holding its unit of the quota; the next import serves it."""
    sku = make_sku(shop, "FLASH")
    add_keys(shop, sku, ["K-1"])
    open_flash_sale(shop, "FLASH", quota=2, limit=1)
    late = place(shop, "FLASH", email="a@example.com").order
    lapse(shop, late)
    with shop.db.write() as s:
        s.execute(text("UPDATE vault_key SET status = 'void'"))
    out = _pay(shop, late)
    assert (out.reason, out.delivered) == (None, False)
    assert _order(shop, late.order_no).status == "awaiting_stock"
    assert _taken(shop, "FLASH") == 1
    add_keys(shop, sku, ["K-2", "K-3"])
    assert _order(shop, late.order_no).status == "delivered"
    assert _keys_of(shop, late) == ["sold"]
    assert _taken(shop, "FLASH") == 1


def test_a_late_flash_payment_after_the_quota_went_fails_and_is_refunded(
    container: bootstrap.Container,
) -> None:
    shop = container.shop
    add_keys(shop, make_sku(shop, "FLASH"), [f"K-{n}" for n in range(5)])
    open_flash_sale(shop, "FLASH", quota=1, limit=1)
    late = place(shop, "FLASH", email="a@example.com").order
    lapse(shop, late)
    winner = place(shop, "FLASH", email="b@example.com").order  # the unit given back, taken
    assert _taken(shop, "FLASH") == 1
    out = _pay(shop, late)
    assert (out.verdict, out.reason, out.delivered) == (
        "accepted",
        "late-payment-quota-gone",
        False,
    )
    with shop.db.read() as s:
        [record] = payments.list_notifications(s, order_no=late.order_no)
    assert (record.verdict, record.reason) == ("accepted", "late-payment-quota-gone")
    assert record.detail is not None and "the worker refunds it in full" in record.detail
    failed = _order(shop, late.order_no)
    assert failed.status == "failed" and failed.trade_no is not None
    assert failed.note == "paid after it lapsed; the flash sale's quota of 1 was taken by then"
    assert _keys_of(shop, late) == []  # no key left the pool for it
    assert _taken(shop, "FLASH") == 1
    with shop.db.read() as s:
        assert len(list(payments.list_refunds(s, late.id))) == 0  # not yet: the worker's
    runner.run_once(container, sweep=False)  # the refund job (and the mail job)
    refunded = _order(shop, late.order_no)
    assert refunded.status == "refunded"
    with shop.db.read() as s:
        [refund] = payments.list_refunds(s, late.id)
    assert refund.amount_minor == late.amount_minor and refund.status == "succeeded"
    # Running the job again refunds nothing twice.
    with shop.db.write() as s:
        s.execute(
            text("UPDATE kernel_outbox SET status = 'pending', run_after = :t"), {"t": utcnow()}
        )
    runner.run_once(container, sweep=False)
    with shop.db.read() as s:
        assert len(list(payments.list_refunds(s, late.id))) == 1
    # The winner is untouched and pays as usual.
    assert _pay(shop, winner).delivered is True


def _found_by_asking(shop: fulfilment.Shop, order: orders.OrderView) -> fulfilment.SyncResult:
    """The buyer paid, the channel's callback never came, and the seller asks the channel
    (`kami orders sync`, the console's button): its answer takes the notification's path."""
    with shop.db.write() as s:
        payments.record_sandbox_trade(s, order.order_no, order.amount_minor, "CNY")
    return fulfilment.sync_order(shop, order.order_no)


def test_a_late_flash_payment_found_by_asking_the_channel_keeps_to_the_sale(
    shop: fulfilment.Shop,
) -> None:
    add_keys(shop, make_sku(shop, "FLASH"), [f"K-{n}" for n in range(5)])
    open_flash_sale(shop, "FLASH", quota=2, limit=1)
    served = place(shop, "FLASH", email="a@example.com").order
    refused = place(shop, "FLASH", email="b@example.com").order
    lapse(shop, served)
    lapse(shop, refused)
    assert _taken(shop, "FLASH") == 0
    found = _found_by_asking(shop, served)  # its unit is still there: taken back, served
    assert found.outcome is not None and found.outcome.reason is None
    assert found.status == "delivered" and _keys_of(shop, served) == ["sold"]
    assert _taken(shop, "FLASH") == 1
    place(shop, "FLASH", email="c@example.com")  # the last unit goes to another buyer
    found = _found_by_asking(shop, refused)
    assert found.outcome is not None
    assert (found.outcome.verdict, found.outcome.reason) == (
        "accepted",
        "late-payment-quota-gone",
    )
    assert found.status == "failed" and _keys_of(shop, refused) == []
    assert _taken(shop, "FLASH") == 2
    with shop.db.read() as s:
        [record] = payments.list_notifications(s, order_no=refused.order_no)
        jobs = s.execute(
            text("SELECT kind FROM kernel_outbox WHERE status = 'pending' ORDER BY id")
        ).scalars()
        kinds = list(jobs)
    assert (record.method, record.reason) == ("QUERY", "late-payment-quota-gone")
    assert fulfilment.UNSERVED_REFUND_JOB in kinds  # refunded in full by the worker


def test_a_late_flash_payment_past_the_buyers_limit_fails(shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop, "FLASH"), [f"K-{n}" for n in range(5)])
    open_flash_sale(shop, "FLASH", quota=5, limit=1)
    placed = place(shop, "FLASH", email="a@example.com")
    first = placed.order
    fulfilment.cancel_order(shop, first.order_no, placed.access_token)  # frees the limit too
    second = place(shop, "FLASH", email="a@example.com").order
    assert _pay(shop, second).delivered is True
    out = _pay(shop, first)  # the cancelled one's money arrives after all
    assert (out.reason, out.delivered) == ("late-payment-limit-reached", False)
    failed = _order(shop, first.order_no)
    assert failed.status == "failed"
    assert failed.note == (
        "paid after it lapsed; the buyer already holds 1 of the flash sale's 1 per buyer"
    )
    assert _keys_of(shop, first) == []
    assert _taken(shop, "FLASH") == 1  # the second order's unit only


def test_an_order_that_lapses_after_its_payment_read_it_takes_its_quota_back(
    shop: fulfilment.Shop,
) -> None:
    """The notice's order was read as pending (SQLite reads it before the write transaction)
    and expired before the write: the payment finds it lapsed and applies the flash sale's
    terms to it, rather than treating it as pending or as paid before."""
    add_keys(shop, make_sku(shop, "FLASH"), [f"K-{n}" for n in range(5)])
    open_flash_sale(shop, "FLASH", quota=1, limit=1)
    late = place(shop, "FLASH", email="a@example.com").order
    assert late.status == "pending"
    lapse(shop, late)
    place(shop, "FLASH", email="b@example.com")  # takes the quota back
    notice = payments.PaymentNotice(
        gateway="sandbox",
        order_no=late.order_no,
        trade_no="T-LATE",
        amount_minor=late.amount_minor,
        currency="CNY",
        status=payments.TradeStatus.PAID,
    )
    with shop.db.write() as s:
        verdict, reason, delivered = notify._apply(s, notice, shop, late)  # read as pending
    assert (verdict, reason, delivered) == ("accepted", "late-payment-quota-gone", False)
    assert _order(shop, late.order_no).status == "failed"
    assert _keys_of(shop, late) == []
    assert _taken(shop, "FLASH") == 1


def test_the_buyer_is_told_why_by_mail(settings: Settings, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    smtp_config = SmtpConfig(host="127.0.0.1", port=port, security="none", sender="s@example.com")
    container = bootstrap.build(settings.model_copy(update={"smtp": smtp_config}))
    try:
        shop = container.shop
        late = _refused_late(shop, "late@example.com")
        runner.run_once(container, sweep=False)  # the refund and this mail
        runner.run_once(container, sweep=False)  # the refund's own mail
        mails = {m["Subject"]: m for m in inbox.messages if m["To"] == "late@example.com"}
        [unserved] = [m for subject, m in mails.items() if "Paid too late" in subject]
        text_ = unserved.get_payload(decode=True).decode()  # type: ignore[union-attr]
        assert "flash sale's units were all taken" in text_ and "秒杀名额已经售完" in text_
        assert late.order_no in unserved["Subject"]
        assert any("Refund made" in subject for subject in mails)  # and the refund's own
    finally:
        container.close()


def test_the_console_shows_why_the_order_failed(client: TestClient, shop: fulfilment.Shop) -> None:
    late = _refused_late(shop)
    make_admin(shop, "owner", accounts.Role.OWNER)
    sign_in(client, "owner")
    for locale, label in (("zh_CN", "备注"), ("en", "Note")):
        page = client.get(f"/admin/orders/{late.order_no}", params={"lang": locale}).text
        note = re.search(r'<dt>([^<]+)</dt><dd id="order-note">([^<]+)</dd>', page)
        assert note is not None, locale
        assert note.group(1) == label
        assert html.unescape(note.group(2)) == (
            "paid after it lapsed; the flash sale's quota of 1 was taken by then"
        )


def _jobs(shop: fulfilment.Shop, order_no: str) -> dict[str, tuple[str, str | None]]:
    with shop.db.read() as s:
        return {
            j.kind: (j.status, j.last_error) for j in outbox.list_jobs(s, ref=order_no) if j.kind
        }


def test_a_channel_that_cannot_refund_parks_the_job_at_once(
    container: bootstrap.Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """易支付 without its refund API, say: the refund is recorded as failed (not left asked
    for, counted against the order's money for ever) and the job is parked with what to do,
    for the seller to refund in the channel's console."""
    shop = container.shop
    late = _refused_late(shop)
    monkeypatch.setattr(shop.gateways.get("sandbox"), "_refund_book", None)
    runner.run_once(container, sweep=False)
    status, error = _jobs(shop, late.order_no)[fulfilment.UNSERVED_REFUND_JOB]
    assert status == "parked"
    assert error is not None and "this sandbox has no refund book" in error
    with shop.db.read() as s:
        [refund] = payments.list_refunds(s, late.id)
    assert refund.status == "failed" and refund.detail == "this sandbox has no refund book"
    assert _order(shop, late.order_no).status == "failed"


def test_an_order_the_seller_refunded_first_is_left_alone(container: bootstrap.Container) -> None:
    shop = container.shop
    late = _refused_late(shop)
    by_hand = fulfilment.request_refund(
        shop, late.order_no, amount_minor=None, reason="seller", request_key="by-hand"
    )
    assert by_hand.refund.status == "succeeded"
    runner.run_once(container, sweep=False)
    assert _jobs(shop, late.order_no)[fulfilment.UNSERVED_REFUND_JOB][0] == "done"
    with shop.db.read() as s:
        assert [r.request_key for r in payments.list_refunds(s, late.id)] == ["by-hand"]


def test_a_late_payment_waits_for_its_buyers_lock(shop: fulfilment.Shop) -> None:
    """PostgreSQL: a late flash-sale payment counts its buyer under the buyer's lock, as a
    checkout does, so that a checkout of the same buyer cannot count past the limit meanwhile:
    while another session holds the lock, the payment waits, and goes on once it is let go."""
    if shop.db.dialect != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's; SQLite's one writer serialises payments")
    add_keys(shop, make_sku(shop, "FLASH"), ["K-1", "K-2"])
    open_flash_sale(shop, "FLASH", quota=2, limit=1)
    late = place(shop, "FLASH", email="held@example.com").order
    lapse(shop, late)
    (key,) = orders.buyer_lock_keys("FLASH", ["e:held@example.com"])
    done = threading.Event()
    outcome: list[fulfilment.Outcome] = []

    def pay() -> None:
        outcome.append(_pay(shop, late))
        done.set()

    with shop.db.engine.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        payer = threading.Thread(target=pay)
        payer.start()
        assert not done.wait(0.5)  # held up by the buyer's lock (bounded: not a timing test)
        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    payer.join(30)
    assert done.is_set() and outcome[0].delivered is True
    assert _taken(shop, "FLASH") == 1
