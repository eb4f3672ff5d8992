"""The worker's side of goods that come from elsewhere: attempts when due, with a lease so two
workers never call for the same line at once; backoff; giving up after the SKU's limit; the
refund of a failed line's share; and the operator's queue for manual goods. Recharge lines
are driven here too; their supplier lifecycle is in recharge.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kami import catalog, delivery, orders, vault
from kami.catalog import DeliveryKind
from kami.fulfilment.goods import recharge, webhook
from kami.fulfilment.goods.lines import deliver_goods, finish_line, settle_order
from kami.fulfilment.refunds import request_refund
from kami.fulfilment.shop import Shop
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger("kami.goods")

Status = delivery.LineStatus
LEASE = timedelta(minutes=2)  # longer than any call's timeout
DRIVEN = (DeliveryKind.WEBHOOK.value, DeliveryKind.RECHARGE.value)


def backoff(attempts: int) -> timedelta:
    """10 s, 20 s, 40 s … at most 10 minutes between attempts."""
    return timedelta(seconds=min(10 * 2 ** max(attempts - 1, 0), 600))


def drive_due(shop: Shop, now: datetime | None = None) -> int:
    """Attempt every line whose turn has come; returns how many were attempted."""
    at = now or utcnow()
    with shop.db.read() as s:
        due = delivery.due_lines(s, at, DRIVEN)
    for line in due:
        try:
            attempt_line(shop, line.id, now=at)
        except Exception as exc:  # one bad line must not stop the others
            log.warning("line %s: attempt failed: %s", line.id, type(exc).__name__)
    return len(due)


def attempt_line(shop: Shop, line_id: int, *, now: datetime | None = None) -> delivery.LineView:
    at = now or utcnow()
    with shop.db.read() as s:
        found = delivery.get_line(s, line_id)
    if found is not None and found.kind == DeliveryKind.RECHARGE.value:
        return recharge.attempt_recharge(shop, line_id, now=at)
    with shop.db.write() as s:
        line = delivery.get_line(s, line_id, for_update=True)
        if line is None:
            raise NotFound(f"no delivery line {line_id}", where="line_id")
        if line.status not in (Status.PENDING, Status.PROCESSING) or (
            line.due_at is not None and line.due_at > at
        ):
            return line
        # The lease: other workers skip the line until it runs out (a crash mid-call included).
        delivery.move_line(
            s, line.id, [line.status], line.status, at, due_at=at + LEASE, attempted=True
        )
        order = orders.find_order_by_id(s, line.order_id)
        sku = catalog.get_sku(s, line.sku_code)
        master = shop.cipher.named_secret(s, webhook.WEBHOOK_SECRET)
    assert order is not None
    config: catalog.WebhookConfig = catalog.config_of(DeliveryKind.WEBHOOK, sku.delivery_config)
    attempt_no = line.attempts + 1
    payload: dict[str, Any] = {
        "event": "delivery.requested",
        "delivery_id": f"{order.order_no}-{line.position}",
        "order_no": order.order_no,
        "sku": line.sku_code,
        "quantity": line.quantity,
        "buyer_input": order.buyer_input or {},
        "attempt": attempt_no,
    }
    result = webhook.call(
        config.url,
        webhook.sku_secret(master, line.sku_code),
        payload,
        idempotency_key=payload["delivery_id"],
        quantity=line.quantity,
        timeout=config.timeout_seconds,
        max_bytes=config.max_response_bytes,
    )
    return _record(shop, line, result, attempt_no, config.max_attempts)


def _record(
    shop: Shop,
    line: delivery.LineView,
    result: webhook.Attempt,
    attempt_no: int,
    max_attempts: int,
) -> delivery.LineView:
    now = utcnow()
    with shop.db.write() as s:
        current = delivery.get_line(s, line.id, for_update=True)
        if current is None or current.status not in (Status.PENDING, Status.PROCESSING):
            return current or line  # settled meanwhile (by an operator, say)
        error = result.error
        if result.goods is not None:
            try:
                deliver_goods(s, shop, current, result.goods, "webhook", now)
            except Conflict as exc:  # the same goods twice: never sold twice
                error = exc.detail
        if result.later and error is None:
            delivery.move_line(
                s,
                line.id,
                [current.status],
                Status.PROCESSING,
                now,
                due_at=now + backoff(attempt_no),
            )
            delivery.add_event(s, current, "processing", now, f"attempt {attempt_no}")
        elif error is not None and attempt_no >= max_attempts:
            finish_line(s, current, Status.FAILED, now, f"attempt {attempt_no}: {error}")
            order = orders.find_order_by_id(s, line.order_id)
            assert order is not None
            settle_order(s, shop, order.order_no, now)
        elif error is not None:
            retry = now + backoff(attempt_no)
            delivery.move_line(
                s, line.id, [current.status], Status.PENDING, now, due_at=retry, detail=error
            )
            delivery.add_event(s, current, "attempt_failed", now, f"attempt {attempt_no}: {error}")
        return delivery.get_line(s, line.id) or current


# -- refunds of failed lines -------------------------------------------------------------------
def refund_failed_line(shop: Shop, payload: dict[str, Any]) -> None:
    """The outbox job queued when a line failed: refund its share, once (the request key is
    the line), through the order's channel."""
    order_no, line_id = str(payload["order_no"]), int(payload["line_id"])
    with shop.db.read() as s:
        line = delivery.get_line(s, line_id)
    if line is None or line.status is not Status.FAILED or line.share_minor <= 0:
        return
    outcome = request_refund(
        shop,
        order_no,
        amount_minor=line.share_minor,
        reason=f"{line.sku_code} could not be delivered: {line.detail or 'failed'}"[:500],
        request_key=f"line-{line.id}",
    )
    with shop.db.write() as s:
        delivery.add_event(
            s, line, "share_refund", utcnow(), f"{outcome.refund.refund_no} {outcome.status}"
        )


# -- the operator's queue ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ManualTask:
    line: delivery.LineView
    order_no: str
    email: str
    buyer_input: dict[str, str]
    instructions: str
    paid_at: datetime | None


def manual_queue(shop: Shop) -> list[ManualTask]:
    """Manual goods waiting for an operator, oldest first."""
    with shop.db.read() as s:
        lines = delivery.lines_with_status(s, Status.PENDING, [DeliveryKind.MANUAL.value])
        tasks = []
        for line in lines:
            order = orders.find_order_by_id(s, line.order_id)
            sku = catalog.find_sku(s, line.sku_code)
            if order is None or order.status != orders.OrderStatus.PAID:
                continue
            config = catalog.config_of(DeliveryKind.MANUAL, sku.delivery_config if sku else None)
            tasks.append(
                ManualTask(
                    line,
                    order.order_no,
                    order.email,
                    order.buyer_input or {},
                    config.instructions,
                    order.paid_at,
                )
            )
    return tasks


def fulfil_by_hand(shop: Shop, line_id: int, goods: list[vault.Secret], actor: str) -> None:
    """The operator hands over the goods (a recharge receipt, an account, a code)."""
    if not goods:
        raise InvalidInput("give at least one item to deliver", where="goods")
    with shop.db.write() as s:
        line = _open_line(s, line_id)
        if len(goods) != line.quantity:
            raise InvalidInput(
                f"this line needs {line.quantity} item(s), {len(goods)} given", where="goods"
            )
        deliver_goods(s, shop, line, goods, f"operator {actor}", utcnow())


def fail_by_hand(shop: Shop, line_id: int, reason: str, actor: str) -> None:
    """The operator gives up on a line: its share is refunded."""
    if not reason.strip():
        raise InvalidInput("say why it cannot be delivered", where="reason")
    now = utcnow()
    with shop.db.write() as s:
        line = _open_line(s, line_id)
        finish_line(s, line, Status.FAILED, now, f"{actor}: {reason.strip()[:400]}")
        order = orders.find_order_by_id(s, line.order_id)
        assert order is not None
        settle_order(s, shop, order.order_no, now)


def _open_line(s: Any, line_id: int) -> delivery.LineView:
    line = delivery.get_line(s, line_id, for_update=True)
    if line is None:
        raise NotFound(f"no delivery line {line_id}", where="line_id")
    if line.status not in delivery.OPEN:
        raise Conflict(
            f"line {line_id} is already {line.status.value}", where="line_id", slug="line-settled"
        )
    return line
