from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from kami.kernel.db import Base, UtcDateTime


class Item(Base):
    """One delivered unit of an order. A key stands in at most one live item: only after a
    refund whose keys the seller chose to put back on sale (or void) is the item revoked, and
    the key may then be sold again. Revoked items stay as history."""

    __tablename__ = "delivery_item"
    __table_args__ = (
        Index(
            "uq_delivery_item_live_key",
            "key_id",
            unique=True,
            sqlite_where=text("revoked_at IS NULL AND NOT shared"),
            postgresql_where=text("revoked_at IS NULL AND NOT shared"),
        ),
        UniqueConstraint("order_id", "position"),
        # The validity reminder sweep reads only items still waiting for their reminder.
        Index(
            "ix_delivery_item_reminder_due",
            "valid_until",
            sqlite_where=text("reminded_at IS NULL AND valid_until IS NOT NULL"),
            postgresql_where=text("reminded_at IS NULL AND valid_until IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    # The vault key delivered (card, reusable or text goods, and goods that arrived from a
    # webhook, an operator or a supplier, which are stored as keys too), or a license.
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    license_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A reusable key stands in many orders' items; every other key in one live item only.
    shared: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    line_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    delivered_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Goods with a validity period (memberships): delivered_at + the order's validity_days,
    # written when the item is recorded; the buyer is reminded once before it ends.
    valid_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    reminded_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Reveal(Base):
    """Every time plaintext left the vault for a buyer: when, from where, with what browser."""

    __tablename__ = "delivery_reveal"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(Integer, index=True)
    revealed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(512), nullable=True)


class Line(Base):
    """One part of a paid order to deliver: the order's SKU, or one component of a bundle.

    Goods that are at hand (keys, licenses) are delivered in the payment's transaction; goods
    that come from elsewhere (a webhook, an operator, a supplier) wait here, `pending` until
    their attempt is due, until they end `delivered` or `failed` (then its share is refunded).
    """

    __tablename__ = "delivery_line"
    __table_args__ = (
        UniqueConstraint("order_id", "position"),
        Index("ix_delivery_line_status_due", "status", "due_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(Integer, index=True)
    position: Mapped[int] = mapped_column(Integer)
    sku_id: Mapped[int] = mapped_column(Integer)
    sku_code: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    quantity: Mapped[int] = mapped_column(Integer)
    share_minor: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class LineEvent(Base):
    """What happened to a line, step by step, for the order's timeline."""

    __tablename__ = "delivery_line_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_id: Mapped[int] = mapped_column(Integer, index=True)
    order_id: Mapped[int] = mapped_column(Integer, index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    event: Mapped[str] = mapped_column(String(48))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class SupplierOrder(Base):
    """One attempt to have a supplier deliver a line (direct recharge, card purchase).

    Written with its `customer_order_no` before the supplier is called, so a crash or a
    time-out is followed by a query for that number, never by a second charge.
    """

    __tablename__ = "delivery_supplier_order"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line_id: Mapped[int] = mapped_column(Integer, index=True)
    supplier: Mapped[str] = mapped_column(String(32))
    product_id: Mapped[str] = mapped_column(String(64))
    customer_order_no: Mapped[str] = mapped_column(String(50), unique=True)
    supplier_order_no: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cost_minor: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Report(Base):
    """A buyer's report that a delivered item does not work, and what became of it.

    At most one report per item is open at a time (the partial unique index). `origin_position`
    is the position first delivered: a replacement's replacement still points at it, so "one
    automatic replacement per item" holds along the whole chain.
    """

    __tablename__ = "delivery_report"
    __table_args__ = (
        Index(
            "uq_delivery_report_open",
            "order_id",
            "position",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
        Index("ix_delivery_report_status", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_no: Mapped[str] = mapped_column(String(32), unique=True)
    order_id: Mapped[int] = mapped_column(Integer, index=True)
    position: Mapped[int] = mapped_column(Integer)
    origin_position: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    license_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    problem: Mapped[str] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    review_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    resolution: Mapped[str | None] = mapped_column(String(16), nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    resolution_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    replacement_position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    refund_no: Mapped[str | None] = mapped_column(String(64), nullable=True)
    refund_minor: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class File(Base):
    """A file sold as a download. Its bytes sit under the files directory, named by their
    SHA-256 (the same bytes uploaded twice are kept once); they are served only through a
    signed, expiring, counted link to a live delivered item, never by this row's id."""

    __tablename__ = "delivery_file"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(127))
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Download(Base):
    """A delivered item that is a file: the token its links name, the terms it was sold with
    (copied from the SKU at delivery, so a later change of the SKU does not change them), and
    how many times it was downloaded. `downloads` only grows through a guarded UPDATE
    (`downloads < max_downloads`), so parallel downloads can never pass the limit."""

    __tablename__ = "delivery_download"
    __table_args__ = (UniqueConstraint("order_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(64), unique=True)
    order_id: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    file_id: Mapped[int] = mapped_column(Integer, index=True)
    link_minutes: Mapped[int] = mapped_column(Integer)
    max_downloads: Mapped[int] = mapped_column(Integer)
    downloads: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DownloadEvent(Base):
    """Every download that was counted: when, from where, with what browser."""

    __tablename__ = "delivery_download_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    download_id: Mapped[int] = mapped_column(Integer, index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(512), nullable=True)
