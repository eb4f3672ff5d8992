from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kami.kernel.db import Base, UtcDateTime


class Notification(Base):
    """Every notification as received, accepted or not, with the verdict and its reason."""

    __tablename__ = "payments_notification"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gateway: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    remote_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str] = mapped_column(String(8))
    headers: Mapped[dict[str, Any]] = mapped_column(JSON)
    query: Mapped[dict[str, Any]] = mapped_column(JSON)
    body: Mapped[str] = mapped_column(Text)
    order_no: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    trade_no: Mapped[str | None] = mapped_column(String(255), nullable=True)
    verdict: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class Inbox(Base):
    """One row per applied payment: the unique key makes applying it twice impossible."""

    __tablename__ = "payments_inbox"
    __table_args__ = (UniqueConstraint("gateway", "trade_no"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gateway: Mapped[str] = mapped_column(String(32))
    trade_no: Mapped[str] = mapped_column(String(255))
    order_id: Mapped[int] = mapped_column(Integer, index=True)
    amount_minor: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    applied_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SandboxTrade(Base):
    """The sandbox channel's own books: what it was paid, whether or not it told us."""

    __tablename__ = "payments_sandbox_trade"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_no: Mapped[str] = mapped_column(String(64), unique=True)
    trade_no: Mapped[str] = mapped_column(String(64), unique=True)
    amount_minor: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    paid_at: Mapped[datetime] = mapped_column(UtcDateTime)
