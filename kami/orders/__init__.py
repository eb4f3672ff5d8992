"""Orders: creation with idempotency keys, the state machine, access tokens."""

from kami.orders.queries import (
    any_expired_due,
    awaiting_stock,
    count_by_status,
    count_open,
    due_for_sync,
    find_by_trade,
    find_order,
    get_order,
    list_orders,
    lock_buyer,
    quantity_held,
)
from kami.orders.schemas import OrderIn, OrderView
from kami.orders.service import (
    Priced,
    Released,
    cancel,
    create_order,
    expire_due,
    find_idempotent,
    mark_synced,
    move,
)
from kami.orders.states import (
    PARTLY_REFUNDABLE,
    PAYABLE,
    REFUNDABLE,
    TRANSITIONS,
    OrderStatus,
    can_move,
)
from kami.orders.tokens import access_token, check_access_token

__all__ = [
    "PARTLY_REFUNDABLE",
    "PAYABLE",
    "REFUNDABLE",
    "TRANSITIONS",
    "OrderIn",
    "OrderStatus",
    "OrderView",
    "Priced",
    "Released",
    "access_token",
    "any_expired_due",
    "awaiting_stock",
    "can_move",
    "cancel",
    "check_access_token",
    "count_by_status",
    "count_open",
    "create_order",
    "due_for_sync",
    "expire_due",
    "find_by_trade",
    "find_idempotent",
    "find_order",
    "get_order",
    "list_orders",
    "lock_buyer",
    "mark_synced",
    "move",
    "quantity_held",
]
