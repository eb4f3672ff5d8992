from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL = rf"^[^@\s\x00-\x1f]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$"


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1, max_length=64, description="SKU code")
    quantity: int = Field(default=1, ge=1, le=10_000)
    email: str = Field(max_length=254, pattern=EMAIL, description="where the order link is sent")
    gateway: str = Field(min_length=1, max_length=32, description="payment channel name")
    buyer_input: dict[str, Annotated[str, Field(max_length=500)]] | None = Field(
        default=None,
        max_length=10,
        description="the values the SKU's input fields ask for (recharge account, phone …)",
    )

    @field_validator("email", mode="before")
    @classmethod
    def _one_spelling(cls, value: object) -> object:
        """One buyer, one address: `B@Example.com` and `b@example.com ` are the same mailbox
        everywhere in practice, so the per-buyer caps, the flash sale's limit and the order
        look-up must not tell them apart. Orders keep the address in this form."""
        return value.strip().lower() if isinstance(value, str) else value


class OrderView(BaseModel):
    id: int = Field(exclude=True)
    sku_id: int = Field(exclude=True)
    order_no: str
    sku: str
    title: str
    redemption: str
    validity_days: int | None
    quantity: int
    unit_price_minor: int
    amount_minor: int
    currency: str
    email: str
    gateway: str
    status: str
    trade_no: str | None
    created_at: datetime
    expires_at: datetime
    paid_at: datetime | None
    delivered_at: datetime | None
    note: str | None
    delivery_kind: str = "card_key"
    buyer_input: dict[str, str] | None = None
