"""Flows that span domains: checkout, notify → pay → claim → deliver, restock, order views."""

from kami.delivery.reports import ReportStatus, ReportView, find_report, list_reports
from kami.fulfilment.aftersales import (
    AftersalesPolicy,
    buyer_reports,
    refund_reported,
    reject_report,
    replace_reported,
    report_item,
)
from kami.fulfilment.checkout import (
    OpenedOrder,
    PlacedOrder,
    cancel_order,
    open_order,
    place_order,
    request_payment,
    sold_out_from_memory,
)
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
    Procured,
    apply_result,
    attempt_line,
    attempt_recharge,
    drive_due,
    escalated_lines,
    fail_by_hand,
    fulfil_by_hand,
    handle_callback,
    manual_queue,
    procure_due,
    procure_sku,
    refund_failed_line,
    settle_open_purchases,
    webhook_secret,
)
from kami.fulfilment.goods.lines import buyer_parts, make_due
from kami.fulfilment.goods.procurement import ORDER_SALT
from kami.fulfilment.mail import build_email, send_order_mail
from kami.fulfilment.notify import Checked, Outcome, check_notification, handle_notification
from kami.fulfilment.paid_together import handle_notifications_together
from kami.fulfilment.refund_settling import dispose_keys
from kami.fulfilment.refunds import (
    KEY_ACTIONS,
    RefundOutcome,
    list_order_refunds,
    refund_unserved,
    request_refund,
    settle_by_hand,
    sync_refund,
    sync_refunds_due,
)
from kami.fulfilment.shop import (
    LOOKUP_SECRET,
    MAIL_JOB,
    ORDER_TOKEN_SECRET,
    UNSERVED_REFUND_JOB,
    Shop,
)
from kami.fulfilment.sync import SyncResult, sync_due, sync_order
from kami.fulfilment.terms import TooManyOpenOrders
from kami.fulfilment.together import Checkout, open_orders_together
from kami.fulfilment.together import ready as ready_together
from kami.fulfilment.validity import send_validity_reminders, valid_until
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
    "LOOKUP_SECRET",
    "MAIL_JOB",
    "ORDER_SALT",
    "ORDER_TOKEN_SECRET",
    "REFUND_JOB",
    "UNSERVED_REFUND_JOB",
    "WEBHOOK_SECRET",
    "AdminOrderDetail",
    "AftersalesPolicy",
    "BuyerItem",
    "Checked",
    "Checkout",
    "ManualTask",
    "OpenedOrder",
    "Outcome",
    "PlacedOrder",
    "Procured",
    "RefundOutcome",
    "ReportStatus",
    "ReportView",
    "RevealedItem",
    "Shop",
    "SyncResult",
    "TimelineEntry",
    "TooManyOpenOrders",
    "admin_detail",
    "apply_result",
    "attempt_line",
    "attempt_recharge",
    "authorise",
    "build_email",
    "buyer_parts",
    "buyer_reports",
    "buyer_view",
    "cancel_order",
    "check_notification",
    "deliver_paid",
    "dispose_keys",
    "drive_due",
    "escalated_lines",
    "expire_orders",
    "fail_by_hand",
    "find_report",
    "fulfil_by_hand",
    "handle_callback",
    "handle_notification",
    "handle_notifications_together",
    "import_and_serve",
    "list_order_refunds",
    "list_reports",
    "make_due",
    "manual_queue",
    "open_order",
    "open_orders_together",
    "place_order",
    "procure_due",
    "procure_sku",
    "ready_together",
    "redeliver",
    "refund_failed_line",
    "refund_reported",
    "refund_unserved",
    "reject_report",
    "replace_reported",
    "report_item",
    "request_payment",
    "request_refund",
    "reveal",
    "send_order_mail",
    "send_validity_reminders",
    "serve_awaiting_stock",
    "settle_by_hand",
    "settle_open_purchases",
    "sold_out_from_memory",
    "sync_due",
    "sync_order",
    "sync_refund",
    "sync_refunds_due",
    "valid_until",
    "webhook_secret",
]

from kami.fulfilment.goods.downloads import (
    DOWNLOAD_SECRET,
    DownloadGrant,
    DownloadLink,
    LinkGone,
    LinkRefused,
    check_download_sku,
    open_download,
)

__all__ += [
    "DOWNLOAD_SECRET",
    "DownloadGrant",
    "DownloadLink",
    "LinkGone",
    "LinkRefused",
    "check_download_sku",
    "open_download",
]
