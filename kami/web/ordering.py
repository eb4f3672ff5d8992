"""Placing an order from a request, the way every buyer's checkout goes: the JSON API's and the
storefront's form alike (decisions 0010, 0018, 0020, 0023, 0024).

A checkout runs on the event loop when nothing would make it wait. A flash sale's runs first,
ahead of every other call, and joins the checkouts of its SKU that the loop reads in the same
pass, placed together in one transaction. Then, in a call of its own, the channel is asked
how the buyer pays.
"""

from __future__ import annotations

from functools import partial

from kami import fulfilment, orders
from kami.web import groups, running


async def place_order(
    shop: fulfilment.Shop,
    body: orders.OrderIn,
    *,
    idempotency_key: str | None,
    buyer_ip: str | None,
    device_id: str | None,
) -> fulfilment.PlacedOrder:
    # After a sellout a buyer without an Idempotency-Key is told "sold out" at once, from the
    # answer the process remembers, without joining a group or waiting for a turn (decision
    # 0024).
    refused = fulfilment.sold_out_from_memory(shop, body, idempotency_key)
    if refused is not None:
        if shop.on_flash_sale(body.sku):
            running.flash_sale_answered()
        raise refused
    if shop.flash_sales_stale():
        await running.run_now(shop.read_flash_sales)
    on_sale = shop.on_flash_sale(body.sku)

    async def alone() -> fulfilment.OpenedOrder:
        return await (running.run_first if on_sale else running.run)(
            fulfilment.open_order,
            shop,
            body,
            idempotency_key=idempotency_key,
            buyer_ip=buyer_ip,
            device_id=device_id,
        )

    if on_sale:
        # Placed together with the checkouts of the SKU that arrive with it (decision 0020).
        opened = await groups.run_together(
            ("checkout", body.sku),
            fulfilment.Checkout(body, buyer_ip, device_id, idempotency_key=idempotency_key),
            partial(fulfilment.open_orders_together, shop),
            alone,
            most=fulfilment.together.MAX_GROUP,
        )
    else:
        opened = await alone()
    return await running.run_now(fulfilment.request_payment, shop, opened)
