"""Order look-up by e-mail plus a one-time code sent to that address: never by the address
alone. Codes live ten minutes, allow five guesses and one use; an address may ask for three an
hour and a client address for ten. Neither the address nor the code is stored, only keyed
fingerprints of them (the key is the caller's, kept in the vault)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, LargeBinary, String, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from kami.kernel.db import Base, UtcDateTime
from kami.kernel.errors import Conflict, KamiError
from kami.kernel.ids import new_token

CODE_TTL = timedelta(minutes=10)
MAX_GUESSES = 5
PER_EMAIL_PER_HOUR = 3
PER_IP_PER_HOUR = 10


class LookupCode(Base):
    __tablename__ = "orders_lookup_code"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket: Mapped[str] = mapped_column(String(64), unique=True)
    email_fp: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    code_fp: Mapped[bytes] = mapped_column(LargeBinary(32))
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    guesses: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime(timezone=True), nullable=True)


class TooManyCodes(KamiError):
    status = 429
    slug = "too-many-codes"
    title = "Too many codes asked for"


@dataclass(frozen=True, slots=True)
class IssuedCode:
    ticket: str
    code: str  # handed to the mailer only, never stored


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _fp(key: bytes, *parts: str) -> bytes:
    return hmac.new(key, "\0".join(parts).encode(), hashlib.sha256).digest()


def issue_code(s: Session, key: bytes, email: str, ip: str | None, now: datetime) -> IssuedCode:
    """A one-time code for the buyer's address; only keyed fingerprints are stored."""
    email_fp = _fp(key, "email", normalise_email(email))
    hour = now - timedelta(hours=1)
    recent = select(func.count()).select_from(LookupCode).where(LookupCode.created_at > hour)
    if s.execute(recent.where(LookupCode.email_fp == email_fp)).scalar_one() >= PER_EMAIL_PER_HOUR:
        raise TooManyCodes(
            f"{PER_EMAIL_PER_HOUR} codes were sent to this address in the last hour; "
            "use one of them or wait",
            where="email",
        )
    if ip and s.execute(recent.where(LookupCode.ip == ip)).scalar_one() >= PER_IP_PER_HOUR:
        raise TooManyCodes(
            f"{PER_IP_PER_HOUR} codes were asked for from this address in the last hour",
            where="ip",
        )
    code = f"{secrets.randbelow(10**6):06d}"
    ticket = new_token(24)
    s.add(
        LookupCode(
            ticket=ticket,
            email_fp=email_fp,
            code_fp=_fp(key, "code", ticket, code),
            ip=ip,
            guesses=0,
            created_at=now,
            expires_at=now + CODE_TTL,
        )
    )
    return IssuedCode(ticket, code)


def redeem_code(s: Session, key: bytes, ticket: str, email: str, code: str, now: datetime) -> bool:
    """Spends one guess; True only for the right code of a live ticket for this address, and
    only once. Counting the guess is one guarded statement, so parallel guesses cannot exceed
    the limit; a wrong guess returns False (not an exception) so that its count commits."""
    live = (
        (LookupCode.ticket == ticket)
        & (LookupCode.used_at.is_(None))
        & (LookupCode.expires_at > now)
        & (LookupCode.guesses < MAX_GUESSES)
    )
    row = s.execute(
        update(LookupCode)
        .where(live)
        .values(guesses=LookupCode.guesses + 1)
        .returning(LookupCode.id, LookupCode.email_fp, LookupCode.code_fp)
    ).first()
    if row is None:
        return False
    email_ok = hmac.compare_digest(row.email_fp, _fp(key, "email", normalise_email(email)))
    code_ok = hmac.compare_digest(row.code_fp, _fp(key, "code", ticket, code.strip()))
    if not (email_ok and code_ok):
        return False
    spent = s.execute(
        update(LookupCode)
        .where(LookupCode.id == row.id, LookupCode.used_at.is_(None))
        .values(used_at=now)
    )
    return bool(spent.rowcount == 1)  # type: ignore[attr-defined]


def code_refused() -> Conflict:
    return Conflict(
        "the code is wrong, expired or already used; ask for a new one",
        where="code",
        slug="code-invalid",
    )
