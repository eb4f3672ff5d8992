from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from kami.kernel.db import Base, UtcDateTime


class Admin(Base):
    __tablename__ = "accounts_admin"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Token(Base):
    """Bearer tokens, stored only as SHA-256: a database dump yields no usable token."""

    __tablename__ = "accounts_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    admin_id: Mapped[int] = mapped_column(Integer, ForeignKey("accounts_admin.id"), index=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class AdminTotp(Base):
    """An admin's TOTP secret, sealed with AES-GCM under a vault named secret: a database
    dump alone cannot mint codes. `last_step` refuses a code replayed within its window."""

    __tablename__ = "accounts_totp"

    admin_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("accounts_admin.id"), primary_key=True
    )
    sealed: Mapped[bytes] = mapped_column(LargeBinary(128))
    confirmed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_step: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ConsoleSession(Base):
    """A signed-in browser: the cookie's random id is stored only as SHA-256."""

    __tablename__ = "accounts_console_session"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    admin_id: Mapped[int] = mapped_column(Integer, ForeignKey("accounts_admin.id"), index=True)
    session_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
