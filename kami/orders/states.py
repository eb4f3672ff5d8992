"""The order state machine, as data. Every status change goes through `can_move`."""

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
    FAILED = "failed"


S = OrderStatus

TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING: frozenset({S.PAID, S.EXPIRED, S.CANCELLED, S.FAILED}),
    # Money that arrives after expiry or cancellation is real money: paid late, not ignored.
    S.EXPIRED: frozenset({S.PAID}),
    S.CANCELLED: frozenset({S.PAID}),
    S.PAID: frozenset({S.DELIVERED, S.AWAITING_STOCK, S.REFUNDED, S.FAILED}),
    S.AWAITING_STOCK: frozenset({S.DELIVERED, S.REFUNDED, S.FAILED}),
    S.DELIVERED: frozenset({S.REFUNDED}),
    S.REFUNDED: frozenset(),
    S.FAILED: frozenset({S.REFUNDED}),
}

PAYABLE = frozenset(s for s, targets in TRANSITIONS.items() if S.PAID in targets)
# Orders that count against a buyer's flash-sale limit: everything not given up or given back.
HOLDING = frozenset({S.PENDING, S.PAID, S.AWAITING_STOCK, S.DELIVERED})


def can_move(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


def sources_of(target: OrderStatus) -> frozenset[OrderStatus]:
    """Every status from which `target` may be reached."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)
