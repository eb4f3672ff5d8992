"""Response bodies of the public API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from kami import delivery, fulfilment, orders


class PaymentOut(BaseModel):
    gateway: str
    kind: str
    url: str | None = None
    qr: str | None = None


class ItemOut(BaseModel):
    position: int
    masked: str
    valid_until: datetime | None = None  # goods with a validity period end then
    kind: str = "key"  # "download": masked is the file's name


class PartOut(BaseModel):
    """One part of the order (its SKU, or a bundle's component) and where its delivery stands:
    waiting (for stock), pending or processing (on its way), delivered, or failed (its share
    is refunded)."""

    position: int
    sku: str
    kind: str
    quantity: int
    status: str


class RevealedItemOut(BaseModel):
    position: int
    card: str  # a download's link, for kind "download"
    password: str | None = None
    kind: str = "key"
    name: str | None = None  # a download's file name
    expires_at: datetime | None = None  # when a download link stops working
    downloads_left: int | None = None


class OrderOut(BaseModel):
    order_no: str
    status: str
    sku: str
    title: str
    quantity: int
    amount_minor: int
    currency: str
    created_at: datetime
    expires_at: datetime
    paid_at: datetime | None
    delivered_at: datetime | None
    redemption: str
    validity_days: int | None
    items: list[ItemOut]
    parts: list[PartOut] = []


class CreatedOrderOut(BaseModel):
    order_no: str
    access_token: str
    amount_minor: int
    currency: str
    status: str
    expires_at: datetime
    payment: PaymentOut


class RevealOut(BaseModel):
    order_no: str
    redemption: str
    items: list[RevealedItemOut]


class NotifyOut(BaseModel):
    status: str


def order_out(
    order: orders.OrderView,
    items: list[fulfilment.BuyerItem],
    parts: list[delivery.LineView] | None = None,
) -> OrderOut:
    return OrderOut(
        order_no=order.order_no,
        status=order.status,
        sku=order.sku,
        title=order.title,
        quantity=order.quantity,
        amount_minor=order.amount_minor,
        currency=order.currency,
        created_at=order.created_at,
        expires_at=order.expires_at,
        paid_at=order.paid_at,
        delivered_at=order.delivered_at,
        redemption=order.redemption,
        validity_days=order.validity_days,
        items=[
            ItemOut(position=i.position, masked=i.masked, valid_until=i.valid_until, kind=i.kind)
            for i in items
        ],
        parts=[
            PartOut(
                position=p.position,
                sku=p.sku_code,
                kind=p.kind,
                quantity=p.quantity,
                status=p.status.value,
            )
            for p in parts or []
        ],
    )
