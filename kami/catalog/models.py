from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from kami.kernel.db import Base, UtcDateTime


class Category(Base):
    __tablename__ = "catalog_category"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("catalog_category.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Product(Base):
    __tablename__ = "catalog_product"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    category_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("catalog_category.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    benefits: Mapped[list[Any]] = mapped_column(JSON, default=list)
    validity_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    redemption: Mapped[str] = mapped_column(Text, default="")
    position: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Sku(Base):
    __tablename__ = "catalog_sku"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    product_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("catalog_product.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    price_minor: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    delivery_kind: Mapped[str] = mapped_column(String(32))
    min_quantity: Mapped[int] = mapped_column(Integer, default=1)
    max_quantity: Mapped[int] = mapped_column(Integer, default=10)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    stock_display: Mapped[str] = mapped_column(String(16))
    low_stock_threshold: Mapped[int] = mapped_column(Integer, default=10)
    position: Mapped[int] = mapped_column(Integer, default=0)
    # Payment accounts this SKU may be paid through; NULL: every enabled account.
    gateways: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # The delivery kind's settings (kami.catalog.goods) and the buyer's input fields.
    delivery_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    input_fields: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


# The SKU's current flash sale: the one not superseded by a later sale (`set_flash_sale`).
CURRENT_SALE = text("superseded_at IS NULL")


class FlashSale(Base):
    """A time-boxed sale of one SKU: its own price, a total quota and a per-buyer limit.

    A SKU has at most one current sale. A window set after the current one ended starts a new
    sale, with its own quota and counts; the ended one is kept, superseded, for the orders
    placed in it (each names its sale), whose expiries and late payments still give back and
    take its units."""

    __tablename__ = "catalog_flash_sale"
    __table_args__ = (
        Index(
            "uq_catalog_flash_sale_current",
            "sku_id",
            unique=True,
            sqlite_where=CURRENT_SALE,
            postgresql_where=CURRENT_SALE,
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku_id: Mapped[int] = mapped_column(Integer, ForeignKey("catalog_sku.id"))
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime)
    price_minor: Mapped[int] = mapped_column(Integer)
    per_buyer_limit: Mapped[int] = mapped_column(Integer)
    quota: Mapped[int] = mapped_column(Integer)
    # Units held by open or paid orders; moved only by guarded updates (never past quota).
    taken: Mapped[int] = mapped_column(Integer, default=0)
    reservation_minutes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # When a later sale of the SKU replaced this one; None for the SKU's current sale.
    superseded_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
