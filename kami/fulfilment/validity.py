"""Goods with a validity period (memberships): when they end, and the reminder before that.

`valid_until` is written on the item when it is recorded (delivered_at + the order's
validity_days, snapshotted at order time), in the delivery's own transaction: the truth is
there from the first moment, nothing has to scan for items that lack it, and a replacement
item gets its own period from its own delivery.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from kami import orders
from kami.delivery.service import take_reminders_due
from kami.fulfilment.shop import MAIL_JOB, Shop
from kami.fulfilment.views import REVEALABLE
from kami.kernel import outbox
from kami.kernel.clock import utcnow

log = logging.getLogger("kami.validity")

REMINDER_EVENT = "validity_reminder"


def valid_until(validity_days: int | None, delivered_at: datetime) -> datetime | None:
    """When goods delivered at `delivered_at` end; None for goods without a validity period."""
    if not validity_days:
        return None
    return delivered_at + timedelta(days=validity_days)


def send_validity_reminders(shop: Shop, *, days: int, now: datetime | None = None) -> int:
    """The sweep: one reminder mail per order whose items end within `days`; returns how many.

    Marking the items and enqueueing the mail happen in one transaction, and the marking is a
    guarded update, so a reminder is never sent twice, even by two workers at once. Items of a
    refunded or otherwise closed order, revoked items and items already ended are marked
    without a mail. `days` 0 turns reminders off.
    """
    if days <= 0:
        return 0
    now = now or utcnow()
    sent = 0
    with shop.db.write() as s:
        for due in take_reminders_due(s, now + timedelta(days=days), now):
            if not due.live:
                continue
            order = orders.find_order_by_id(s, due.order_id)
            if order is None or order.status not in REVEALABLE:
                continue
            outbox.enqueue(
                s,
                MAIL_JOB,
                {
                    "order_no": order.order_no,
                    "event": REMINDER_EVENT,
                    "valid_until": due.valid_until.isoformat(),
                    "positions": due.positions,
                },
                ref=order.order_no,
            )
            sent += 1
    if sent:
        log.info("validity reminders queued for %d order(s)", sent)
    return sent
