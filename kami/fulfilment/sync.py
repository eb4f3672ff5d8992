"""Query and fix: ask the payment channel about unpaid orders, so a lost callback never costs a
delivery. The channel's answer goes through exactly the path a notification takes
(`apply_notice`): same checks, same inbox, same recording of the raw answer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from kami import orders, payments
from kami.fulfilment.notify import Outcome, apply_notice
from kami.fulfilment.shop import Shop
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict

log = logging.getLogger("kami.sync")


@dataclass(frozen=True, slots=True)
class SyncResult:
    order_no: str
    found: bool
    outcome: Outcome | None
    status: str


def sync_order(shop: Shop, order_no: str) -> SyncResult:
    with shop.db.read() as s:
        order = orders.get_order(s, order_no)
    if order.status not in orders.PAYABLE:
        raise Conflict(
            f"order {order_no} is {order.status}; only an unpaid order is asked about",
            where="order_no",
            slug="not-syncable",
        )
    gateway = shop.gateways.get(order.gateway)
    now = utcnow()
    result = gateway.query(
        payments.PaymentRequest(
            order_no=order.order_no,
            amount_minor=order.amount_minor,
            currency=order.currency,
            subject=order.title,
            expires_at=order.expires_at,
        )
    )
    with shop.db.write() as s:
        orders.mark_synced(s, order_no, now)
    outcome = None
    if result.notice is not None and result.notice.status is payments.TradeStatus.PAID:
        raw = payments.RawNotification(
            gateway=order.gateway,
            method="QUERY",
            headers={},
            query={},
            body=result.raw.encode(),
            remote_addr=None,
        )
        outcome = apply_notice(shop, gateway, raw, result.notice, now)
        log.info("query found payment of %s: %s", order_no, outcome.verdict)
    with shop.db.read() as s:
        status = orders.get_order(s, order_no).status
    return SyncResult(order_no, result.notice is not None, outcome, status)


def sync_due(shop: Shop, *, after: timedelta, every: timedelta) -> int:
    """The scheduled sweep: query the channel for orders pending too long; returns how many
    payments it found and applied."""
    with shop.db.read() as s:
        due = orders.due_for_sync(s, utcnow(), after, every)
    found = 0
    for order_no in due:
        try:
            result = sync_order(shop, order_no)
        except Conflict:
            continue  # paid or expired since it was listed
        except Exception as exc:  # a channel being down must not stop the sweep
            log.warning("query for %s failed: %s", order_no, type(exc).__name__)
            continue
        if result.outcome is not None and result.outcome.verdict == payments.Verdict.ACCEPTED:
            found += 1
    return found
