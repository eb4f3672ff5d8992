"""Once paid: split the order into lines (its SKU, or each component of a bundle) and deliver
each by its kind, in the payment's transaction when the goods are at hand, later when they
come from elsewhere. When every line has ended, the order is delivered; a line that failed has
its share refunded through the order's payment channel while the others stand.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from kami import catalog, delivery, licenses, orders, vault
from kami.catalog import DeliveryKind
from kami.fulfilment.goods.downloads import serve_download_line
from kami.fulfilment.shop import MAIL_JOB, Shop
from kami.fulfilment.validity import valid_until
from kami.kernel import outbox
from kami.kernel.errors import Conflict, KamiError, NotFound

log = logging.getLogger("kami.goods")

REFUND_JOB = "goods.refund_failed_line"
Status = delivery.LineStatus


def plan(s: Session, order: orders.OrderView) -> list[delivery.LineSpec]:
    """The order's lines: one for a plain SKU, one per component for a bundle."""
    sku = catalog.get_sku(s, order.sku)
    kind = DeliveryKind(order.delivery_kind)
    if kind is not DeliveryKind.BUNDLE:
        return [delivery.LineSpec(sku.id, sku.code, kind.value, order.quantity, order.amount_minor)]
    config: catalog.BundleConfig = catalog.config_of(kind, sku.delivery_config)
    specs = []
    for c in config.components:
        part = catalog.get_sku(s, c.sku)
        quantity = c.quantity * order.quantity
        specs.append(
            delivery.LineSpec(
                part.id, part.code, part.delivery_kind, quantity, c.share_minor * quantity
            )
        )
    # The order may have been priced differently (a flash sale): shares follow the price paid.
    listed = sum(x.share_minor for x in specs)
    if listed and listed != order.amount_minor:
        scaled = [x.share_minor * order.amount_minor // listed for x in specs]
        scaled[-1] += order.amount_minor - sum(scaled)
        specs = [
            delivery.LineSpec(x.sku_id, x.sku_code, x.kind, x.quantity, share)
            for x, share in zip(specs, scaled, strict=True)
        ]
    return specs


def start_delivery(s: Session, shop: Shop, order: orders.OrderView, now: datetime) -> bool:
    """Create the lines of a just-paid order and deliver what is at hand; True when the whole
    order was delivered now."""
    lines = delivery.create_lines(s, order.id, plan(s, order), now)
    for line in lines:
        delivery.add_event(s, line, "line_created", now, f"{line.quantity} × {line.sku_code}")
        _start(s, shop, order, line, now)
    return settle_order(s, shop, order.order_no, now)


def _start(
    s: Session, shop: Shop, order: orders.OrderView, line: delivery.LineView, now: datetime
) -> None:
    kind = DeliveryKind(line.kind)
    if kind is DeliveryKind.CARD_KEY:
        serve_card_line(s, shop, order, line, now)
    elif kind in (DeliveryKind.REUSABLE_KEY, DeliveryKind.TEXT):
        _reusable_line(s, order, line, now)
    elif kind is DeliveryKind.LICENSE:
        _license_line(s, shop, order, line, now)
    elif kind is DeliveryKind.DOWNLOAD:
        serve_download_line(s, order, line, now)
    elif kind is DeliveryKind.MANUAL:
        delivery.move_line(s, line.id, [Status.PENDING], Status.PENDING, now, due_at=None)
        delivery.add_event(s, line, "queued_for_operator", now)
    else:  # webhook and recharge: the worker makes the attempt, outside any transaction
        delivery.add_event(s, line, "queued", now)


def serve_card_line(
    s: Session, shop: Shop, order: orders.OrderView, line: delivery.LineView, now: datetime
) -> bool:
    keys = vault.sell_reserved(
        s, order.id, line.quantity, now, sku_id=line.sku_id
    ) or vault.take_keys(s, line.sku_id, order.id, line.quantity, now, hints=shop.claim_hints)
    if not keys:
        if line.status is not Status.WAITING:
            delivery.move_line(s, line.id, [line.status], Status.WAITING, now)
            delivery.add_event(s, line, "waiting_for_stock", now)
        return False
    delivery.record_items(
        s,
        order.id,
        keys,
        now,
        start=delivery.next_position(s, order.id),
        line_id=line.id,
        valid_until=valid_until(order.validity_days, now),
    )
    return finish_line(s, line, Status.DELIVERED, now, f"{len(keys)} key(s)")


def _reusable_line(
    s: Session, order: orders.OrderView, line: delivery.LineView, now: datetime
) -> None:
    sku = catalog.get_sku(s, line.sku_code)
    config: catalog.ReusableConfig = catalog.config_of(
        DeliveryKind(sku.delivery_kind), sku.delivery_config
    )
    key_id = vault.shared_key(s, line.sku_id, now)
    if key_id is None:
        finish_line(s, line, Status.FAILED, now, "the key was withdrawn or expired")
        return
    if config.max_sales is not None and (
        delivery.count_shared(s, key_id) + line.quantity > config.max_sales
    ):
        finish_line(s, line, Status.FAILED, now, f"sold {config.max_sales} times already")
        return
    start = delivery.next_position(s, order.id)
    delivery.record_items(
        s,
        order.id,
        [key_id] * line.quantity,
        now,
        start=start,
        shared=True,
        line_id=line.id,
        valid_until=valid_until(order.validity_days, now),
    )
    finish_line(s, line, Status.DELIVERED, now)


def _license_line(
    s: Session, shop: Shop, order: orders.OrderView, line: delivery.LineView, now: datetime
) -> None:
    try:
        issued = licenses.issue(s, shop.cipher, line.sku_id, order.id, line.quantity, now)
    except KamiError as exc:  # no policy set for the SKU: a seller's mistake, visible on the line
        finish_line(s, line, Status.FAILED, now, exc.detail)
        return
    start = delivery.next_position(s, order.id)
    ids = [lic.license_id for lic in issued]
    delivery.record_licenses(
        s,
        order.id,
        ids,
        now,
        start=start,
        line_id=line.id,
        valid_until=valid_until(order.validity_days, now),
    )
    finish_line(s, line, Status.DELIVERED, now, f"{len(ids)} license(s)")


def deliver_goods(
    s: Session,
    shop: Shop,
    line: delivery.LineView,
    goods: Sequence[vault.Secret],
    source: str,
    now: datetime,
) -> bool:
    """Goods that arrived for a line (webhook answer, operator, supplier): stored encrypted as
    keys of the line's SKU, sold to the order, and the line delivered."""
    order_row = orders.find_order_by_id(s, line.order_id)
    assert order_row is not None
    key_ids = vault.store_delivered(
        s, shop.cipher, line.sku_id, line.order_id, goods, vault.BatchInfo(supplier=source), now
    )
    start = delivery.next_position(s, line.order_id)
    delivery.record_items(
        s,
        line.order_id,
        key_ids,
        now,
        start=start,
        line_id=line.id,
        valid_until=valid_until(order_row.validity_days, now),
    )
    moved = finish_line(s, line, Status.DELIVERED, now, f"{len(key_ids)} item(s) from {source}")
    settle_order(s, shop, order_row.order_no, now)
    return moved


def finish_line(
    s: Session,
    line: delivery.LineView,
    status: delivery.LineStatus,
    now: datetime,
    detail: str | None = None,
) -> bool:
    moved = delivery.move_line(s, line.id, list(delivery.OPEN), status, now, detail=detail)
    if moved:
        delivery.add_event(s, line, f"line_{status.value}", now, detail)
    return moved


def settle_order(s: Session, shop: Shop, order_no: str, now: datetime) -> bool:
    """When every line has ended: deliver the order (mail the buyer) and queue the refund of
    each failed line's share. True when the order is delivered."""
    order = orders.find_order(s, order_no, for_update=True)
    if order is None or order.status != orders.OrderStatus.PAID:
        return order is not None and order.status == orders.OrderStatus.DELIVERED
    lines = delivery.order_lines(s, order.id)
    if any(line.status in delivery.OPEN for line in lines):
        return False
    delivered = [line for line in lines if line.status is Status.DELIVERED]
    failed = [line for line in lines if line.status is Status.FAILED]
    if delivered:
        orders.move(s, order.id, orders.OrderStatus.DELIVERED, delivered_at=now)
        outbox.enqueue(
            s, MAIL_JOB, {"order_no": order.order_no, "event": "delivered"}, ref=order_no
        )
    else:  # nothing could be delivered: the order failed, and its money goes back
        orders.move(s, order.id, orders.OrderStatus.FAILED)
    for line in failed:
        outbox.enqueue(
            s,
            REFUND_JOB,
            {"order_no": order.order_no, "line_id": line.id},
            ref=order.order_no,
        )
    return bool(delivered)


def make_due(shop: Shop, line_id: int, now: datetime) -> None:
    """An admin's "try again now" for a line waiting for its next attempt."""
    with shop.db.write() as s:
        line = delivery.get_line(s, line_id, for_update=True)
        if line is None:
            raise NotFound(f"no delivery line {line_id}", where="line_id")
        if line.status not in (Status.PENDING, Status.PROCESSING):
            raise Conflict(
                f"line {line_id} is {line.status.value}; only a line waiting for its next "
                "attempt can be retried",
                where="line_id",
                slug="line-not-retryable",
            )
        delivery.move_line(s, line.id, [line.status], line.status, now, due_at=now)
        delivery.add_event(s, line, "retry_requested", now)


def buyer_parts(shop: Shop, order_id: int) -> list[delivery.LineView]:
    with shop.db.read() as s:
        return delivery.order_lines(s, order_id)
