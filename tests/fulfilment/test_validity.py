"""Validity periods on both databases: items of goods with a validity carry valid_until from
their delivery; the reminder sweep mails each order once, only for items ending within N days,
through the outbox, and never twice."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from kami import bootstrap, catalog, delivery, fulfilment, orders, payments
from kami.kernel import outbox
from kami.worker.runner import run_once
from tests.conftest import add_keys, raw_notification, sandbox_body

REMINDER = "validity_reminder"


def membership(shop: fulfilment.Shop, code: str, days: int | None) -> catalog.SkuView:
    with shop.db.write() as s:
        if not any(c.slug == "vip" for c in catalog.list_categories(s)):
            catalog.create_category(s, catalog.CategoryIn(slug="vip", name="Memberships"))
        slug = "m-" + code.lower()
        catalog.create_product(
            s,
            catalog.ProductIn(
                slug=slug, category="vip", name=code, redemption="redeem", validity_days=days
            ),
        )
        sku = catalog.create_sku(
            s, catalog.SkuIn(code=code, product=slug, name=code, price_minor=1500, currency="CNY")
        )
    add_keys(shop, sku, [f"{code}-KEY-{n}" for n in range(6)])
    return sku


def buy(shop: fulfilment.Shop, sku: str, quantity: int = 1) -> orders.OrderView:
    placed = fulfilment.place_order(
        shop, orders.OrderIn(sku=sku, quantity=quantity, email="m@example.com", gateway="sandbox")
    )
    no, amount = placed.order.order_no, placed.order.amount_minor
    with shop.db.write() as s:
        trade = payments.record_sandbox_trade(s, no, amount, "CNY")
    fulfilment.handle_notification(shop, raw_notification(sandbox_body(no, amount, trade_no=trade)))
    with shop.db.read() as s:
        order = orders.get_order(s, no)
    assert order.status == "delivered" and order.delivered_at is not None
    return order


def items(shop: fulfilment.Shop, order: orders.OrderView) -> dict[int, datetime | None]:
    with shop.db.read() as s:
        return {i.position: i.valid_until for i in delivery.live_items(s, order.id)}


def reminders(shop: fulfilment.Shop, order_no: str) -> list[dict[str, Any]]:
    with shop.db.read() as s:
        jobs = outbox.list_jobs(s, ref=order_no)
    return [
        j.payload for j in jobs if j.kind == fulfilment.MAIL_JOB and j.payload["event"] == REMINDER
    ]


def test_delivered_items_carry_valid_until(shop: fulfilment.Shop) -> None:
    membership(shop, "VIP-30", 30)
    membership(shop, "GIFT", None)
    vip = buy(shop, "VIP-30", quantity=2)
    assert vip.delivered_at is not None and vip.validity_days == 30
    ends = vip.delivered_at + timedelta(days=30)
    assert items(shop, vip) == {1: ends, 2: ends}
    _, shown = fulfilment.buyer_view(
        shop, vip.order_no, orders.access_token(shop.token_secret(), vip.order_no)
    )
    assert [(i.position, i.valid_until) for i in shown] == [(1, ends), (2, ends)]
    assert items(shop, buy(shop, "GIFT")) == {1: None}
    assert fulfilment.valid_until(None, ends) is None
    assert fulfilment.valid_until(7, ends) == ends + timedelta(days=7)


def test_reminder_goes_once_per_order_within_the_window(shop: fulfilment.Shop) -> None:
    membership(shop, "VIP-M", 30)
    membership(shop, "VIP-Q", 60)
    membership(shop, "PLAIN", None)
    a = buy(shop, "VIP-M", quantity=2)
    b = buy(shop, "VIP-M")
    later = buy(shop, "VIP-Q")
    plain = buy(shop, "PLAIN")
    assert a.delivered_at is not None
    start = a.delivered_at

    # Four days before the end: outside a three-day window.
    assert fulfilment.send_validity_reminders(shop, days=3, now=start + timedelta(days=26)) == 0
    # Inside it: one job per order, naming all its items, never one per item.
    now = start + timedelta(days=27, hours=12)
    assert fulfilment.send_validity_reminders(shop, days=3, now=now) == 2
    (mail_a,) = reminders(shop, a.order_no)
    assert mail_a["positions"] == [1, 2]
    assert datetime.fromisoformat(mail_a["valid_until"]) == start + timedelta(days=30)
    assert [m["positions"] for m in reminders(shop, b.order_no)] == [[1]]
    assert reminders(shop, later.order_no) == reminders(shop, plain.order_no) == []
    # The same sweep again (or another worker) sends nothing more.
    assert fulfilment.send_validity_reminders(shop, days=3, now=now) == 0
    assert len(reminders(shop, a.order_no)) == 1
    # The 60-day membership comes due later; the 30-day ones are not mailed again.
    assert fulfilment.send_validity_reminders(shop, days=3, now=start + timedelta(days=58)) == 1
    assert len(reminders(shop, later.order_no)) == 1
    assert len(reminders(shop, a.order_no)) == len(reminders(shop, b.order_no)) == 1

    with shop.db.read() as s:
        order = orders.get_order(s, a.order_no)
    text = fulfilment.build_email(shop, order, REMINDER, detail=mail_a).text
    # In the shop's time zone (KAMI_TIMEZONE, by default Asia/Shanghai), said so.
    local = (start + timedelta(days=30)).astimezone(ZoneInfo("Asia/Shanghai"))
    ends = f"{local.strftime('%Y-%m-%d %H:%M')} (UTC+08:00)"
    assert f"Your goods (item 1, 2) end on {ends}" in text
    assert f"将于 {ends} 到期" in text and "VIP-M-KEY" not in text


def test_refunded_and_replaced_items(shop: fulfilment.Shop) -> None:
    membership(shop, "VIP-R", 30)
    refunded = buy(shop, "VIP-R")
    fulfilment.request_refund(
        shop, refunded.order_no, amount_minor=None, reason="r", request_key="k", keys="void"
    )
    replaced = buy(shop, "VIP-R")
    assert replaced.delivered_at is not None
    report = fulfilment.report_item(
        shop,
        replaced.order_no,
        orders.access_token(shop.token_secret(), replaced.order_no),
        position=1,
        problem="redemption_failed",
        note=None,
        policy=fulfilment.AftersalesPolicy("replace"),
    )
    assert report.status is fulfilment.ReportStatus.REPLACED and report.resolved_at is not None
    # The replacement's period runs from its own delivery.
    assert items(shop, replaced) == {2: report.resolved_at + timedelta(days=30)}
    now = report.resolved_at + timedelta(days=28)
    assert fulfilment.send_validity_reminders(shop, days=3, now=now) == 1
    assert [m["positions"] for m in reminders(shop, replaced.order_no)] == [[2]]
    assert reminders(shop, refunded.order_no) == []  # withdrawn items are not reminded of


def test_worker_sweeps_with_the_configured_window(container: bootstrap.Container) -> None:
    shop = container.shop
    membership(shop, "DAY", 1)
    order = buy(shop, "DAY")
    assert fulfilment.send_validity_reminders(shop, days=0) == 0  # 0 turns reminders off
    assert container.settings.validity_reminder_days == 3
    run_once(container)
    run_once(container)
    assert len(reminders(shop, order.order_no)) == 1
