from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, LargeBinary, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from kami.kernel.db import Base, UtcDateTime

PENDING_ONLY = text("status = 'pending'")


class Order(Base):
    __tablename__ = "orders_order"
    __table_args__ = (
        Index("ix_orders_order_status_expires", "status", "expires_at"),
        # No index but the per-address one begins with sku_id: with statistics older than the
        # rows (a new shop, a flash sale's new SKU) PostgreSQL counted a buyer's orders through
        # any such index, reading every order of the SKU (migration 0015).
        Index("ix_orders_order_status_sku_paid", "status", "sku_id", "paid_at"),
        Index("ix_orders_order_email_sku", "email", "sku_id"),
        # Pending orders only: the per-address cap counts those, and many buyers share an
        # address (migration 0013).
        # The status, constant here, as a column too: the count then matches three columns and
        # SQLite without statistics prefers it to (status, sku_id, paid_at) (migration 0015).
        Index(
            "ix_orders_order_sku_ip_pending",
            "sku_id",
            "buyer_ip",
            "status",
            sqlite_where=PENDING_ONLY,
            postgresql_where=PENDING_ONLY,
        ),
        Index("ix_orders_order_device_sku", "device_id", "sku_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_no: Mapped[str] = mapped_column(String(32), unique=True)
    sku_id: Mapped[int] = mapped_column(Integer, ForeignKey("catalog_sku.id"))
    # What was bought, as it was at the time: later catalog edits do not rewrite history.
    sku_code: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(420))
    redemption: Mapped[str] = mapped_column(Text, default="")
    validity_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price_minor: Mapped[int] = mapped_column(Integer)
    amount_minor: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    email: Mapped[str] = mapped_column(String(254))
    gateway: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(24))
    # Channels' trade numbers: Stripe's checkout session ids run past 64 characters.
    trade_no: Mapped[str | None] = mapped_column(String(255), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    request_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    buyer_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The sales channel that placed the order (own shop today; H5, open API … later). Quotas per
    # channel on one shared pool count reservations by this column.
    channel: Mapped[str] = mapped_column(String(32), default="shop")
    flash_sale_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    paid_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What the SKU delivered at the time of the order (kami.catalog.goods.DeliveryKind), and
    # the buyer's values for its input fields.
    delivery_kind: Mapped[str] = mapped_column(
        String(16), default="card_key", server_default="card_key"
    )
    buyer_input: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # When the payment channel was last asked about this order (query-and-fix).
    synced_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
