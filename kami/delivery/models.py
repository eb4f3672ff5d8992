from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kami.kernel.db import Base, UtcDateTime


class Item(Base):
    """One delivered unit of an order. A key can stand in at most one item, ever."""

    __tablename__ = "delivery_item"
    __table_args__ = (UniqueConstraint("key_id"), UniqueConstraint("order_id", "position"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[int] = mapped_column(Integer)
    delivered_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Reveal(Base):
    """Every time plaintext left the vault for a buyer: when, from where, with what browser."""

    __tablename__ = "delivery_reveal"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(Integer, index=True)
    revealed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(512), nullable=True)
