"""A flash sale's checkouts that arrive together, placed in one transaction (decision 0020).

In the first second of a flash sale every buyer is a winner, and each checkout was its own
transaction of five statements and a commit: the first few hundred buyers queued for one
another's round trips. Here the checkouts of one SKU that a process has at the same moment are
placed together, with the statements of one: the SKU read with every buyer's lock, one count
of all their orders, one INSERT of all the orders, one claim that hands each order its keys,
one quota UPDATE, one COMMIT. Every rule is the one `checkout.open_order` applies, in the
same order, and each buyer gets the answer they would have had alone, as if the group had come
one after another in arrival order. An Idempotency-Key used before is answered as alone, with
its order or a 409, and a new one is written with its order (since 2026-12-07: the shop's own
checkout form sends one with every order).

The group never decides what it cannot be sure of. Whenever the answer would need what only
the single path does (a lapsed reservation to put back first, stock shorter than the quota,
the quota taken meanwhile by another process, an SKU not sold as card keys, an
Idempotency-Key taken meanwhile by another process), the transaction is rolled back, nothing
is written, and each checkout is placed alone (`None`). A key that comes twice in one group is
placed alone the second time, after the group.

After the SKU sold out, the group is answered from the process's memory of that answer, the
keyed checkouts from one read of the stock and of all their keys (decision 0023).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from sqlalchemy import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kami import catalog, orders, vault
from kami.fulfilment.checkout import OpenedOrder, key_fits, sold_out_for
from kami.fulfilment.delivering import release_expired
from kami.fulfilment.goods.stock import sold_out, sold_out_of
from kami.fulfilment.shop import Shop
from kami.fulfilment.terms import (
    check_amount,
    check_counts,
    check_terms,
    check_window,
    mark_flash_sale,
    price,
)
from kami.kernel.clock import utcnow
from kami.kernel.errors import InvalidInput, KamiError, NotFound
from kami.kernel.prepared import shape_size

# At most this many checkouts, and units of goods, in one group: every size is a statement
# of its own shape, prepared once per connection.
MAX_GROUP = 32
MAX_UNITS = 64


@dataclass(frozen=True, slots=True)
class Checkout:
    """One buyer's checkout, as `open_order` takes it."""

    data: orders.OrderIn
    buyer_ip: str | None = None
    device_id: str | None = None
    channel: str = "shop"
    idempotency_key: str | None = None


# What a checkout of a group comes to: its order, its refusal, or None: to be placed alone.
Outcome = OpenedOrder | KamiError | None


def ready(dialect: Dialect) -> None:
    """Compile the group's statements of every size now: a server process does it as it
    starts, so that a flash sale's first buyers do not wait for it (a group of 32 compiled its
    statements in 0.2 s). The buyers' locks are PostgreSQL's only."""
    orders.ready_many(dialect, MAX_GROUP)
    vault.ready_reserve_keys_for(dialect, MAX_UNITS)
    if dialect.name == "postgresql":
        catalog.ready_sku_and_sale_locking(dialect, 2 * MAX_GROUP)


class _Alone(Exception):
    """The group cannot be placed as one: roll it back, and each is placed alone."""


def open_orders_together(shop: Shop, checkouts: Sequence[Checkout]) -> list[Outcome]:
    """Place the checkouts of one flash-sale SKU together; one outcome per checkout, in order.

    A checkout of another SKU than the first's, or past MAX_GROUP or MAX_UNITS, is left to be
    placed alone; so are all of them when the group cannot be placed as one."""
    alone: list[Outcome] = [None] * len(checkouts)
    if not checkouts:
        return alone
    code = checkouts[0].data.sku
    if shop.recently_sold_out(code):
        return _refused_after_sellout(shop, code, checkouts)
    outcomes: list[Outcome] = list(alone)
    members: list[int] = []
    units = 0
    idempotency_keys: set[str] = set()  # one a second time in the group: alone, after
    for i, c in enumerate(checkouts):
        if c.data.sku != code or len(members) == MAX_GROUP or units + c.data.quantity > MAX_UNITS:
            continue
        if c.idempotency_key is not None:
            if c.idempotency_key in idempotency_keys or not key_fits(c.idempotency_key):
                continue  # twice, or a key alone refuses (422)
            idempotency_keys.add(c.idempotency_key)
        try:
            shop.gateways.get(c.data.gateway)
        except NotFound as exc:
            outcomes[i] = InvalidInput(exc.detail, where="gateway", slug="unknown-gateway")
            continue
        members.append(i)
        units += c.data.quantity
    if len(members) < 2:
        return alone
    locks: list[int] = []
    if shop.db.dialect == "postgresql":
        keys = set()
        for i in members:
            c = checkouts[i]
            keys.update(
                orders.buyer_lock_keys(code, orders.buyer_identities(c.data.email, c.device_id))
            )
        locks = sorted(keys)  # in one order everywhere: no deadlocks
        # Padded with the last key again (a lock held twice is held once) to a statement
        # shape made ahead (`ready`).
        locks += locks[-1:] * (shape_size(len(locks)) - len(locks))
    sold_out_units: list[int] = []
    try:
        with shop.db.write() as s:
            found = catalog.find_sku_on_sale(s, code, locks=locks)
            if found is None:
                raise _Alone
            mark_flash_sale(shop, checkouts[members[0]].data, found)
            sku, sale = found
            if sale is None or sku.delivery_kind != catalog.DeliveryKind.CARD_KEY:
                raise _Alone
            _place_together(s, shop, sku, sale, checkouts, members, outcomes, sold_out_units)
    except (_Alone, IntegrityError):  # IntegrityError: a key another process took meanwhile
        return alone
    for quantity in sold_out_units:
        shop.mark_sold_out(code, quantity)
    return outcomes


def _refused_after_sellout(shop: Shop, code: str, checkouts: Sequence[Checkout]) -> list[Outcome]:
    """After the SKU sold out, "sold out" for each checkout of it as `checkout._refuse_early`
    answers one alone: a keyless one the process's memory of that answer covers
    (`Shop.sold_out_just_now`) from memory; the keyed ones (of the first keyed one's quantity)
    from one read of the stock and then of all their keys (`checkout.sold_out_for`: one read
    for the group, where alone each made its own: decision 0023). A key that placed an order
    goes alone, to be given it back; so does everything else (the first alone reads the stock
    again, and the memory with it)."""
    outcomes: list[Outcome] = [None] * len(checkouts)
    keyed: list[int] = []
    for i, c in enumerate(checkouts):
        if c.data.sku != code:
            continue
        if c.idempotency_key is not None and not key_fits(c.idempotency_key):
            continue  # alone refuses it (422)
        try:
            shop.gateways.get(c.data.gateway)
        except NotFound as exc:
            outcomes[i] = InvalidInput(exc.detail, where="gateway", slug="unknown-gateway")
            continue
        if c.idempotency_key is not None:
            if not keyed or c.data.quantity == checkouts[keyed[0]].data.quantity:
                keyed.append(i)
        elif shop.sold_out_just_now(code, c.data.quantity):
            outcomes[i] = sold_out_of(code)
    if keyed:
        keys = [cast(str, checkouts[i].idempotency_key) for i in keyed]
        placed = sold_out_for(shop, checkouts[keyed[0]].data, keys)
        if placed is not None:
            for i, used in zip(keyed, placed, strict=True):
                if not used:
                    outcomes[i] = sold_out_of(code)
    return outcomes


def _place_together(
    s: Session,
    shop: Shop,
    sku: catalog.SkuView,
    sale: catalog.FlashSaleView,
    checkouts: Sequence[Checkout],
    members: list[int],
    outcomes: list[Outcome],
    sold_out_units: list[int],
) -> None:
    """`checkout._place` for the members, in arrival order; raises _Alone to roll back."""
    # As alone, a key used before is answered first: with its order, or with a 409.
    keyed = [i for i in members if checkouts[i].idempotency_key is not None]
    if keyed:
        asked = [(cast(str, checkouts[i].idempotency_key), checkouts[i].data) for i in keyed]
        for i, earlier in zip(keyed, orders.find_idempotent_each(s, asked), strict=True):
            if isinstance(earlier, KamiError):
                outcomes[i] = earlier
            elif earlier is not None:
                outcomes[i] = OpenedOrder(earlier, False, checkouts[i].buyer_ip)
        members = [i for i in members if outcomes[i] is None]
    now = utcnow()
    inputs: dict[int, dict[str, str]] = {}
    for i in members:
        data = checkouts[i].data
        try:
            inputs[i] = check_terms(shop, sku, data)
            check_window(sku, sale, data)
        except KamiError as exc:
            outcomes[i] = exc
    candidates = [i for i in members if outcomes[i] is None]
    if not candidates:
        return
    buyers = [
        orders.Buyer(checkouts[i].data.email, checkouts[i].device_id, checkouts[i].buyer_ip)
        for i in candidates
    ]
    counts = orders.count_open_many(s, sku.id, buyers, sale.id)
    taken = sale.taken
    accepted: list[int] = []
    released = False
    for i, held in zip(candidates, counts, strict=True):
        c = checkouts[i]
        quantity = c.data.quantity
        if taken + quantity > sale.quota:
            # As alone: lapsed reservations go back on sale first, and then the single path
            # decides (this transaction, and the release with it, is rolled back).
            if not released and release_expired(s, sku.id):
                raise _Alone
            released = True
            outcomes[i] = sold_out(sku)
            sold_out_units.append(quantity)
            continue
        for j in accepted:  # the group's own orders, placed before this one
            _count_in(held, c, checkouts[j])
        try:
            check_amount(sku, sale.price_minor, quantity)
            check_counts(shop, sku, sale, c.data, held)
        except KamiError as exc:
            outcomes[i] = exc
            continue
        taken += quantity
        accepted.append(i)
    if not accepted:
        return
    new = [
        orders.NewOrder(
            checkouts[i].data,
            price(sku, sale, inputs[i]),
            checkouts[i].buyer_ip,
            checkouts[i].device_id,
            checkouts[i].channel,
            checkouts[i].idempotency_key,
        )
        for i in accepted
    ]
    ttl = timedelta(minutes=sale.reservation_minutes)
    placed = orders.create_orders(s, new, now=now, ttl=ttl)
    wants = [(o.id, o.quantity) for o in placed]
    if vault.reserve_keys_for(s, sku.id, wants, now, hints=shop.claim_hints) is None:
        raise _Alone  # fewer keys than the quota: alone, each finds out with lapsed ones back
    # The quota last, as alone (decision 0018); taken meanwhile by another process: alone.
    if not catalog.take_quota(s, sale.id, sum(o.quantity for o in placed)):
        raise _Alone
    for i, order in zip(accepted, placed, strict=True):
        outcomes[i] = OpenedOrder(order, True, checkouts[i].buyer_ip)


def _count_in(held: dict[str, int], buyer: Checkout, earlier: Checkout) -> None:
    """Add an order placed earlier in the group to a buyer's counts, as `orders.count_open`
    would count it once written: its units toward the flash sale's per-buyer limit (same
    e-mail, or same device), and one open order per identity it shares."""
    same_email = earlier.data.email == buyer.data.email
    same_device = buyer.device_id is not None and earlier.device_id == buyer.device_id
    same_ip = buyer.buyer_ip is not None and earlier.buyer_ip == buyer.buyer_ip
    if same_email or same_device:
        held["held"] += earlier.data.quantity
    held["email"] += same_email
    held["device_id"] += same_device
    held["buyer_ip"] += same_ip
