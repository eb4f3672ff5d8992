from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from kami.kernel.db import Base, UtcDateTime


class Policy(Base):
    """How a SKU's licenses look and behave; copied onto each license when it is issued, so a
    later change applies to later sales only."""

    __tablename__ = "licenses_policy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku_id: Mapped[int] = mapped_column(Integer, ForeignKey("catalog_sku.id"), unique=True)
    pattern: Mapped[str] = mapped_column(String(64))
    activation_limit: Mapped[int] = mapped_column(Integer)
    validity_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    product_code: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class License(Base):
    """One license key. Like a vault key: ciphertext bound to a keyed fingerprint (unique, the
    only way to find a license from a key), and a masked preview. Never the plaintext."""

    __tablename__ = "licenses_license"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku_id: Mapped[int] = mapped_column(Integer, ForeignKey("catalog_sku.id"), index=True)
    order_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    data_key_id: Mapped[int] = mapped_column(Integer, ForeignKey("vault_data_key.id"))
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    masked: Mapped[str] = mapped_column(String(64))
    product_code: Mapped[str] = mapped_column(String(64))
    activation_limit: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Activation(Base):
    """A seat: one machine (or instance) using a license. Deactivated seats stay as history; the
    partial unique index lets a machine hold at most one live seat per license."""

    __tablename__ = "licenses_activation"
    __table_args__ = (
        Index(
            "uq_licenses_activation_live",
            "license_id",
            "machine_id",
            unique=True,
            sqlite_where=text("deactivated_at IS NULL"),
            postgresql_where=text("deactivated_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    license_id: Mapped[int] = mapped_column(Integer, ForeignKey("licenses_license.id"), index=True)
    machine_id: Mapped[str] = mapped_column(String(128))
    activated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deactivated_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
