"""Placing an order: check the catalog, the buyer's caps and the flash sale, reserve the keys.

Everything happens in one write transaction: the order row, the flash-sale quota and the key
reservation commit together, or (sold out, limit reached) none of them does, so a buyer is told
at order time whether they got one and no money is ever asked for a key that is not held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from kami import catalog, orders, payments, vault
from kami.fulfilment.delivering import release_expired
from kami.fulfilment.goods.stock import SoldOut, has_goods, reserve, sold_out, sold_out_of
from kami.fulfilment.shop import Shop
from kami.fulfilment.terms import (
    check_amount,
    check_caps,
    check_terms,
    check_window,
    mark_flash_sale,
    price,
)
from kami.kernel import waiting
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, NotFound
from kami.kernel.prepared import Ask, ask_all


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    order: orders.OrderView
    access_token: str
    payment: payments.PaymentInstruction
    created: bool


def _sold_out(sku: catalog.SkuView) -> Conflict:
    return sold_out(sku)


@dataclass(frozen=True, slots=True)
class OpenedOrder:
    """An order placed and its goods reserved, not yet sent to its payment channel."""

    order: orders.OrderView
    created: bool  # False: an Idempotency-Key replay answered with the order first placed
    payer_ip: str | None


def place_order(
    shop: Shop,
    data: orders.OrderIn,
    *,
    idempotency_key: str | None = None,
    buyer_ip: str | None = None,
    device_id: str | None = None,
    channel: str = "shop",
) -> PlacedOrder:
    opened = open_order(
        shop,
        data,
        idempotency_key=idempotency_key,
        buyer_ip=buyer_ip,
        device_id=device_id,
        channel=channel,
    )
    return request_payment(shop, opened)


def key_fits(idempotency_key: str) -> bool:
    """Whether an Idempotency-Key is one `open_order` takes: 1 to 128 characters."""
    return 1 <= len(idempotency_key) <= 128


def open_order(
    shop: Shop,
    data: orders.OrderIn,
    *,
    idempotency_key: str | None = None,
    buyer_ip: str | None = None,
    device_id: str | None = None,
    channel: str = "shop",
) -> OpenedOrder:
    """Place the order and reserve its goods, in one write transaction; nothing else."""
    if idempotency_key is not None and not key_fits(idempotency_key):
        raise InvalidInput("Idempotency-Key must be 1 to 128 characters", where="Idempotency-Key")
    try:
        shop.gateways.get(data.gateway)
    except NotFound as exc:
        raise InvalidInput(exc.detail, where="gateway", slug="unknown-gateway") from None
    if shop.recently_sold_out(data.sku):
        _refuse_early(shop, data, idempotency_key)
    # SQLite: the SKU's own terms are checked from a read, before the write lock is queued for:
    # the writer is the whole database's, and every statement it holds it for is one that every
    # other checkout and payment waits behind. PostgreSQL: the write transaction's first
    # statement reads them and takes the buyer's locks (`catalog.find_sku_on_sale`) in one
    # round trip (decision 0019). On both, an unknown SKU is answered before a replayed
    # Idempotency-Key, and a replay answers with the order first placed, whatever the SKU's
    # terms are now. A SKU or flash sale edited in between is the same race as an order placed
    # a moment earlier; stock, quota and caps are checked under the lock.
    locks = (
        orders.buyer_lock_keys(data.sku, orders.buyer_identities(data.email, device_id))
        if shop.db.dialect == "postgresql"
        else None
    )
    buyer_input: dict[str, str] = {}
    read_now = True
    if locks is None:
        # Read once if the write is refused and runs again (decision 0025), for this input.
        (terms, buyer_input), read_now = waiting.read_once(
            ("checkout terms", idempotency_key),
            lambda: _read_terms(shop, data, idempotency_key),
            of=data,
        )
    with shop.db.write() as s:
        if locks is not None:
            terms = catalog.get_sku_on_sale(s, data.sku, locks=locks)
            mark_flash_sale(shop, data, terms)
        replay = orders.find_idempotent(s, idempotency_key, data) if idempotency_key else None
        if replay is not None:
            return OpenedOrder(replay, False, buyer_ip)
        if locks is not None:
            buyer_input = check_terms(shop, terms[0], data)
        sku, sale = terms
        try:
            order = _place(
                s,
                shop,
                sku,
                sale,
                buyer_input,
                data,
                idempotency_key,
                buyer_ip,
                device_id,
                channel,
                quota_read_now=read_now,
            )
        except SoldOut:
            shop.mark_sold_out(data.sku, data.quantity)
            raise
    return OpenedOrder(order, True, buyer_ip)


_Terms = tuple[catalog.SkuView, catalog.FlashSaleView | None]


def _read_terms(
    shop: Shop, data: orders.OrderIn, idempotency_key: str | None
) -> tuple[_Terms, dict[str, str]]:
    """SQLite: the SKU's terms and the checked buyer input, from a read (none for a replayed
    Idempotency-Key, whose order is answered as it was placed)."""
    with shop.db.read() as s:
        terms = catalog.get_sku_on_sale(s, data.sku)
        earlier = orders.find_idempotent(s, idempotency_key, data) if idempotency_key else None
    mark_flash_sale(shop, data, terms)
    return terms, check_terms(shop, terms[0], data) if earlier is None else {}


def request_payment(shop: Shop, opened: OpenedOrder) -> PlacedOrder:
    """Ask the order's channel how the buyer pays. A call of its own, after the order
    committed: a channel's network call must never hold the write lock, and a caller that may
    not wait (`kernel.waiting`) is refused before the request leaves, then runs this again."""
    order = opened.order
    payment = shop.gateways.get(order.gateway).create_payment(
        payments.PaymentRequest(
            order_no=order.order_no,
            amount_minor=order.amount_minor,
            currency=order.currency,
            subject=order.title,
            expires_at=order.expires_at,
            payer_ip=opened.payer_ip,
        )
    )
    token = orders.access_token(shop.token_secret(), order.order_no)
    return PlacedOrder(order, token, payment, opened.created)


def sold_out_from_memory(
    shop: Shop, data: orders.OrderIn, idempotency_key: str | None
) -> SoldOut | None:
    """The "sold out" of a checkout without an Idempotency-Key that the process's memory of
    that answer covers (`Shop.sold_out_just_now`), as `open_order` would give it; else None.
    The web layer asks it before a checkout joins a group or waits for its turn (decision
    0024): after a sellout thousands of buyers a second are refused, and each waited a pass of
    the event loop, or several, for an answer that needs nothing but memory. An unknown
    channel is answered by `open_order` first, as ever."""
    if idempotency_key is not None or not shop.sold_out_just_now(data.sku, data.quantity):
        return None
    if data.gateway not in shop.gateways:
        return None  # its 422 comes from `open_order`
    return sold_out_of(data.sku)


def _refuse_early(shop: Shop, data: orders.OrderIn, idempotency_key: str | None) -> None:
    """Answer "sold out" from memory or a read, without queueing for the write lock.

    After a flash sale is gone, thousands of buyers still arrive; each would otherwise take a
    write transaction (on SQLite, the database's one writer) just to be told no. The check is
    repeated inside the write transaction, which stays the authority. A "sold out" found here
    keeps the SKU marked, so that the next buyers read too: when the mark lapsed, every checkout
    in flight went to the write path at once and queued for the writer (seen in the flash
    sale as a stall of up to a second whenever another process held it). The mark also lets
    the next SOLD_OUT_ANSWER seconds' keyless buyers have the same answer from memory, but
    never past the moment the SKU's first unpaid order runs out of time and gives its goods
    back. A keyed one always reads (`sold_out_for`)."""
    refused = sold_out_from_memory(shop, data, idempotency_key)
    if refused is not None:
        raise refused
    placed = sold_out_for(shop, data, [] if idempotency_key is None else [idempotency_key])
    if placed is None or any(placed):
        return  # the write path: an order, its precise problem, or a retry's order back
    raise sold_out_of(data.sku)


def sold_out_for(shop: Shop, data: orders.OrderIn, keys: Sequence[str]) -> list[bool] | None:
    """One read: None if `data.quantity` of the SKU may still be had (or only the write path
    can say why not); if it is gone, for each of `keys` (Idempotency-Keys), whether an order was
    placed with it. Gone marks the SKU sold out in this process (`Shop.mark_sold_out`).

    A checkout with an Idempotency-Key (the storefront's form sends one with every order) may
    be a retry of an order placed, which must get that order back. So it is answered "sold out"
    only if its key placed nothing, looked up after the stock was read and found gone (on
    SQLite in the same snapshot, on PostgreSQL a later statement of the same round trip).
    That look is enough, without waiting for the buyer's checkouts in flight (decision
    0023): a first try that took goods either
    committed before the stock was read (its order is then found by its key), or had not,
    and the goods it holds were still counted as there. A first try that has not taken goods
    yet meets the same sold-out SKU as everyone else, unless goods come back in that instant.
    The stock is read again for each keyed checkout, never taken from the memory of an answer,
    which would widen that instant to SOLD_OUT_ANSWER."""
    now = utcnow()
    with shop.db.read() as s:
        found = catalog.find_sku_on_sale(s, data.sku)
        if found is None:
            return None  # the write path gives the precise problem
        mark_flash_sale(shop, data, found)
        sku, sale = found
        if (
            not sku.active
            or not sku.min_quantity <= data.quantity <= sku.max_quantity
            or sku.delivery_kind != catalog.DeliveryKind.CARD_KEY
        ):
            return None  # the write path gives the precise problem
        if sale is not None and not sale.starts_at <= now < sale.ends_at:
            return None  # "not started" / "ended" come from the write path
        quota_gone = sale is not None and sale.taken + data.quantity > sale.quota
        # The stock (unless the quota is gone), then when the next unpaid order lapses, then
        # the keys, each read after the one before (in one snapshot on SQLite; on PostgreSQL
        # in one round trip, decision 0024).
        asks: list[Ask[Any]] = [] if quota_gone else [vault.stock_ask(sku.id, data.quantity, now)]
        asks += [orders.next_expiry_ask(sku.id), *orders.idempotency_key_asks(keys)]
        answers = ask_all(s, asks)
        if not quota_gone and answers.pop(0):
            return None
        due, placed = answers[0], answers[1:]
        if due is not None and due <= now:
            return None  # a lapsed reservation: the write path puts it back on sale and sells it
    until_due = (due - now).total_seconds() if due is not None else None
    shop.mark_sold_out(data.sku, data.quantity, answer_for=until_due)
    return placed


def _place(
    s: Session,
    shop: Shop,
    sku: catalog.SkuView,
    sale: catalog.FlashSaleView | None,
    buyer_input: dict[str, str],
    data: orders.OrderIn,
    idempotency_key: str | None,
    buyer_ip: str | None,
    device_id: str | None,
    channel: str,
    *,
    quota_read_now: bool = True,
) -> orders.OrderView:
    now = utcnow()
    if sale is not None:
        check_window(sku, sale, data)
        # The quota as last read (`catalog.take_quota` below decides), with the unpaid orders
        # past their time given back first. Not when it was read before a wait for the writer
        # (decision 0025): a cancellation may have given some back meanwhile.
        if (
            quota_read_now
            and sale.taken + data.quantity > sale.quota
            and not release_expired(s, sku.id)
        ):
            raise _sold_out(sku)
    unit_price = sale.price_minor if sale else sku.price_minor
    check_amount(sku, unit_price, data.quantity)
    # Card keys: the claim below says whether there are any (one statement fewer for every
    # order that gets them). The other kinds ask first. Either way, reservations that lapsed a
    # moment ago go back on sale now, not at the next sweep.
    card_keys = sku.delivery_kind == catalog.DeliveryKind.CARD_KEY
    if (
        not card_keys
        and not has_goods(s, sku, data.quantity, now)
        and (not release_expired(s, sku.id) or not has_goods(s, sku, data.quantity, now))
    ):
        raise _sold_out(sku)
    check_caps(s, shop, sku, sale, data, buyer_ip, device_id)
    priced = price(sku, sale, buyer_input)
    ttl = timedelta(minutes=sale.reservation_minutes) if sale else shop.order_ttl
    order, _ = orders.create_order(
        s,
        data,
        priced,
        now=now,
        ttl=ttl,
        idempotency_key=idempotency_key,
        buyer_ip=buyer_ip,
        device_id=device_id,
        channel=channel,
    )
    try:
        reserve(s, shop, sku, order, now, device_id)  # SoldOut rolls the order back too
    except SoldOut:
        # A claim of card keys takes all or none, so it can simply be asked again.
        if not card_keys or not release_expired(s, sku.id):
            raise
        reserve(s, shop, sku, order, now, device_id)
    # The quota last: on PostgreSQL its row is locked from this statement to the commit, and
    # every buyer of the sale queues for it, so it is held for one round trip, not for the
    # claim's as well (decision 0018).
    if (
        sale is not None
        and not catalog.take_quota(s, sale.id, data.quantity)
        and (not release_expired(s, sku.id) or not catalog.take_quota(s, sale.id, data.quantity))
    ):
        raise _sold_out(sku)  # rolls the order and its reservation back with it
    return order


def cancel_order(shop: Shop, order_no: str, token: str | None) -> orders.OrderView:
    """The buyer gives up an unpaid order: its keys and quota go back on sale at once."""
    from kami.fulfilment.views import authorise

    authorise(shop, order_no, token)
    with shop.db.write() as s:
        order = orders.get_order(s, order_no)
        released = orders.cancel(s, order.id)
        if released is None:
            raise Conflict(
                f"order {order_no} is {order.status}; only a pending order can be cancelled",
                where="order_no",
                slug="not-cancellable",
            )
        vault.release_reserved(s, [released.id])
        if released.flash_sale_id is not None:
            catalog.give_back_quota(s, released.flash_sale_id, released.quantity)
        cancelled = orders.get_order(s, order_no)
    shop.forget_sold_out()
    return cancelled
