"""The order state machine, as data. Every status change goes through `can_move`, except two
that no other transaction ever sees (decision 0026): `orders.pay_and_deliver_each` moves a
card-key order straight from pending to delivered where its reservation is sold in the same
transaction, and `orders.not_delivered_yet` takes that delivery back to paid in the same
transaction when the reservation turns out to be gone."""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    AWAITING_STOCK = "awaiting_stock"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    FAILED = "failed"


S = OrderStatus

TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING: frozenset({S.PAID, S.EXPIRED, S.CANCELLED, S.FAILED}),
    # Money that arrives after expiry or cancellation is real money: paid late, not ignored.
    S.EXPIRED: frozenset({S.PAID}),
    S.CANCELLED: frozenset({S.PAID}),
    S.PAID: frozenset({S.DELIVERED, S.AWAITING_STOCK, S.REFUNDED, S.FAILED}),
    S.AWAITING_STOCK: frozenset({S.DELIVERED, S.REFUNDED, S.FAILED}),
    # Part of the money back: only once the order has been served (or given up on), so an
    # order still waiting for stock is never left half-refunded and forgotten by the sweep.
    S.DELIVERED: frozenset({S.REFUNDED, S.PARTIALLY_REFUNDED}),
    S.PARTIALLY_REFUNDED: frozenset({S.REFUNDED}),
    S.REFUNDED: frozenset(),
    S.FAILED: frozenset({S.REFUNDED, S.PARTIALLY_REFUNDED}),
}

# Orders whose money may be (partly) given back, and those that may take a partial refund.
REFUNDABLE = frozenset({S.PAID, S.AWAITING_STOCK, S.DELIVERED, S.PARTIALLY_REFUNDED, S.FAILED})
PARTLY_REFUNDABLE = frozenset({S.DELIVERED, S.PARTIALLY_REFUNDED, S.FAILED})

PAYABLE = frozenset(s for s, targets in TRANSITIONS.items() if S.PAID in targets)
# Orders that gave up their goods and their flash-sale quota unpaid: a payment that still
# arrives for one is a late payment, and must get them back before it is served.
LAPSED = frozenset({S.EXPIRED, S.CANCELLED})
# Orders that count against a buyer's flash-sale limit: everything not given up or given back.
HOLDING = frozenset({S.PENDING, S.PAID, S.AWAITING_STOCK, S.DELIVERED, S.PARTIALLY_REFUNDED})


def can_move(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


def sources_of(target: OrderStatus) -> frozenset[OrderStatus]:
    """Every status from which `target` may be reached."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)
