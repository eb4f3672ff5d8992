from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from kami.kernel.db import Base, UtcDateTime
from kami.vault.states import KeyStatus

# "Available" as the SQL the available-keys index is built on. Statements that should use the
# index write it as this literal: a bound parameter (`status = ?`) is a value neither SQLite nor
# a generic PostgreSQL plan can prove equal to the index's condition, so they would not use it.
_AVAILABLE = f"'{KeyStatus.AVAILABLE.value}'"
AVAILABLE_SQL = f"status = {_AVAILABLE}"


class DataKey(Base):
    """A data-encryption key, stored only wrapped by a master key version."""

    __tablename__ = "vault_data_key"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Named secrets (fingerprint key, token key) have a name; per-batch data keys do not.
    name: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    master_version: Mapped[int] = mapped_column(Integer, index=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    rotated_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Batch(Base):
    __tablename__ = "vault_batch"
    # What a key's one foreign key refers to (see Key).
    __table_args__ = (UniqueConstraint("id", "sku_id", "data_key_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    sku_id: Mapped[int] = mapped_column(Integer, ForeignKey("catalog_sku.id"), index=True)
    data_key_id: Mapped[int] = mapped_column(Integer, ForeignKey("vault_data_key.id"))
    supplier: Mapped[str] = mapped_column(String(200), default="")
    unit_cost_minor: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    source_name: Mapped[str] = mapped_column(String(255), default="")
    imported: Mapped[int] = mapped_column(Integer, default=0)
    duplicates_in_file: Mapped[int] = mapped_column(Integer, default=0)
    duplicates_in_stock: Mapped[int] = mapped_column(Integer, default=0)
    invalid: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Key(Base):
    """One card key. Only ciphertext, a keyed fingerprint and a masked preview are stored."""

    __tablename__ = "vault_key"
    __table_args__ = (
        UniqueConstraint("sku_id", "fingerprint"),
        # The claim walks this index: available keys of a SKU, earliest expiry first. Only
        # available keys are in it, so taking a key deletes one entry and adds none, and the
        # reserved, sold and void keys never widen it (decision 0027).
        Index(
            "ix_vault_key_available",
            "sku_id",
            "expires_at",
            "id",
            sqlite_where=text(AVAILABLE_SQL),
            postgresql_where=text(AVAILABLE_SQL),
        ),
        # A key belongs to its batch's SKU and is sealed with its batch's data key, and the
        # batch's own foreign keys hold the SKU and the data key: one check per row where three
        # separate ones (SKU, batch, data key) cost a million-key import on PostgreSQL a third
        # of its server time, and let a key disagree with its batch.
        ForeignKeyConstraint(
            ["batch_id", "sku_id", "data_key_id"],
            ["vault_batch.id", "vault_batch.sku_id", "vault_batch.data_key_id"],
        ),
        # Only sold or reserved keys have an order; an import adds nothing to this index.
        Index(
            "ix_vault_key_order_id",
            "order_id",
            sqlite_where=text("order_id IS NOT NULL"),
            postgresql_where=text("order_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku_id: Mapped[int] = mapped_column(Integer)
    batch_id: Mapped[int] = mapped_column(Integer, index=True)
    data_key_id: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    masked: Mapped[str] = mapped_column(String(600))
    status: Mapped[str] = mapped_column(String(16))
    # Keys without an expiry carry NO_EXPIRY so that "earliest expiry first" sorts the same on
    # SQLite (NULLs first) and PostgreSQL (NULLs last) and the claim stays one index range.
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    order_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sold_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


# `Key.status = 'available'` written as the available-keys index's own condition (see
# AVAILABLE_SQL): the form every statement that should walk that index uses.
KEY_AVAILABLE = Key.__table__.c.status == literal_column(_AVAILABLE)
