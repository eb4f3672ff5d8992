"""Orders: creation with idempotency keys, the state machine, access tokens."""

from kami.orders.lookup import (
    CODE_TTL as LOOKUP_CODE_TTL,
)
from kami.orders.lookup import (
    MAX_GUESSES as LOOKUP_MAX_GUESSES,
)
from kami.orders.lookup import (
    IssuedCode,
    LookupCode,
    TooManyCodes,
    code_refused,
    issue_code,
    normalise_email,
    redeem_code,
)
from kami.orders.queries import (
    Buyer,
    any_expired_due,
    awaiting_stock,
    buyer_lock_keys,
    count_by_status,
    count_open,
    count_open_many,
    due_for_sync,
    find_by_trade,
    find_order,
    find_order_by_id,
    get_order,
    list_orders,
    next_expiry,
    quantity_held,
    quantity_pending,
)
from kami.orders.schemas import OrderIn, OrderView
from kami.orders.service import (
    NewOrder,
    Priced,
    Released,
    cancel,
    create_order,
    create_orders,
    expire_due,
    find_idempotent,
    mark_synced,
    move,
    ready_many,
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
    "LOOKUP_CODE_TTL",
    "LOOKUP_MAX_GUESSES",
    "PARTLY_REFUNDABLE",
    "PAYABLE",
    "REFUNDABLE",
    "TRANSITIONS",
    "Buyer",
    "IssuedCode",
    "LookupCode",
    "NewOrder",
    "OrderIn",
    "OrderStatus",
    "OrderView",
    "Priced",
    "Released",
    "TooManyCodes",
    "access_token",
    "any_expired_due",
    "awaiting_stock",
    "buyer_lock_keys",
    "can_move",
    "cancel",
    "check_access_token",
    "code_refused",
    "count_by_status",
    "count_open",
    "count_open_many",
    "create_order",
    "create_orders",
    "due_for_sync",
    "expire_due",
    "find_by_trade",
    "find_idempotent",
    "find_order",
    "find_order_by_id",
    "get_order",
    "issue_code",
    "list_orders",
    "mark_synced",
    "move",
    "next_expiry",
    "normalise_email",
    "quantity_held",
    "quantity_pending",
    "ready_many",
    "redeem_code",
    "shape_size",
]

from kami.orders.stats import (
    UNDELIVERED,
    DaySales,
    TopSku,
    count_undelivered,
    list_undelivered,
    sales_by_day,
    top_skus,
)

__all__ += [
    "UNDELIVERED",
    "DaySales",
    "TopSku",
    "count_undelivered",
    "list_undelivered",
    "sales_by_day",
    "top_skus",
]
