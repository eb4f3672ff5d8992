"""Flows that span domains: checkout, notify → pay → claim → deliver, restock, order views."""

from kami.fulfilment.checkout import PlacedOrder, TooManyOpenOrders, cancel_order, place_order
from kami.fulfilment.delivering import (
    deliver_paid,
    expire_orders,
    import_and_serve,
    redeliver,
    serve_awaiting_stock,
)
from kami.fulfilment.goods import (
    REFUND_JOB,
    WEBHOOK_SECRET,
    ManualTask,
    attempt_line,
    drive_due,
    fail_by_hand,
    fulfil_by_hand,
    manual_queue,
    refund_failed_line,
    webhook_secret,
)
from kami.fulfilment.goods.lines import buyer_parts, make_due
from kami.fulfilment.mail import build_email, send_order_mail
from kami.fulfilment.notify import Outcome, handle_notification
from kami.fulfilment.refunds import (
    KEY_ACTIONS,
    RefundOutcome,
    dispose_keys,
    list_order_refunds,
    request_refund,
    settle_by_hand,
    sync_refund,
    sync_refunds_due,
)
from kami.fulfilment.shop import MAIL_JOB, ORDER_TOKEN_SECRET, Shop
from kami.fulfilment.sync import SyncResult, sync_due, sync_order
from kami.fulfilment.views import (
    AdminOrderDetail,
    BuyerItem,
    RevealedItem,
    TimelineEntry,
    admin_detail,
    authorise,
    buyer_view,
    reveal,
)

__all__ = [
    "KEY_ACTIONS",
    "MAIL_JOB",
    "ORDER_TOKEN_SECRET",
    "REFUND_JOB",
    "WEBHOOK_SECRET",
    "AdminOrderDetail",
    "BuyerItem",
    "ManualTask",
    "Outcome",
    "PlacedOrder",
    "RefundOutcome",
    "RevealedItem",
    "Shop",
    "SyncResult",
    "TimelineEntry",
    "TooManyOpenOrders",
    "admin_detail",
    "attempt_line",
    "authorise",
    "build_email",
    "buyer_parts",
    "buyer_view",
    "cancel_order",
    "deliver_paid",
    "dispose_keys",
    "drive_due",
    "expire_orders",
    "fail_by_hand",
    "fulfil_by_hand",
    "handle_notification",
    "import_and_serve",
    "list_order_refunds",
    "make_due",
    "manual_queue",
    "place_order",
    "redeliver",
    "refund_failed_line",
    "request_refund",
    "reveal",
    "send_order_mail",
    "serve_awaiting_stock",
    "settle_by_hand",
    "sync_due",
    "sync_order",
    "sync_refund",
    "sync_refunds_due",
    "webhook_secret",
]
