"""Direct recharge (直充) of the buyer's account through upstream suppliers, one line at a time.

The lifecycle, each step an event on the order's timeline:

1. The worker picks the line's next route (by priority, then cost, skipping routes that failed
   definitively and suppliers not configured) and writes a supplier order with Kami's number
   `<order_no>-<line position>-<n>` *before* calling (`submitting`).
2. The answer is recorded: `processing` (poll later, or wait for the callback), `unknown` (a
   time-out: the charge may stand), `supplier_failed` (definitive: no charge stands there) or
   success, which delivers the line with a receipt (or the cards the supplier sent).
3. An open supplier order is never abandoned: the next attempt *queries* it (`queried`). A
   "not found" after an unknown submit may be early, so the same number goes to the same
   supplier again (`resubmitted`; its duplicate check makes that idempotent). Only a definitive
   failure moves on to the next route (`failover`); after too many unknown outcomes a person is
   asked to look (`escalated`) and the line waits for them (fulfil or fail it by hand).
4. When every route has failed the line fails and settle_order refunds its share through the
   order's payment channel (the buyer is mailed about the refund).

Callbacks and polls settle a supplier order through the same function, `apply_result`, whose
guarded updates make a duplicate or late answer change nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from kami import catalog, delivery, orders, vault
from kami.catalog import DeliveryKind
from kami.fulfilment.goods import procurement
from kami.fulfilment.goods.lines import deliver_goods, finish_line, settle_order
from kami.fulfilment.shop import Shop
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, KamiError, NotFound
from kami.suppliers import (
    CallbackRejected,
    SupplierCallback,
    SupplierOrderStatus,
    SupplierRequest,
    SupplierResult,
)

log = logging.getLogger("kami.goods")

Status = delivery.LineStatus
State = delivery.SupplierOrderState
LEASE = timedelta(minutes=2)  # longer than any supplier call's time-out (at most 120 s)


def retry_delay(unknowns: int) -> timedelta:
    """After an unknown outcome: 5 s, 10 s, 20 s … at most 5 minutes."""
    return timedelta(seconds=min(5 * 2 ** max(unknowns - 1, 0), 300))


def poll_delay(since: datetime, now: datetime) -> timedelta:
    """While the supplier is processing: half the time it has been at it, 5 s to 5 minutes."""
    return min(max((now - since) / 2, timedelta(seconds=5)), timedelta(minutes=5))


def masked_account(account: str) -> str:
    text = account.strip()
    if len(text) >= 8:
        return f"{text[:3]}****{text[-4:]}"
    return f"{text[:1]}***{text[-1:]}" if len(text) > 2 else "***"


@dataclass(frozen=True, slots=True)
class _Call:
    row: delivery.SupplierOrderView
    request: SupplierRequest | None  # None: the order can be queried but not sent again
    query_first: bool


# -- the worker's attempt ---------------------------------------------------------------------
def attempt_recharge(shop: Shop, line_id: int, *, now: datetime | None = None) -> delivery.LineView:
    at = now or utcnow()
    with shop.db.write() as s:
        line = delivery.get_line(s, line_id, for_update=True)
        if line is None:
            raise NotFound(f"no delivery line {line_id}", where="line_id")
        if line.status not in (Status.PENDING, Status.PROCESSING) or (
            line.due_at is not None and line.due_at > at
        ):
            return line
        call = _plan(s, shop, line, at)
        if call is None:
            return delivery.get_line(s, line_id) or line
        # The lease: other workers skip the line until it runs out (a crash mid-call included;
        # the supplier order is open, so the next attempt queries it).
        delivery.move_line(
            s, line.id, [line.status], line.status, at, due_at=at + LEASE, attempted=True
        )
    result, notes = _call(shop, call)
    return _apply_to_line(shop, call.row.customer_order_no, result, at, notes)


def _plan(s: Session, shop: Shop, line: delivery.LineView, at: datetime) -> _Call | None:
    """The call to make now: query the open supplier order, or submit to the next route.
    None when there is nothing to call (the line failed, or it waits for a person)."""
    order = orders.find_order_by_id(s, line.order_id)
    assert order is not None
    sku = catalog.get_sku(s, line.sku_code)
    config: catalog.RechargeConfig = catalog.config_of(DeliveryKind.RECHARGE, sku.delivery_config)
    history = delivery.line_supplier_orders(s, line.id)
    if any(r.status is State.ESCALATED for r in history):
        return None  # the outcome is unknown there: only a person may move on
    account = (order.buyer_input or {}).get(config.account_field, "")
    current = next((r for r in history if r.is_open), None)
    if current is not None:
        try:
            again: SupplierRequest | None = SupplierRequest(
                current.customer_order_no, current.product_id, line.quantity, account
            )
        except KamiError:  # the SKU's settings changed meanwhile: query, never give up here
            again = None
        return _Call(current, again, query_first=True)
    try:
        tried = {(r.supplier, r.product_id) for r in history if r.status is State.FAILED}
        for route in sorted(config.routes, key=lambda r: (r.priority, r.cost_minor)):
            if (route.supplier, route.product_id) in tried:
                continue
            if route.supplier not in shop.suppliers.names():
                delivery.add_event(s, line, "route_skipped", at, f"{route.supplier}: not set up")
                continue
            number = f"{order.order_no}-{line.position}-{len(history) + 1}"
            request = SupplierRequest(number, route.product_id, line.quantity, account)
            row = delivery.create_supplier_order(
                s,
                line_id=line.id,
                supplier=route.supplier,
                product_id=route.product_id,
                customer_order_no=number,
                now=at,
            )
            if history:
                delivery.add_event(
                    s, line, "failover", at, f"{history[-1].supplier} → {route.supplier}"
                )
            delivery.add_event(
                s, line, "submitting", at, f"{route.supplier} product {route.product_id} #{number}"
            )
            return _Call(row, request, query_first=False)
    except KamiError as exc:  # no usable account: the buyer's input cannot be recharged
        reason = f"cannot recharge buyer_input.{config.account_field}: {exc.detail}"
        finish_line(s, line, Status.FAILED, at, reason)
        settle_order(s, shop, order.order_no, at)
        return None
    last = f": {history[-1].supplier}: {history[-1].detail or 'failed'}" if history else ""
    finish_line(s, line, Status.FAILED, at, f"every supplier route failed ({len(tried)}){last}")
    settle_order(s, shop, order.order_no, at)
    return None


def _call(shop: Shop, call: _Call) -> tuple[SupplierResult, list[tuple[str, str]]]:
    """Outside any transaction: the supplier's answer, and what happened on the way."""
    no = call.row.customer_order_no
    try:
        supplier = shop.suppliers.get(call.row.supplier)
    except NotFound as exc:  # taken out of the configuration while an order was open there
        return SupplierResult(no, SupplierOrderStatus.UNKNOWN, detail=exc.detail), []
    if not call.query_first and call.request is not None:
        return supplier.submit(call.request), []
    found = supplier.query(no)
    notes = [("queried", f"{call.row.supplier} #{no}: {_said(found)}")]
    if found.never_received and call.request is None:
        why = "not found, and the account to send it again is gone"
        return SupplierResult(no, SupplierOrderStatus.UNKNOWN, detail=why), notes
    if found.never_received and call.request is not None:
        notes.append(("resubmitted", f"{call.row.supplier} #{no}: the same number again"))
        return supplier.submit(call.request), notes
    return found, notes


def _said(result: SupplierResult) -> str:
    return f"{result.status.value}" + (f" ({result.detail})" if result.detail else "")


# -- one way to settle a supplier order: polls and callbacks ----------------------------------
def apply_result(
    shop: Shop, supplier: str, result: SupplierResult, *, via: str, now: datetime | None = None
) -> None:
    """Record what a supplier said about one of our orders (a verified callback, a query).
    Unknown numbers, other suppliers' numbers and orders already settled change nothing."""
    at = now or utcnow()
    with shop.db.read() as s:
        row = delivery.get_supplier_order(s, result.customer_order_no)
    if row is None or row.supplier != supplier:
        log.info("supplier %s: %s about an order that is not its own", supplier, via)
        return
    if row.line_id == delivery.STOCK_PURCHASE:
        procurement.apply_purchase_result(shop, row, result, at)
        return
    _apply_to_line(shop, row.customer_order_no, result, at, [(via, f"{supplier}: {_said(result)}")])


def handle_callback(shop: Shop, name: str, raw: SupplierCallback) -> tuple[int, bytes, str]:
    """A supplier's callback: verified by its adapter, then applied like a poll. The answer
    is the adapter's acknowledgement (success stops the supplier's retries)."""
    supplier = shop.suppliers.get(name)
    try:
        result = supplier.verify_callback(raw)
    except CallbackRejected as exc:
        log.warning("supplier %s: callback rejected (%s): %s", name, exc.slug, exc.detail)
        return supplier.acknowledge(False)
    apply_result(shop, name, result, via="callback")
    return supplier.acknowledge(True)


def _apply_to_line(
    shop: Shop,
    number: str,
    result: SupplierResult,
    at: datetime,
    notes: list[tuple[str, str]],
) -> delivery.LineView:
    with shop.db.write() as s:
        row = delivery.get_supplier_order(s, number)
        assert row is not None
        line = delivery.get_line(s, row.line_id, for_update=True)
        assert line is not None
        if row.is_open:
            for event, detail in notes:
                delivery.add_event(s, line, event, at, detail)
            _settle(s, shop, row, line, result, at)
        return delivery.get_line(s, line.id) or line


def _settle(
    s: Session,
    shop: Shop,
    row: delivery.SupplierOrderView,
    line: delivery.LineView,
    result: SupplierResult,
    at: datetime,
) -> None:
    no, open_line = row.customer_order_no, line.status in delivery.OPEN
    status = result.status
    if status is SupplierOrderStatus.FAILED and result.never_received:
        status = SupplierOrderStatus.UNKNOWN  # "not found" of a number we sent: maybe early
    if status is SupplierOrderStatus.SUCCEEDED:
        if not delivery.move_supplier_order(
            s,
            no,
            delivery.OPEN_STATES,
            State.SUCCEEDED,
            at,
            supplier_order_no=result.supplier_order_no,
            cost_minor=result.cost_minor,
            detail=result.detail,
        ):
            return
        told = f"{row.supplier} #{result.supplier_order_no or '-'}"
        delivery.add_event(
            s, line, "supplier_succeeded", at, told + (" (partial)" if result.partial else "")
        )
        if open_line:
            _deliver(s, shop, row, line, result, at)
        else:  # a person ended the line meanwhile: the charge stands at the supplier
            delivery.add_event(s, line, "late_success", at, f"line was {line.status.value}")
    elif status is SupplierOrderStatus.FAILED:
        if delivery.move_supplier_order(
            s, no, delivery.OPEN_STATES, State.FAILED, at, detail=result.detail or "failed"
        ):
            delivery.add_event(
                s, line, "supplier_failed", at, f"{row.supplier}: {result.detail or 'failed'}"
            )
            if open_line:  # definitive: the next route is tried at once
                delivery.move_line(s, line.id, [line.status], Status.PENDING, at, due_at=at)
    elif status is SupplierOrderStatus.PROCESSING:
        if delivery.move_supplier_order(
            s,
            no,
            delivery.OPEN_STATES,
            State.PROCESSING,
            at,
            supplier_order_no=result.supplier_order_no,
        ):
            if row.status is not State.PROCESSING:
                delivery.add_event(
                    s, line, "processing", at, f"{row.supplier} #{result.supplier_order_no or '-'}"
                )
            if open_line:
                due = at + poll_delay(row.created_at, at)
                delivery.move_line(s, line.id, [line.status], Status.PROCESSING, at, due_at=due)
    else:
        _unknown(s, shop, row, line, result, at)


def _unknown(
    s: Session,
    shop: Shop,
    row: delivery.SupplierOrderView,
    line: delivery.LineView,
    result: SupplierResult,
    at: datetime,
) -> None:
    """The charge may or may not stand: never another supplier. Query again later, and after
    too many unknown outcomes (bad credentials never clear) ask a person."""
    count = row.attempts + 1
    detail = result.detail or "no answer"
    if count >= shop.supplier_unknown_limit:
        if delivery.move_supplier_order(
            s,
            row.customer_order_no,
            delivery.OPEN_STATES,
            State.ESCALATED,
            at,
            detail=detail,
            unknown_call=True,
        ):
            why = (
                f"{row.supplier} #{row.customer_order_no}: outcome unknown after {count} calls "
                f"({detail}); ask the supplier, then deliver or fail the line by hand"
            )
            delivery.add_event(s, line, "escalated", at, why)
            if line.status in delivery.OPEN:  # parked: due_at empty, so no worker picks it
                delivery.move_line(s, line.id, [line.status], Status.PENDING, at, detail=why)
        return
    if delivery.move_supplier_order(
        s,
        row.customer_order_no,
        delivery.OPEN_STATES,
        State.UNKNOWN,
        at,
        detail=detail,
        unknown_call=True,
    ):
        delivery.add_event(s, line, "unknown", at, f"{row.supplier}: {detail}")
        if line.status in delivery.OPEN:
            due = at + retry_delay(count)
            delivery.move_line(s, line.id, [line.status], Status.PROCESSING, at, due_at=due)


def _deliver(
    s: Session,
    shop: Shop,
    row: delivery.SupplierOrderView,
    line: delivery.LineView,
    result: SupplierResult,
    at: datetime,
) -> None:
    if result.cards:
        goods = [vault.Secret(c.card, c.password) for c in result.cards]
    else:
        order = orders.find_order_by_id(s, line.order_id)
        sku = catalog.get_sku(s, line.sku_code)
        config: catalog.RechargeConfig = catalog.config_of(
            DeliveryKind.RECHARGE, sku.delivery_config
        )
        account = (order.buyer_input or {}).get(config.account_field, "") if order else ""
        units = f" ×{line.quantity}" if line.quantity > 1 else ""
        goods = [
            vault.Secret(
                f"充值成功 {masked_account(account)}{units} via {row.supplier} "
                f"#{result.supplier_order_no or '-'} ({row.customer_order_no})"
            )
        ]
    try:
        deliver_goods(s, shop, line, goods, f"supplier {row.supplier}", at)
    except Conflict as exc:  # cards already sold here: never sold twice, the share is refunded
        finish_line(s, line, Status.FAILED, at, f"{row.supplier}: {exc.detail}")
        order = orders.find_order_by_id(s, line.order_id)
        assert order is not None
        settle_order(s, shop, order.order_no, at)


# -- for a person -----------------------------------------------------------------------------
def escalated_lines(shop: Shop) -> list[tuple[delivery.LineView, delivery.SupplierOrderView]]:
    """Recharge lines waiting for a person: the supplier's outcome stayed unknown."""
    with shop.db.read() as s:
        found = []
        for line in delivery.lines_with_status(s, Status.PENDING, [DeliveryKind.RECHARGE.value]):
            rows = [
                r for r in delivery.line_supplier_orders(s, line.id) if r.status is State.ESCALATED
            ]
            if rows:
                found.append((line, rows[-1]))
        return found
