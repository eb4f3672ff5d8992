from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kami.catalog.rules import DeliveryKind, DisplayedStock, StockDisplay
from kami.kernel.money import MAX_MINOR

SLUG = r"^[a-z0-9][a-z0-9-]{0,63}$"
CODE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# A payment account's name, as in the accounts file (the sandbox is one too).
AccountName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class CategoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)
    parent: str | None = Field(default=None, description="slug of the parent category")
    position: int = Field(default=0, ge=-1_000_000, le=1_000_000)


class CategoryPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    parent: str | None = None
    position: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)
    move_to_root: bool = False


class ProductIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: str = Field(pattern=SLUG)
    category: str = Field(description="slug of the category")
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=20_000)
    benefits: list[str] = Field(default_factory=list, max_length=50)
    validity_days: int | None = Field(default=None, ge=1, le=36_500)
    redemption: str = Field(default="", max_length=20_000)
    position: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    active: bool = True


class ProductPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    category: str | None = None
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=20_000)
    benefits: list[str] | None = Field(default=None, max_length=50)
    validity_days: int | None = Field(default=None, ge=1, le=36_500)
    redemption: str | None = Field(default=None, max_length=20_000)
    position: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)
    active: bool | None = None


class SkuIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=CODE)
    product: str = Field(description="slug of the product")
    name: str = Field(min_length=1, max_length=200)
    price_minor: int = Field(ge=0, le=MAX_MINOR)
    currency: str = Field(default="CNY", pattern=r"^[A-Z]{3}$")
    delivery_kind: DeliveryKind = DeliveryKind.CARD_KEY
    min_quantity: int = Field(default=1, ge=1, le=10_000)
    max_quantity: int = Field(default=10, ge=1, le=10_000)
    active: bool = True
    stock_display: StockDisplay = StockDisplay.LEVEL
    low_stock_threshold: int = Field(default=10, ge=0, le=10**9)
    position: int = Field(default=0, ge=-1_000_000, le=1_000_000)
    gateways: list[AccountName] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="payment accounts this SKU may be paid through; null: every enabled one",
    )
    delivery_config: dict[str, Any] | None = Field(
        default=None, description="the delivery kind's settings (see docs/goods.md)"
    )
    input_fields: list[dict[str, Any]] | None = Field(
        default=None, max_length=10, description="what the buyer fills in at checkout"
    )

    @model_validator(mode="after")
    def _quantities(self) -> SkuIn:
        if self.min_quantity > self.max_quantity:
            raise ValueError("min_quantity must not exceed max_quantity")
        return self


class SkuPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    price_minor: int | None = Field(default=None, ge=0, le=MAX_MINOR)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    min_quantity: int | None = Field(default=None, ge=1, le=10_000)
    max_quantity: int | None = Field(default=None, ge=1, le=10_000)
    active: bool | None = None
    stock_display: StockDisplay | None = None
    low_stock_threshold: int | None = Field(default=None, ge=0, le=10**9)
    position: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)
    gateways: list[AccountName] | None = Field(
        default=None, min_length=1, max_length=32, description="null: every enabled account"
    )
    delivery_config: dict[str, Any] | None = None
    input_fields: list[dict[str, Any]] | None = Field(default=None, max_length=10)


class SkuView(BaseModel):
    id: int = Field(exclude=True)
    code: str
    product_slug: str
    product_name: str
    name: str
    price_minor: int
    currency: str
    delivery_kind: DeliveryKind
    min_quantity: int
    max_quantity: int
    active: bool
    stock_display: StockDisplay
    low_stock_threshold: int
    validity_days: int | None
    redemption: str
    gateways: list[str] | None
    delivery_config: dict[str, Any] = Field(default_factory=dict)
    input_fields: list[dict[str, Any]] = Field(default_factory=list)


class CategoryView(BaseModel):
    slug: str
    name: str
    parent: str | None
    position: int


class ProductView(BaseModel):
    slug: str
    category: str
    name: str
    description: str
    benefits: list[str]
    validity_days: int | None
    redemption: str
    position: int
    active: bool


class PublicFlashSale(BaseModel):
    """A SKU's flash sale as buyers see it, from before it starts until it ends."""

    starts_at: datetime
    ends_at: datetime
    price_minor: int
    per_buyer_limit: int
    remaining: int = Field(description="units of the quota not yet sold or held by an order")
    selling: bool = Field(description="started and not ended: checkouts now pay the sale price")


class PublicSku(BaseModel):
    code: str
    name: str
    price_minor: int
    currency: str
    min_quantity: int
    max_quantity: int
    stock: DisplayedStock
    gateways: list[str] = Field(description="the payment accounts it can be paid through")
    delivery_kind: DeliveryKind = DeliveryKind.CARD_KEY
    input_fields: list[dict[str, Any]] = Field(
        default_factory=list, description="what the buyer must fill in at checkout"
    )
    flash_sale: PublicFlashSale | None = Field(
        default=None, description="its flash sale, if one is coming or selling"
    )


class PublicProduct(BaseModel):
    slug: str
    name: str
    description: str
    benefits: list[str]
    validity_days: int | None
    redemption: str
    skus: list[PublicSku]


class PublicCategory(BaseModel):
    slug: str
    name: str
    products: list[PublicProduct]
    children: list[PublicCategory]
