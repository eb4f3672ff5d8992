"""At order time: is there something to sell, and hold it for the buyer until payment.

Each kind answers for itself: card keys are reserved one by one; a reusable key (or text)
counts the units sold and held against its limit, and each buyer's units against theirs; a
bundle asks every component; goods made or fetched after payment (licenses, webhook, operator,
supplier) have nothing to hold.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session

from kami import catalog, delivery, orders, vault
from kami.catalog import DeliveryKind
from kami.fulfilment.shop import Shop
from kami.kernel.errors import Conflict

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # "ever", for a buyer's units of a reusable key


class SoldOut(Conflict):
    slug = "sold-out"
    title = "Sold out"


def sold_out(sku: catalog.SkuView) -> SoldOut:
    return sold_out_of(sku.code)


def sold_out_of(sku_code: str) -> SoldOut:
    return SoldOut(f"SKU {sku_code!r} is sold out", where="sku")


def has_goods(s: Session, sku: catalog.SkuView, quantity: int, now: datetime) -> bool:
    """A cheap read before the order row: False only when the order cannot succeed."""
    kind = DeliveryKind(sku.delivery_kind)
    if kind is DeliveryKind.CARD_KEY:
        return vault.has_stock(s, sku.id, quantity, now)
    if kind in (DeliveryKind.REUSABLE_KEY, DeliveryKind.TEXT):
        return vault.shared_key(s, sku.id, now) is not None
    return True


def reserve(
    s: Session,
    shop: Shop,
    sku: catalog.SkuView,
    order: orders.OrderView,
    now: datetime,
    device_id: str | None,
) -> None:
    """Hold the goods of a just-created order (in its transaction); SoldOut rolls it back."""
    kind = DeliveryKind(sku.delivery_kind)
    if kind is DeliveryKind.CARD_KEY:
        _card_keys(s, shop, sku, order.id, order.quantity, now)
    elif kind in (DeliveryKind.REUSABLE_KEY, DeliveryKind.TEXT):
        _reusable(s, sku, order.quantity, now, order.email, device_id, count_self=True)
    elif kind is DeliveryKind.BUNDLE:
        config: catalog.BundleConfig = catalog.config_of(kind, sku.delivery_config)
        for component in config.components:
            part = catalog.get_sku(s, component.sku)
            need = component.quantity * order.quantity
            part_kind = DeliveryKind(part.delivery_kind)
            if part_kind is DeliveryKind.CARD_KEY:
                _card_keys(s, shop, part, order.id, need, now)
            elif part_kind in (DeliveryKind.REUSABLE_KEY, DeliveryKind.TEXT):
                _reusable(s, part, need, now, None, None, count_self=False)


def _card_keys(
    s: Session, shop: Shop, sku: catalog.SkuView, order_id: int, quantity: int, now: datetime
) -> None:
    reserved = vault.take_keys(
        s,
        sku.id,
        order_id,
        quantity,
        now,
        target=vault.KeyStatus.RESERVED,
        hints=shop.claim_hints,
    )
    if not reserved:
        raise sold_out(sku)


def _reusable(
    s: Session,
    sku: catalog.SkuView,
    quantity: int,
    now: datetime,
    email: str | None,
    device_id: str | None,
    *,
    count_self: bool,
) -> None:
    """Units of the one key: sold plus held by unpaid orders stay within `max_sales`; a
    buyer's units (bought or held) within `per_buyer_limit`. The order being placed is
    already counted among the held ones when `count_self`."""
    key_id = vault.shared_key(s, sku.id, now)
    if key_id is None:
        raise sold_out(sku)
    config: catalog.ReusableConfig = catalog.config_of(
        DeliveryKind(sku.delivery_kind), sku.delivery_config
    )
    if config.max_sales is not None:
        held = orders.quantity_pending(s, sku.id)
        taken = delivery.count_shared(s, key_id) + held + (0 if count_self else quantity)
        if taken > config.max_sales:
            raise sold_out(sku)
    if email is not None:
        mine = orders.quantity_held(s, sku.id, EPOCH, email=email, device_id=device_id)
        if mine > config.per_buyer_limit:
            raise Conflict(
                f"{sku.code} is limited to {config.per_buyer_limit} per buyer",
                where="quantity",
                slug="limit-reached",
            )
