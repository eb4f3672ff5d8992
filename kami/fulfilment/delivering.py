"""Turning a paid order into delivered keys, now or as soon as stock arrives (invariant 4)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from kami import catalog, delivery, orders, vault
from kami.fulfilment.goods.lines import serve_card_line, settle_order, start_delivery
from kami.fulfilment.shop import MAIL_JOB, UNSERVED_REFUND_JOB, Shop
from kami.fulfilment.validity import valid_until
from kami.kernel import outbox
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict

log = logging.getLogger("kami.fulfilment")


class _Raced(Exception):
    """The order changed under us; roll the claim back."""


def deliver_paid(session: Session, shop: Shop, order: orders.OrderView, now: datetime) -> bool:
    """Sell the order's reserved keys, or fresh ones if the reservation lapsed; record them.

    Runs inside the caller's transaction (the notify transaction, or a restock one), so the
    status change, the sale, the delivery rows and the mail job commit together or not at all.
    With no keys to be had, the order waits in awaiting_stock. Other kinds of goods (and
    bundles) are delivered line by line (kami.fulfilment.goods).
    """
    if order.delivery_kind != "card_key":
        return start_delivery(session, shop, order, now)
    hints = shop.claim_hints
    key_ids = vault.sell_reserved(session, order.id, order.quantity, now) or vault.take_keys(
        session, order.sku_id, order.id, order.quantity, now, hints=hints
    )
    if not key_ids:
        if order.status != orders.OrderStatus.AWAITING_STOCK:
            orders.move(session, order.id, orders.OrderStatus.AWAITING_STOCK)
            outbox.enqueue(
                session,
                MAIL_JOB,
                {"order_no": order.order_no, "event": "awaiting_stock"},
                ref=order.order_no,
            )
        return False
    if not deliver_sold(session, [(order, key_ids)], now):
        raise _Raced(order.order_no)
    return True


def deliver_sold(
    session: Session, sold: Sequence[tuple[orders.OrderView, list[int]]], now: datetime
) -> bool:
    """Each paid or awaiting order's sold keys recorded as its delivery, the order delivered and
    its mail queued. False if an order was no longer paid or awaiting stock: the caller rolls
    back."""
    moves = [(order.id, {"delivered_at": now}) for order, _ in sold]
    if not all(orders.move_each(session, orders.OrderStatus.DELIVERED, moves)):
        return False
    record_delivered(session, sold, now)
    return True


def record_delivered(
    session: Session, sold: Sequence[tuple[orders.OrderView, list[int]]], now: datetime
) -> None:
    """Each order's sold keys recorded as its delivery and its mail queued, the orders moved to
    delivered already in this transaction."""
    for order, key_ids in sold:
        delivery.record_items(
            session, order.id, key_ids, now, valid_until=valid_until(order.validity_days, now)
        )
        outbox.enqueue(
            session,
            MAIL_JOB,
            {"order_no": order.order_no, "event": "delivered"},
            ref=order.order_no,
        )


def pay_card_keys(
    session: Session, shop: Shop, order: orders.OrderView, trade_no: str, now: datetime
) -> bool | None:
    """A pending card-key order paid by `trade_no` and, from its reservation, delivered: one
    move of the order to delivered (`orders.pay_and_deliver_each`) where the payment's move to
    paid and the delivery's to delivered were two. None if it was no longer pending (paid
    before, or lapsed: `pay_lapsed`); nothing is written then. When keys of the reservation
    were withdrawn or ran out meanwhile the delivery is taken back in the transaction and the
    order goes the way every paid order goes (`deliver_paid`: fresh keys, or awaiting stock).
    Whether it was delivered."""
    [moved] = orders.pay_and_deliver_each(session, [(order.id, trade_no)], now)
    if not moved:
        return None
    key_ids = vault.sell_reserved(session, order.id, order.quantity, now)
    if key_ids:
        record_delivered(session, [(order, key_ids)], now)
        return True
    orders.not_delivered_yet(session, order.id, trade_no, now)
    paid = order.model_copy(update={"status": orders.OrderStatus.PAID})
    return deliver_paid(session, shop, paid, now)  # its sale of the reservation finds none


@dataclass(frozen=True, slots=True)
class LatePayment:
    """What `pay_lapsed` made of a payment for a lapsed order: delivered or not, and if it
    could not be served at all, why (the notification's record keeps it)."""

    delivered: bool
    refused: str | None = None


def pay_lapsed(
    session: Session, shop: Shop, order: orders.OrderView, trade_no: str, now: datetime
) -> LatePayment | None:
    """A payment for an order that lapsed (expired or cancelled) unpaid and gave its goods and
    its flash-sale quota back. None if the order was not lapsed (paid before: nothing written).

    Money that still arrives is honoured: the order is paid and served as every paid order is
    (`deliver_paid`: fresh goods, or awaiting stock). An order placed in a flash sale must
    first get its units of the sale's quota back, and its buyer must still be within the
    sale's per-buyer limit, counted as a checkout counts it; the sale's end does not matter,
    the price was agreed inside it. When either is gone the order cannot be served at the sale
    price without selling past what the seller offered: it fails, its money is refunded in
    full by the worker (`refund_unserved`), and the buyer is told why."""
    if not orders.pay_lapsed(session, order.id, trade_no, now):
        return None
    paid = order.model_copy(update={"status": orders.OrderStatus.PAID, "trade_no": trade_no})
    refused = _flash_terms_refused(session, shop, paid)
    if refused is None:
        return LatePayment(deliver_paid(session, shop, paid, now))
    slug, why = refused
    orders.move(session, order.id, orders.OrderStatus.FAILED, note=why)
    outbox.enqueue(
        session,
        UNSERVED_REFUND_JOB,
        {"order_no": order.order_no, "reason": why},
        ref=order.order_no,
    )
    outbox.enqueue(
        session,
        MAIL_JOB,
        {"order_no": order.order_no, "event": "unserved", "why": slug},
        ref=order.order_no,
    )
    log.warning("order %s paid after it lapsed, not served: %s", order.order_no, slug)
    return LatePayment(False, slug)


def _flash_terms_refused(
    session: Session, shop: Shop, order: orders.OrderView
) -> tuple[str, str] | None:
    """For an order placed in a flash sale and paid after it lapsed: its units of that sale's
    quota taken again (the sale it was placed in, even if another has followed it), unless the
    buyer would pass that sale's per-buyer limit or its quota is gone; then (slug, why). None
    for an order placed outside a flash sale."""
    placed_in = orders.flash_sale_of(session, order.id)
    if placed_in is None:
        return None
    sale_id, device_id = placed_in
    # PostgreSQL: the buyer's locks, as a checkout takes them, so that a checkout of the same
    # buyer cannot count its units while this payment adds to them (`orders.buyer_lock_keys`).
    locks = (
        orders.buyer_lock_keys(order.sku, orders.buyer_identities(order.email, device_id))
        if shop.db.dialect == "postgresql"
        else []
    )
    sale = catalog.find_flash_sale(session, sale_id, locks=locks)
    if sale is None:  # a sale is never deleted: its units cannot be had
        return "late-payment-quota-gone", "paid after it lapsed; its flash sale is gone"
    # This order, paid now, is one of the units counted.
    held = orders.quantity_held_in_sale(
        session, order.sku_id, sale_id, email=order.email, device_id=device_id
    )
    if held > sale.per_buyer_limit:
        return (
            "late-payment-limit-reached",
            f"paid after it lapsed; the buyer already holds {held - order.quantity} of the "
            f"flash sale's {sale.per_buyer_limit} per buyer",
        )
    if not catalog.take_quota(session, sale_id, order.quantity):
        return (
            "late-payment-quota-gone",
            f"paid after it lapsed; the flash sale's quota of {sale.quota} was taken by then",
        )
    return None


def serve_awaiting_stock(shop: Shop, sku_ids: Iterable[int] | None = None) -> int:
    """Deliver awaiting_stock orders, oldest payment first; returns how many were delivered.

    Each order gets its own short transaction, so a large backlog never holds the write lock
    for long. A SKU is left as soon as one of its orders cannot be served.
    """
    with shop.db.read() as s:
        waiting = orders.awaiting_stock(s)
    wanted = set(sku_ids) if sku_ids is not None else None
    exhausted: set[int] = set()
    served = 0
    for queued in waiting:
        if queued.sku_id in exhausted or (wanted is not None and queued.sku_id not in wanted):
            continue
        try:
            with shop.db.write() as s:
                order = orders.find_order(s, queued.order_no, for_update=True)
                if order is None or order.status != orders.OrderStatus.AWAITING_STOCK:
                    continue
                if deliver_paid(s, shop, order, utcnow()):
                    served += 1
                else:
                    exhausted.add(order.sku_id)
        except _Raced:
            continue
    served += serve_waiting_lines(shop, wanted)
    if served:
        log.info("delivered %d order(s) that were awaiting stock", served)
    return served


def serve_waiting_lines(shop: Shop, sku_ids: set[int] | None = None) -> int:
    """Bundle components that waited for keys: served when keys arrive, oldest first."""
    with shop.db.read() as s:
        waiting = delivery.waiting_lines(s)
    served = 0
    for line in waiting:
        if sku_ids is not None and line.sku_id not in sku_ids:
            continue
        with shop.db.write() as s:
            current = delivery.get_line(s, line.id, for_update=True)
            order = orders.find_order_by_id(s, line.order_id)
            if (
                current is None
                or order is None
                or current.status is not delivery.LineStatus.WAITING
            ):
                continue
            now = utcnow()
            if serve_card_line(s, shop, order, current, now):
                served += settle_order(s, shop, order.order_no, now)
    return served


def import_and_serve(
    shop: Shop,
    sku_id: int,
    rows: Iterable[vault.GoodLine | vault.BadLine],
    info: vault.BatchInfo,
    *,
    on_chunk: Callable[[vault.ImportReport], None] | None = None,
) -> vault.ImportReport:
    """Import keys in one transaction, then hand them to orders that have been waiting.

    Once the keys are committed the import has happened, whatever follows: a failure to serve
    the waiting orders (a lock that timed out, say) is logged and left to the worker, which
    serves them on its next sweep, and the caller still gets the report of what is in stock."""
    with shop.db.write() as s:
        report = vault.import_keys(s, shop.cipher, sku_id, rows, info, on_chunk=on_chunk)
    if report.imported:
        shop.forget_sold_out()
        try:
            serve_awaiting_stock(shop, [sku_id])
        except Exception as exc:  # the type only: no message or trace in the log (invariant 5)
            log.error(
                "batch %s is in stock, but its waiting orders were not served now (%s); "
                "the worker's next sweep serves them",
                report.batch,
                type(exc).__name__,
            )
    return report


def release_expired(session: Session, sku_id: int | None = None) -> int:
    """Expire unpaid orders past their time and put their keys and quota back on sale."""
    released = orders.expire_due(session, utcnow(), sku_id)
    if released:
        vault.release_reserved(session, [r.id for r in released])
        for r in released:
            if r.flash_sale_id is not None:
                catalog.give_back_quota(session, r.flash_sale_id, r.quantity)
    return len(released)


def expire_orders(shop: Shop) -> int:
    # Asked with a read first: the worker calls this every cycle, and on SQLite a write
    # transaction, even one that changes nothing, waits for and holds the database's one writer.
    with shop.db.read() as s:
        if not orders.any_expired_due(s, None, utcnow()):
            return 0
    with shop.db.write() as s:
        released = release_expired(s)
    if released:
        shop.forget_sold_out()
    return released


def redeliver(shop: Shop, order_no: str) -> dict[str, str]:
    """The admin's "deliver again": serve a waiting order now, or re-send a delivered one's mail."""
    with shop.db.write() as s:
        order = orders.get_order(s, order_no)
        if order.status == orders.OrderStatus.DELIVERED:
            outbox.enqueue(s, MAIL_JOB, {"order_no": order_no, "event": "delivered"}, ref=order_no)
            return {"order_no": order_no, "status": order.status, "action": "mail_queued"}
        if order.status != orders.OrderStatus.AWAITING_STOCK:
            raise Conflict(
                f"order {order_no} is {order.status}; only delivered or awaiting_stock orders "
                "can be redelivered",
                where="order_no",
                slug="not-redeliverable",
            )
    served = serve_awaiting_stock(shop, [order.sku_id])
    with shop.db.read() as s:
        now_status = orders.get_order(s, order_no).status
    action = "delivered" if now_status == orders.OrderStatus.DELIVERED else "still_awaiting_stock"
    log.info("redeliver %s: %s (%d served)", order_no, action, served)
    return {"order_no": order_no, "status": now_status, "action": action}
