"""The buyer's e-mail, sent by the outbox worker after the commit that asked for it.

The job carries only the order number; the address and the access link are rebuilt at send
time, so neither the outbox nor its error messages ever hold the token.
"""

from __future__ import annotations

import logging
from typing import Any

from kami import delivery, orders
from kami.fulfilment.shop import Shop
from kami.kernel.money import Money

log = logging.getLogger("kami.mail")

_SUBJECTS = {
    "delivered": "订单已发货 / Your order is delivered",
    "awaiting_stock": "订单已付款，等待补货 / Paid, waiting for stock",
    "refunded": "订单已退款 / Refund made",
}


def build_email(
    shop: Shop, order: orders.OrderView, event: str, refund_minor: int | None = None
) -> delivery.Email:
    token = orders.access_token(shop.token_secret(), order.order_no)
    link = shop.order_link(order.order_no, token)
    amount = Money(order.amount_minor, order.currency).format()
    if event == "delivered":
        zh = "您的商品已发货，请打开下面的链接查看卡密。"
        en = "Your goods are ready. Open the link below to see your keys."
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
    shop.mailer.send(build_email(shop, order, event, refund if isinstance(refund, int) else None))
