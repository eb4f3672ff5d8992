"""What a checkout is checked against, alone (`checkout`) or placed together (`together`):
the SKU's terms, the flash sale's window, the order's total, the buyer's caps, and the price
the order is written with."""

from __future__ import annotations

from sqlalchemy.orm import Session

from kami import catalog, orders
from kami.fulfilment.shop import Shop
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, KamiError
from kami.kernel.money import MAX_MINOR, Money


class TooManyOpenOrders(KamiError):
    status = 429
    slug = "too-many-open-orders"
    title = "Too many unpaid orders"


def check_caps(
    s: Session,
    shop: Shop,
    sku: catalog.SkuView,
    sale: catalog.FlashSaleView | None,
    data: orders.OrderIn,
    buyer_ip: str | None,
    device_id: str | None,
) -> None:
    """The buyer's caps, under the buyer's lock: the flash sale's per-buyer limit, then the
    unpaid orders per buyer and per address. Counted after the lock is held, or two checkouts
    of one buyer could both count what was there before either (measured on PostgreSQL: 3 of
    16 racing checkouts got through a limit of 2 when the flash sale was counted first). On
    PostgreSQL the transaction's first statement took the lock (`open_order`); SQLite's one
    writer needs none."""
    held = orders.count_open(
        s,
        sku.id,
        email=data.email,
        device_id=device_id,
        buyer_ip=buyer_ip,
        held_in_sale=sale.id if sale else None,
    )
    check_counts(shop, sku, sale, data, held)


def check_counts(
    shop: Shop,
    sku: catalog.SkuView,
    sale: catalog.FlashSaleView | None,
    data: orders.OrderIn,
    held: dict[str, int],
) -> None:
    """The caps, against the buyer's counts (`orders.count_open`)."""
    if sale is not None and held["held"] + data.quantity > sale.per_buyer_limit:
        raise Conflict(
            f"the flash sale allows {sale.per_buyer_limit} per buyer and you already hold "
            f"{held['held']}",
            where="quantity",
            slug="limit-reached",
        )
    for column, where, limit in (
        ("email", "email", shop.open_orders_per_buyer),
        ("device_id", "device", shop.open_orders_per_buyer),
        ("buyer_ip", "ip", shop.open_orders_per_ip),
    ):
        if held[column] >= limit:
            raise TooManyOpenOrders(
                f"{limit} unpaid orders of {sku.code} are already open for this {where}; "
                "pay or cancel one first",
                where=where,
            )


def mark_flash_sale(
    shop: Shop, data: orders.OrderIn, terms: tuple[catalog.SkuView, catalog.FlashSaleView | None]
) -> None:
    if terms[1] is not None:
        shop.mark_flash_sale(data.sku)  # its next checkouts go first (decision 0018)


def check_window(sku: catalog.SkuView, sale: catalog.FlashSaleView, data: orders.OrderIn) -> None:
    """The flash sale's window."""
    now = utcnow()
    if now < sale.starts_at:
        raise Conflict(
            f"the flash sale of {sku.code} starts at {sale.starts_at.isoformat()}",
            where="sku",
            slug="flash-sale-not-started",
        )
    if now >= sale.ends_at:
        raise Conflict(
            f"the flash sale of {sku.code} has ended", where="sku", slug="flash-sale-ended"
        )


def check_terms(shop: Shop, sku: catalog.SkuView, data: orders.OrderIn) -> dict[str, str]:
    """The SKU's own terms: on sale, quantity, channel, currency; returns the checked input."""
    if not sku.active:
        raise Conflict(f"SKU {sku.code!r} is not on sale", where="sku", slug="sku-inactive")
    if not sku.min_quantity <= data.quantity <= sku.max_quantity:
        raise InvalidInput(
            f"quantity must be between {sku.min_quantity} and {sku.max_quantity}",
            where="quantity",
            slug="quantity-out-of-range",
        )
    if sku.gateways is not None and data.gateway not in sku.gateways:
        raise InvalidInput(
            f"{sku.code} cannot be paid through {data.gateway!r}; choose one of "
            f"{', '.join(g for g in sku.gateways if g in shop.gateways.names()) or 'none enabled'}",
            where="gateway",
            slug="gateway-not-allowed",
        )
    takes = shop.gateways.get(data.gateway).currencies
    if takes is not None and sku.currency not in takes:
        raise InvalidInput(
            f"{data.gateway!r} takes {', '.join(sorted(takes))}, not {sku.currency}; choose "
            "another payment channel",
            where="gateway",
            slug="currency-unsupported",
        )
    return catalog.validate_buyer_input(sku.input_fields, data.buyer_input)


def check_amount(sku: catalog.SkuView, unit_price: int, quantity: int) -> None:
    if unit_price * quantity > MAX_MINOR:
        raise InvalidInput(
            f"an order total above {Money(MAX_MINOR, sku.currency).format()} cannot be taken; "
            "order fewer",
            where="quantity",
            slug="amount-too-large",
        )


def price(
    sku: catalog.SkuView, sale: catalog.FlashSaleView | None, buyer_input: dict[str, str]
) -> orders.Priced:
    """What the order is written with: the SKU's terms at the sale's price if it has one."""
    return orders.Priced(
        sku_id=sku.id,
        sku_code=sku.code,
        title=f"{sku.product_name} · {sku.name}",
        redemption=sku.redemption,
        validity_days=sku.validity_days,
        unit_price_minor=sale.price_minor if sale else sku.price_minor,
        currency=sku.currency,
        flash_sale_id=sale.id if sale else None,
        delivery_kind=sku.delivery_kind,
        buyer_input=buyer_input,
    )
