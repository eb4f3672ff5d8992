"""Every kind of virtual good: holding it at order time, delivering it once paid."""

from __future__ import annotations

from kami.fulfilment.goods.driver import (
    ManualTask,
    attempt_line,
    drive_due,
    fail_by_hand,
    fulfil_by_hand,
    manual_queue,
    refund_failed_line,
)
from kami.fulfilment.goods.lines import REFUND_JOB
from kami.fulfilment.goods.procurement import (
    Procured,
    procure_due,
    procure_sku,
    settle_open_purchases,
)
from kami.fulfilment.goods.recharge import (
    apply_result,
    attempt_recharge,
    escalated_lines,
    handle_callback,
)
from kami.fulfilment.goods.webhook import WEBHOOK_SECRET, sku_secret
from kami.fulfilment.shop import Shop


def webhook_secret(shop: Shop, sku_code: str) -> str:
    """The signing secret a webhook SKU's endpoint checks requests with."""
    with shop.db.read() as s:
        master = shop.cipher.named_secret(s, WEBHOOK_SECRET)
    return sku_secret(master, sku_code)


__all__ = [
    "REFUND_JOB",
    "WEBHOOK_SECRET",
    "ManualTask",
    "Procured",
    "apply_result",
    "attempt_line",
    "attempt_recharge",
    "drive_due",
    "escalated_lines",
    "fail_by_hand",
    "fulfil_by_hand",
    "handle_callback",
    "manual_queue",
    "procure_due",
    "procure_sku",
    "refund_failed_line",
    "settle_open_purchases",
    "webhook_secret",
]
