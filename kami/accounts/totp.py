"""Two-factor sign-in with TOTP (RFC 6238: HMAC-SHA-1, 30-second steps, 6 digits).

The shared secret is sealed with AES-256-GCM under a key the caller gets from the vault (a named
secret, itself wrapped by the master key), bound to the admin's id as associated data: a database
dump yields no secret, and a sealed secret copied to another admin's row does not open. A code
is accepted once: `last_step` is raised by a guarded UPDATE, so a replayed or concurrently
submitted code loses.
"""

from __future__ import annotations

import base64
import hmac
import os
import struct
from datetime import datetime
from urllib.parse import quote, urlencode

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from kami.accounts.models import Admin, AdminTotp
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, NotFound, Unauthorized

STEP = 30
DIGITS = 6
WINDOW = 1  # steps either side of now: tolerates a phone clock 30 s off
TOTP_SECRET = "admin-totp"  # the vault named secret that seals TOTP secrets
_NONCE = 12


def _aad(admin_id: int) -> bytes:
    return b"kami-totp-%d" % admin_id


def seal(key: bytes, admin_id: int, secret: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, secret, _aad(admin_id))


def unseal(key: bytes, admin_id: int, sealed: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], _aad(admin_id))
    except InvalidTag:
        raise Unauthorized(
            "the two-factor secret does not open with this master key", where="totp"
        ) from None


def code_at(secret: bytes, step: int) -> str:
    """The RFC 4226 HOTP value for a counter: dynamic truncation of HMAC-SHA-1."""
    digest = hmac.digest(secret, struct.pack(">Q", step), "sha1")
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**DIGITS).zfill(DIGITS)


def step_of(at: datetime) -> int:
    return int(at.timestamp()) // STEP


def totp_now(secret_b32: str, at: datetime | None = None) -> str:
    """The current code for a base32 secret, as an authenticator app shows it."""
    return code_at(b32decode(secret_b32), step_of(at or utcnow()))


def b32decode(text: str) -> bytes:
    cleaned = text.replace(" ", "").upper()
    return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))


def b32encode(secret: bytes) -> str:
    return base64.b32encode(secret).decode().rstrip("=")


def otpauth_uri(secret_b32: str, username: str, issuer: str) -> str:
    label = quote(f"{issuer}:{username}", safe="")
    query = urlencode(
        {"secret": secret_b32, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS}
        | {"period": STEP}
    )
    return f"otpauth://totp/{label}?{query}"


def _matching_step(secret: bytes, code: str, now: datetime) -> int | None:
    code = code.strip().replace(" ", "")
    if not (len(code) == DIGITS and code.isdigit()):
        return None
    current = step_of(now)
    for step in range(current - WINDOW, current + WINDOW + 1):
        if hmac.compare_digest(code_at(secret, step), code):
            return step
    return None


def begin_totp(session: Session, admin_id: int, key: bytes) -> str:
    """A new secret for an admin without confirmed 2FA, replacing an unconfirmed one; returns
    its base32 text for the enrolment page (shown once, never stored in plaintext)."""
    row = session.get(AdminTotp, admin_id)
    if row is not None and row.confirmed_at is not None:
        raise Conflict("two-factor sign-in is already on for this admin", where="totp")
    secret = os.urandom(20)
    if row is None:
        row = AdminTotp(admin_id=admin_id, created_at=utcnow(), last_step=0)
        session.add(row)
    row.sealed = seal(key, admin_id, secret)
    row.last_step = 0
    session.flush()
    return b32encode(secret)


def pending_secret(session: Session, admin_id: int, key: bytes) -> str | None:
    """The unconfirmed secret being enrolled, to show again on a reload."""
    row = session.get(AdminTotp, admin_id)
    if row is None or row.confirmed_at is not None:
        return None
    return b32encode(unseal(key, admin_id, row.sealed))


def totp_enabled(session: Session, admin_id: int) -> bool:
    row = session.execute(
        select(AdminTotp.confirmed_at).where(AdminTotp.admin_id == admin_id)
    ).first()
    return row is not None and row[0] is not None


def _use_code(session: Session, admin_id: int, key: bytes, code: str, confirmed: bool) -> bool:
    row = session.get(AdminTotp, admin_id)
    if row is None or (row.confirmed_at is not None) != confirmed:
        return False
    now = utcnow()
    step = _matching_step(unseal(key, admin_id, row.sealed), code, now)
    if step is None:
        return False
    used = session.execute(
        update(AdminTotp)
        .where(AdminTotp.admin_id == admin_id, AdminTotp.last_step < step)
        .values(last_step=step)
        .execution_options(synchronize_session=False)
    )
    return bool(used.rowcount)  # type: ignore[attr-defined]


def confirm_totp(session: Session, admin_id: int, key: bytes, code: str) -> None:
    """Turns 2FA on once the admin proves their app has the secret."""
    if not _use_code(session, admin_id, key, code, confirmed=False):
        raise InvalidInput("that code is not right; type the code your app shows now", where="code")
    session.execute(
        update(AdminTotp).where(AdminTotp.admin_id == admin_id).values(confirmed_at=utcnow())
    )


def check_totp(session: Session, admin_id: int, key: bytes, code: str) -> None:
    if not _use_code(session, admin_id, key, code, confirmed=True):
        raise Unauthorized("wrong or already used two-factor code", where="code")


def reset_totp(session: Session, username: str) -> bool:
    """Recovery (`kami admin reset-2fa NAME`): 2FA off; the admin enrols again. True if it
    was on or being enrolled."""
    admin_id = session.execute(select(Admin.id).where(Admin.username == username)).scalar()
    if admin_id is None:
        raise NotFound(f"no admin {username!r}", where="username")
    result = session.execute(delete(AdminTotp).where(AdminTotp.admin_id == admin_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]
