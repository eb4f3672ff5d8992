"""Card keys bought from a supplier when a SKU runs low (自动补货), within a daily budget.

A card-key SKU whose settings carry `procurement` is checked by the worker's sweep: when fewer
keys than `threshold` are on sale and no purchase of it is in flight, `batch_size` keys (or as
many as the rest of the day's budget buys) are ordered from the supplier as a card purchase.
The keys arrive through the normal import path (`import_and_serve`, batch named after the
supplier with its unit cost), so orders awaiting stock are served first, oldest first.

A purchase is a supplier order with no line (line_id STOCK_PURCHASE), written before the call.
Its number `P<install>-<sku id>-<UTC day>-<n>x<quantity>` says what it is for: the day's rows
of a SKU are what the budget adds up (unit cost × keys, failed purchases excluded), `n` makes
two workers deciding at once collide on the number's unique constraint (one buys), `<install>`
keeps numbers of two installations on one supplier account apart, and the quantity lets an
early "not found" be sent again unchanged. Importing is idempotent (a key already in the vault
is a duplicate), so a purchase is marked succeeded only after its keys are in.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from kami import catalog, delivery, vault
from kami.catalog import DeliveryKind
from kami.fulfilment import delivering  # (module: delivering imports goods.lines)
from kami.fulfilment.shop import Shop
from kami.kernel.clock import utcnow
from kami.kernel.errors import NotFound
from kami.suppliers import SupplierOrderStatus, SupplierRequest, SupplierResult

log = logging.getLogger("kami.procurement")

ORDER_SALT = "supplier-orders"  # named secret: this installation's part of every number
State = delivery.SupplierOrderState
_NUMBER = re.compile(r"^P[0-9a-f]{8}-(\d+)-(\d{8})-(\d+)x(\d+)$")


@dataclass(frozen=True, slots=True)
class Procured:
    """What one look at a SKU did: `quantity` keys ordered (0: none, and `reason` says why)."""

    sku: str
    quantity: int
    reason: str
    customer_order_no: str | None = None
    status: str | None = None


def settings_of(sku: catalog.SkuView) -> Any:
    """The SKU's procurement settings, or None (not a card-key SKU, or none set)."""
    if sku.delivery_kind is not DeliveryKind.CARD_KEY:
        return None
    return catalog.config_of(DeliveryKind.CARD_KEY, sku.delivery_config).procurement


def procure_due(shop: Shop, now: datetime | None = None) -> list[Procured]:
    """The sweep: settle purchases in flight, then buy for every SKU below its threshold."""
    at = now or utcnow()
    settle_open_purchases(shop, at)
    with shop.db.read() as s:
        codes = [k.code for k in catalog.list_skus(s) if k.active and settings_of(k) is not None]
    done = []
    for code in codes:
        try:
            done.append(procure_sku(shop, code, now=at))
        except Exception as exc:  # one SKU's trouble must not stop the others
            log.warning("procurement of %s failed: %s", code, type(exc).__name__)
    return done


def procure_sku(shop: Shop, sku_code: str, *, now: datetime | None = None) -> Procured:
    at = now or utcnow()
    try:
        with shop.db.write() as s:
            sku = catalog.get_sku(s, sku_code)
            plan = settings_of(sku)
            if plan is None:
                return Procured(sku_code, 0, "no procurement settings")
            if plan.supplier not in shop.suppliers.names():
                return Procured(sku_code, 0, f"supplier {plan.supplier} is not configured")
            salt = shop.cipher.named_secret(s, ORDER_SALT)[:4].hex()
            of_sku = delivery.supplier_orders_numbered(s, f"P{salt}-{sku.id}-")
            if any(r.is_open for r in of_sku):
                return Procured(sku_code, 0, "a purchase is in flight")
            stock = vault.count_available(s, [sku.id]).get(sku.id, 0)
            if stock >= plan.threshold:
                return Procured(sku_code, 0, f"{stock} in stock (threshold {plan.threshold})")
            day = f"{at:%Y%m%d}"
            today = [r for r in of_sku if r.customer_order_no.split("-")[2] == day]
            spent = sum(r.cost_minor or 0 for r in today if r.status is not State.FAILED)
            room = plan.daily_budget_minor - spent
            quantity = plan.batch_size
            if plan.unit_cost_minor:
                quantity = min(quantity, room // plan.unit_cost_minor)
            if quantity < 1 or room <= 0:
                return Procured(
                    sku_code, 0, f"daily budget reached ({spent} of {plan.daily_budget_minor})"
                )
            number = f"P{salt}-{sku.id}-{day}-{len(today) + 1}x{quantity}"
            cost = quantity * plan.unit_cost_minor
            row = delivery.create_supplier_order(
                s,
                line_id=delivery.STOCK_PURCHASE,
                supplier=plan.supplier,
                product_id=plan.product_id,
                customer_order_no=number,
                now=at,
                cost_minor=cost,
            )
    except IntegrityError:  # another worker took this number a moment ago: it buys
        return Procured(sku_code, 0, "another worker is buying")
    log.info("buying %d × %s from %s (%s)", quantity, sku_code, plan.supplier, number)
    request = SupplierRequest(
        number,
        plan.product_id,
        quantity,
        None,
        kind="card",
        max_cost_minor=cost if plan.unit_cost_minor else None,
    )
    result = shop.suppliers.get(plan.supplier).submit(request)
    status = apply_purchase_result(shop, row, result, at)
    return Procured(sku_code, quantity, f"ordered from {plan.supplier}", number, status.value)


def _request(row: delivery.SupplierOrderView) -> SupplierRequest | None:
    match = _NUMBER.match(row.customer_order_no)
    if match is None:
        return None
    return SupplierRequest(
        row.customer_order_no, row.product_id, int(match.group(4)), None, kind="card"
    )


def settle_open_purchases(shop: Shop, now: datetime | None = None) -> int:
    """Ask about every purchase in flight (an early "not found" after an unknown submit is
    sent again, unchanged, to the same supplier); how many there were."""
    at = now or utcnow()
    with shop.db.read() as s:
        rows = delivery.open_stock_purchases(s)
    for row in rows:
        try:
            supplier = shop.suppliers.get(row.supplier)
        except NotFound as exc:
            gone = SupplierResult(row.customer_order_no, SupplierOrderStatus.UNKNOWN)
            apply_purchase_result(shop, row, gone, at, note=exc.detail)
            continue
        found = supplier.query(row.customer_order_no)
        request = _request(row)
        if found.never_received and request is not None:
            found = supplier.submit(request)
        apply_purchase_result(shop, row, found, at)
    return len(rows)


def apply_purchase_result(
    shop: Shop,
    row: delivery.SupplierOrderView,
    result: SupplierResult,
    at: datetime,
    *,
    note: str | None = None,
) -> State:
    """Record a supplier's answer about a purchase (submit, query or callback); a purchase
    already settled is left as it is. Returns the purchase's state afterwards."""
    status = result.status
    if status is SupplierOrderStatus.SUCCEEDED and not result.cards:
        # Fulu's callbacks (and some answers) carry no cards: they are collected by a query.
        try:
            fetched = shop.suppliers.get(row.supplier).query(row.customer_order_no)
        except NotFound:
            fetched = result
        if fetched.status is SupplierOrderStatus.SUCCEEDED and fetched.cards:
            result = fetched
        else:
            status = SupplierOrderStatus.PROCESSING
    if status is SupplierOrderStatus.FAILED and result.never_received:
        status = SupplierOrderStatus.UNKNOWN  # maybe early: query again, never buy elsewhere
    no = row.customer_order_no
    if status is SupplierOrderStatus.SUCCEEDED:
        _import(shop, row, result)
        with shop.db.write() as s:
            delivery.move_supplier_order(
                s,
                no,
                delivery.OPEN_STATES,
                State.SUCCEEDED,
                at,
                supplier_order_no=result.supplier_order_no,
                cost_minor=result.cost_minor,
                detail=f"{len(result.cards)} key(s) imported",
            )
    elif status is SupplierOrderStatus.FAILED:
        with shop.db.write() as s:
            delivery.move_supplier_order(
                s, no, delivery.OPEN_STATES, State.FAILED, at, detail=result.detail or "failed"
            )
    elif status is SupplierOrderStatus.PROCESSING:
        with shop.db.write() as s:
            delivery.move_supplier_order(
                s,
                no,
                delivery.OPEN_STATES,
                State.PROCESSING,
                at,
                supplier_order_no=result.supplier_order_no,
            )
    else:
        escalate = row.attempts + 1 >= shop.supplier_unknown_limit
        detail = note or result.detail or "no answer"
        with shop.db.write() as s:
            moved = delivery.move_supplier_order(
                s,
                no,
                delivery.OPEN_STATES,
                State.ESCALATED if escalate else State.UNKNOWN,
                at,
                detail=detail,
                unknown_call=True,
            )
        if moved and escalate:
            log.warning(
                "purchase %s at %s: outcome still unknown, ask the supplier", no, row.supplier
            )
    with shop.db.read() as s:
        now_row = delivery.get_supplier_order(s, no)
    return now_row.status if now_row else State.UNKNOWN


def _import(shop: Shop, row: delivery.SupplierOrderView, result: SupplierResult) -> None:
    match = _NUMBER.match(row.customer_order_no)
    if match is None:
        raise ValueError(f"{row.customer_order_no} is not a stock purchase number")
    cards = result.cards
    if result.cost_minor is not None:
        unit: int | None = result.cost_minor // len(cards)
    elif row.cost_minor is not None:
        unit = row.cost_minor // len(cards)
    else:
        unit = None
    lines = [
        vault.GoodLine(n, vault.Secret(c.card, c.password)) for n, c in enumerate(cards, start=1)
    ]
    info = vault.BatchInfo(
        supplier=row.supplier, unit_cost_minor=unit, source_name=row.customer_order_no
    )
    report = delivering.import_and_serve(shop, int(match.group(1)), lines, info)
    log.info(
        "purchase %s: %d key(s) imported, %d already in stock",
        row.customer_order_no,
        report.imported,
        report.duplicates_in_stock,
    )
