"""Placing an order: check catalog and stock, create it, ask the channel how to pay."""

from __future__ import annotations

from dataclasses import dataclass

from kami import catalog, orders, payments, vault
from kami.fulfilment.shop import Shop
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, NotFound


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    order: orders.OrderView
    access_token: str
    payment: payments.PaymentInstruction
    created: bool


def place_order(
    shop: Shop,
    data: orders.OrderIn,
    *,
    idempotency_key: str | None = None,
    buyer_ip: str | None = None,
) -> PlacedOrder:
    if idempotency_key is not None and not (1 <= len(idempotency_key) <= 128):
        raise InvalidInput("Idempotency-Key must be 1 to 128 characters", where="Idempotency-Key")
    try:
        gateway = shop.gateways.get(data.gateway)
    except NotFound as exc:
        raise InvalidInput(exc.detail, where="gateway", slug="unknown-gateway") from None
    now = utcnow()
    with shop.db.write() as s:
        replay = orders.find_idempotent(s, idempotency_key, data) if idempotency_key else None
        if replay is not None:
            order, created = replay, False
        else:
            sku = catalog.get_sku(s, data.sku)
            if not sku.active:
                raise Conflict(f"SKU {sku.code!r} is not on sale", where="sku", slug="sku-inactive")
            if not sku.min_quantity <= data.quantity <= sku.max_quantity:
                raise InvalidInput(
                    f"quantity must be between {sku.min_quantity} and {sku.max_quantity}",
                    where="quantity",
                    slug="quantity-out-of-range",
                )
            if not vault.has_stock(s, sku.id, data.quantity, now):
                raise Conflict(f"SKU {sku.code!r} is sold out", where="sku", slug="sold-out")
            priced = orders.Priced(
                sku_id=sku.id,
                sku_code=sku.code,
                title=f"{sku.product_name} · {sku.name}",
                redemption=sku.redemption,
                validity_days=sku.validity_days,
                unit_price_minor=sku.price_minor,
                currency=sku.currency,
            )
            order, created = orders.create_order(
                s,
                data,
                priced,
                now=now,
                ttl=shop.order_ttl,
                idempotency_key=idempotency_key,
                buyer_ip=buyer_ip,
            )
    # Asked after the commit: a channel's network call must never hold the write lock.
    payment = gateway.create_payment(
        payments.PaymentRequest(
            order_no=order.order_no,
            amount_minor=order.amount_minor,
            currency=order.currency,
            subject=order.title,
            expires_at=order.expires_at,
        )
    )
    token = orders.access_token(shop.token_secret(), order.order_no)
    return PlacedOrder(order, token, payment, created)
