"""After-sales: the buyer reports a delivered item that does not work; the seller's policy
replaces it from stock at once (once per item) or queues it for review, where an admin
replaces it, refunds its share or rejects the report with a reason.

A replacement is one transaction: the item is revoked, its key recorded defective (with its
import batch) and voided, a fresh key of the same SKU sold to the order and recorded as a new
item, the report closed and the buyer's mail queued. If any step fails nothing is written; with
no stock the report simply stays open for review. Every step is on the report row (status,
resolution, actor, times) and mailed to the buyer through the outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from kami import delivery, orders, payments, vault
from kami.delivery.reports import (
    ReportStatus,
    ReportView,
    count_replacements,
    create_report,
    find_report,
    list_reports,
    open_report_of,
    origin_position,
    resolve_report,
    set_review_reason,
)
from kami.delivery.service import ItemView, get_item
from kami.fulfilment.refunds import request_refund
from kami.fulfilment.shop import MAIL_JOB, Shop
from kami.fulfilment.validity import valid_until
from kami.fulfilment.views import REVEALABLE, authorise
from kami.kernel import outbox
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger("kami.aftersales")

PROBLEMS = ("key_invalid", "redemption_failed")
POLICIES = ("replace", "review")
AUTO = "auto"  # the actor of a replacement made by the policy
MAX_NOTE = 1000


@dataclass(frozen=True, slots=True)
class AftersalesPolicy:
    """What happens to a report: `replace` from stock at once, or `review` by the seller."""

    default: str = "review"
    by_sku: Mapping[str, str] = field(default_factory=dict)

    def for_sku(self, sku_code: str) -> str:
        return self.by_sku.get(sku_code, self.default)


@dataclass(frozen=True, slots=True)
class _Goods:
    sku_id: int
    sku_code: str
    kind: str
    share_minor: int  # what the buyer paid for this one item


def _goods(s: Session, order: orders.OrderView, item: ItemView) -> _Goods:
    if item.line_id is not None:
        line = delivery.get_line(s, item.line_id)
        if line is not None:
            return _Goods(line.sku_id, line.sku_code, line.kind, line.share_minor // line.quantity)
    return _Goods(order.sku_id, order.sku, order.delivery_kind, order.unit_price_minor)


def _why_not_from_stock(item: ItemView, goods: _Goods) -> str | None:
    """Why this item cannot be replaced from stock; None if it can."""
    if item.license_id is not None:
        return "a license is not replaced from stock"
    if item.key_id is None or item.shared:
        return "a reusable key is shared by many buyers and not replaced from stock"
    if goods.kind != "card_key":
        return f"{goods.kind} goods are not replaced from stock"
    return None


def _live_item(s: Session, order: orders.OrderView, position: int) -> ItemView:
    item = get_item(s, order.id, position)
    if item is not None and item.revoked_at is None:
        return item
    held = [i.position for i in delivery.live_items(s, order.id)]
    raise InvalidInput(
        f"item {position} is not an item the order holds now (it holds {held or 'none'})",
        where="position",
        slug="unknown-item",
    )


def _mail(s: Session, order_no: str, event: str, **detail: Any) -> None:
    outbox.enqueue(s, MAIL_JOB, {"order_no": order_no, "event": event, **detail}, ref=order_no)


def _replace(
    s: Session,
    shop: Shop,
    order: orders.OrderView,
    item: ItemView,
    report: ReportView,
    actor: str,
    now: datetime,
    note: str | None = None,
) -> int | None:
    """Swap the item for a fresh key in the caller's transaction; None when out of stock."""
    assert item.key_id is not None
    origin = vault.key_origins(s, [item.key_id])[item.key_id]
    fresh = vault.take_keys(s, origin.sku_id, order.id, 1, now, hints=shop.claim_hints)
    if not fresh:
        return None
    revoked = delivery.revoke_items(
        s, order.id, [item.position], f"replaced: report {report.report_no}", now
    )
    if len(revoked) != 1:  # taken back meanwhile: raising rolls the key's sale back too
        raise Conflict(f"item {item.position} is no longer held", where="position")
    position = delivery.next_position(s, order.id)
    delivery.record_items(
        s,
        order.id,
        fresh,
        now,
        start=position,
        line_id=item.line_id,
        valid_until=valid_until(order.validity_days, now),
    )
    vault.mark_defective(
        s,
        item.key_id,
        order.id,
        _defect_reason(report),
        now,
        resolution="replaced",
        actor=actor,
        replacement_key_id=fresh[0],
    )
    resolution = "auto_replace" if actor == AUTO else "replace"
    if not resolve_report(
        s,
        report.report_no,
        ReportStatus.REPLACED,
        resolution=resolution,
        actor=actor,
        now=now,
        note=note,
        replacement_position=position,
    ):
        raise Conflict(f"report {report.report_no} was resolved meanwhile", where="report_no")
    _mail(
        s,
        order.order_no,
        "aftersales_replaced",
        report_no=report.report_no,
        position=item.position,
        replacement_position=position,
    )
    return position


def _defect_reason(report: ReportView) -> str:
    return f"{report.problem}: {report.note}" if report.note else report.problem


def _check_report(problem: str, note: str | None) -> str | None:
    if problem not in PROBLEMS:
        raise InvalidInput(f"problem must be one of {', '.join(PROBLEMS)}", where="problem")
    text = (note or "").strip()
    if len(text) > MAX_NOTE or any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise InvalidInput(
            f"the note must be at most {MAX_NOTE} printable characters", where="note"
        )
    return text or None


def report_item(
    shop: Shop,
    order_no: str,
    token: str | None,
    *,
    position: int,
    problem: str,
    note: str | None,
    policy: AftersalesPolicy,
) -> ReportView:
    """The buyer's report that item `position` does not work. Answered at once from stock when
    the policy says so and the item may be replaced; otherwise left open for review."""
    authorise(shop, order_no, token)  # before any read: a wrong token learns nothing
    text = _check_report(problem, note)
    now = utcnow()
    with shop.db.write() as s:
        order = orders.find_order(s, order_no, for_update=True)
        if order is None:
            raise NotFound(f"no order {order_no}", where="order_no", slug="unknown-order")
        if order.status not in REVEALABLE:
            raise Conflict(
                f"order {order_no} is {order.status}; only delivered items can be reported",
                where="order_no",
                slug="not-delivered",
            )
        item = _live_item(s, order, position)
        if open_report_of(s, order.id, position) is not None:
            raise Conflict(
                f"item {position} is already reported and waits for the seller's review",
                where="position",
                slug="already-reported",
            )
        goods = _goods(s, order, item)
        origin = origin_position(s, order.id, position)
        why = _why_not_from_stock(item, goods)
        if why is None and policy.for_sku(goods.sku_code) != "replace":
            why = "the shop reviews every report"
        if why is None and count_replacements(s, order.id, origin) > 0:
            why = f"item {origin} was replaced once already"
        report = create_report(
            s,
            order_id=order.id,
            item=item,
            origin=origin,
            problem=problem,
            note=text,
            review_reason=why,
            now=now,
        )
        if why is None and _replace(s, shop, order, item, report, AUTO, now) is None:
            set_review_reason(s, report.report_no, f"no {goods.sku_code} keys in stock")
            why = "no stock"
        if why is not None:
            _mail(s, order_no, "aftersales_received", report_no=report.report_no, position=position)
        final = find_report(s, report.report_no)
    assert final is not None
    log.info("order %s item %d reported: %s", order_no, position, final.status.value)
    return final


def buyer_reports(shop: Shop, order_no: str, token: str | None) -> list[ReportView]:
    authorise(shop, order_no, token)
    with shop.db.read() as s:
        order = orders.get_order(s, order_no)
        return list_reports(s, order_id=order.id)


# -- the seller's review -----------------------------------------------------------------------
def _open_report(s: Session, report_no: str) -> tuple[ReportView, orders.OrderView, ItemView]:
    """The open report, its order and item, locked in the order the buyer's report takes its
    locks too (order, then report), so the two never wait on each other in a circle."""
    found = find_report(s, report_no)
    if found is None:
        raise NotFound(f"no report {report_no}", where="report_no", slug="unknown-report")
    by_id = orders.find_order_by_id(s, found.order_id)
    assert by_id is not None
    order = orders.find_order(s, by_id.order_no, for_update=True) or by_id
    report = find_report(s, report_no, for_update=True) or found
    if report.status is not ReportStatus.OPEN:
        raise Conflict(
            f"report {report_no} is already {report.status.value}",
            where="report_no",
            slug="report-resolved",
        )
    item = get_item(s, order.id, report.position)
    assert item is not None
    return report, order, item


def _check_actor_note(actor: str, note: str | None, *, required: bool = False) -> str | None:
    if not actor.strip():
        raise InvalidInput("the admin resolving a report must be named", where="actor")
    text = (note or "").strip()
    if (required and not text) or len(text) > 500:
        raise InvalidInput("give a reason of 1–500 characters", where="reason")
    return text or None


def replace_reported(shop: Shop, report_no: str, actor: str, note: str | None = None) -> ReportView:
    """The admin's replacement from stock; refused for goods that are not card keys."""
    text = _check_actor_note(actor, note)
    now = utcnow()
    with shop.db.write() as s:
        report, order, item = _open_report(s, report_no)
        if item.revoked_at is not None:
            raise Conflict(
                f"item {item.position} was taken back (refunded); refund or reject the report",
                where="report_no",
                slug="item-revoked",
            )
        goods = _goods(s, order, item)
        why = _why_not_from_stock(item, goods)
        if why is not None:
            raise Conflict(f"{why}: refund or reject the report", where="report_no")
        if _replace(s, shop, order, item, report, actor, now, text) is None:
            raise Conflict(
                f"no {goods.sku_code} keys in stock: import keys, or refund the item",
                where="report_no",
                slug="out-of-stock",
            )
        final = find_report(s, report_no)
    assert final is not None
    return final


def refund_reported(shop: Shop, report_no: str, actor: str, note: str | None = None) -> ReportView:
    """Refund the item's share (its unit price) and withdraw it; its key is recorded defective.

    The refund's idempotency key is the report's, and its amount never depends on other
    refunds, so resolving again after a crash finds the first refund instead of making another.
    """
    text = _check_actor_note(actor, note)
    with shop.db.write() as s:
        report, order, item = _open_report(s, report_no)
        share = _goods(s, order, item).share_minor
    outcome = request_refund(
        shop,
        order.order_no,
        amount_minor=share,
        reason=f"after-sales report {report_no}: {report.problem}",
        request_key=f"aftersales:{report_no}",
        keys="void",
        positions=[report.position],
        actor=actor,
    )
    if outcome.refund.status is payments.RefundState.FAILED:
        raise Conflict(
            f"refund {outcome.refund_no} failed ({outcome.refund.detail or 'no detail'}); the "
            "report stays open",
            where="report_no",
            slug="refund-failed",
        )
    now = utcnow()
    with shop.db.write() as s:
        report, order, item = _open_report(s, report_no)
        own_key = item.key_id is not None and not item.shared
        if own_key and item.key_id is not None:
            vault.mark_defective(
                s,
                item.key_id,
                order.id,
                _defect_reason(report),
                now,
                resolution="refunded",
                actor=actor,
                refund_no=outcome.refund_no,
                refund_minor=outcome.refund.amount_minor,
            )
        resolve_report(
            s,
            report_no,
            ReportStatus.REFUNDED,
            resolution="refund",
            actor=actor,
            now=now,
            note=text,
            refund_no=outcome.refund_no,
            refund_minor=outcome.refund.amount_minor,
        )
        _mail(
            s,
            order.order_no,
            "aftersales_refunded",
            report_no=report_no,
            position=report.position,
            amount_minor=outcome.refund.amount_minor,
        )
        final = find_report(s, report_no)
    assert final is not None
    return final


def reject_report(shop: Shop, report_no: str, actor: str, reason: str) -> ReportView:
    text = _check_actor_note(actor, reason, required=True)
    with shop.db.write() as s:
        report, order, _ = _open_report(s, report_no)
        resolve_report(
            s,
            report_no,
            ReportStatus.REJECTED,
            resolution="reject",
            actor=actor,
            now=utcnow(),
            note=text,
        )
        _mail(
            s,
            order.order_no,
            "aftersales_rejected",
            report_no=report_no,
            position=report.position,
            reason=text,
        )
        final = find_report(s, report_no)
    assert final is not None
    return final
