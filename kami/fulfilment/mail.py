"""The buyer's e-mail, sent by the outbox worker after the commit that asked for it.

The job carries only the order number; the address and the access link are rebuilt at send
time, so neither the outbox nor its error messages ever hold the token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any

from kami import delivery, orders
from kami.fulfilment.shop import Shop
from kami.kernel.clock import shown_in
from kami.kernel.money import Money

log = logging.getLogger("kami.mail")

_SUBJECTS = {
    "delivered": "订单已发货 / Your order is delivered",
    "awaiting_stock": "订单已付款，等待补货 / Paid, waiting for stock",
    "refunded": "订单已退款 / Refund made",
    "unserved": "付款晚于订单时限，将全额退款 / Paid too late: a full refund is on its way",
    "aftersales_received": "已收到您的售后反馈 / We received your report",
    "aftersales_replaced": "商品已更换 / Your item was replaced",
    "aftersales_refunded": "售后退款 / Your item was refunded",
    "aftersales_rejected": "售后反馈处理结果 / About your report",
    "validity_reminder": "商品即将到期 / Your goods end soon",
}


def _positions(detail: Mapping[str, Any]) -> str:
    return ", ".join(str(p) for p in detail.get("positions") or [detail.get("position")])


def _after_sales_text(
    order: orders.OrderView, event: str, detail: Mapping[str, Any], zone: tzinfo
) -> tuple[str, str]:
    """The words for after-sales and validity events; the payload carries item numbers,
    amounts and the seller's reason, never a key or a token."""
    item = detail.get("position")
    if event == "aftersales_received":
        return (
            f"我们已收到您关于第 {item} 件商品的反馈，卖家会尽快处理并通知您。",
            f"We received your report about item {item}; the seller will review it and write "
            "to you.",
        )
    if event == "aftersales_replaced":
        new = detail.get("replacement_position")
        return (
            f"第 {item} 件商品已为您更换为第 {new} 件，请打开下面的链接查看新的卡密。",
            f"Item {item} was replaced by item {new}. Open the link below to see the new key.",
        )
    if event == "aftersales_refunded":
        back = Money(int(detail.get("amount_minor") or 0), order.currency).format()
        return (
            f"第 {item} 件商品已为您退款 {back}，款项将原路退回。",
            f"Item {item} was refunded: {back} goes back to the account you paid with.",
        )
    if event == "aftersales_rejected":
        reason = str(detail.get("reason") or "")
        return (
            f"您关于第 {item} 件商品的反馈未获通过。卖家说明：{reason}",
            f"Your report about item {item} was not accepted. The seller says: {reason}",
        )
    ends = shown_in(datetime.fromisoformat(str(detail["valid_until"])), zone)  # the shop's zone
    items = _positions(detail)
    return (
        f"您购买的商品（第 {items} 件）将于 {ends} 到期，如需继续使用请及时续费。",
        f"Your goods (item {items}) end on {ends}. Renew in time to keep using them.",
    )


def _unserved_text(why: str, amount: str) -> tuple[str, str]:
    """The words for an order paid after its time to pay ran out that cannot be served (its
    flash sale's units taken, or its buyer at the sale's limit): refunded in full."""
    if why == "late-payment-limit-reached":
        zh_cause, en_cause = (
            "您在本次秒杀中已达到每人限购数量",
            "you already hold as many as the flash sale allows each buyer",
        )
    else:
        zh_cause, en_cause = "秒杀名额已经售完", "the flash sale's units were all taken"
    return (
        f"您的付款在订单的付款时限过后才到达，此时{zh_cause}，本订单无法发货。"
        f"{amount} 将全额原路退回您的支付账户，退款完成后会再通知您。",
        f"Your payment arrived after the order's time to pay had run out, and by then "
        f"{en_cause}, so this order cannot be delivered. The full {amount} goes back to the "
        "account you paid with; we will write again when the refund is made.",
    )


def build_email(
    shop: Shop,
    order: orders.OrderView,
    event: str,
    refund_minor: int | None = None,
    *,
    detail: Mapping[str, Any] | None = None,
) -> delivery.Email:
    token = orders.access_token(shop.token_secret(), order.order_no)
    link = shop.order_link(order.order_no, token)
    amount = Money(order.amount_minor, order.currency).format()
    if event.startswith("aftersales_") or event == "validity_reminder":
        zh, en = _after_sales_text(order, event, detail or {}, shop.timezone)
    elif event == "delivered":
        zh = "您的商品已发货，请打开下面的链接查看卡密。"
        en = "Your goods are ready. Open the link below to see your keys."
    elif event == "unserved":
        zh, en = _unserved_text(str((detail or {}).get("why") or ""), amount)
    elif event == "refunded":
        back = Money(refund_minor or 0, order.currency).format()
        zh = f"已为您退款 {back}，款项将原路退回您的支付账户。"
        en = f"We refunded {back} to the account you paid with."
    else:
        zh = "我们已收到您的付款。库存补充后将自动发货，届时会再次通知您。"
        en = "We received your payment; the order is delivered automatically when stock arrives."
    text = (
        f"{zh}\n{en}\n\n"
        f"{order.title} × {order.quantity}  ({amount})\n"
        f"订单号 / Order: {order.order_no}\n\n{link}\n\n"
        "请勿转发此链接 / Keep this link private: anyone holding it can see the keys.\n"
    )
    return delivery.Email(
        to=order.email, subject=f"[{shop.shop_name}] {_SUBJECTS[event]} {order.order_no}", text=text
    )


def send_order_mail(shop: Shop, payload: dict[str, Any]) -> None:
    if shop.mailer is None:
        log.info("SMTP is not configured; order mail for %s not sent", payload.get("order_no"))
        return
    with shop.db.read() as s:
        order = orders.get_order(s, str(payload["order_no"]))
    event = str(payload.get("event", "delivered"))
    refund = payload.get("amount_minor")
    shop.mailer.send(
        build_email(shop, order, event, refund if isinstance(refund, int) else None, detail=payload)
    )
