"""Admin accounts: argon2 passwords and hashed bearer tokens."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kami.accounts.models import Admin, Token
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, Unauthorized
from kami.kernel.ids import new_token

_hasher = PasswordHasher()
_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{3,64}$")
TOKEN_PREFIX = "kami_"


class Role(StrEnum):
    OWNER = "owner"
    OPERATOR = "operator"
    FINANCE = "finance"


@dataclass(frozen=True, slots=True)
class AdminView:
    id: int
    username: str
    role: Role


def _hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_admin(
    session: Session, username: str, password: str, role: Role = Role.OWNER
) -> AdminView:
    if not _USERNAME.match(username):
        raise InvalidInput("username must be 3-64 letters, digits or _ . @ -", where="username")
    if len(password) < 10:
        raise InvalidInput("password must be at least 10 characters", where="password")
    if session.execute(select(Admin.id).where(Admin.username == username)).first():
        raise Conflict(f"admin {username!r} already exists", where="username")
    admin = Admin(
        username=username,
        password_hash=_hasher.hash(password),
        role=role,
        active=True,
        created_at=utcnow(),
    )
    session.add(admin)
    session.flush()
    return AdminView(admin.id, admin.username, Role(admin.role))


def issue_token(session: Session, admin_id: int) -> str:
    token = TOKEN_PREFIX + new_token(32)
    session.add(Token(admin_id=admin_id, token_hash=_hash_token(token), created_at=utcnow()))
    session.flush()
    return token


def check_password(session: Session, username: str, password: str) -> AdminView:
    admin = session.execute(select(Admin).where(Admin.username == username)).scalar_one_or_none()
    try:
        ok = admin is not None and admin.active and _hasher.verify(admin.password_hash, password)
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or admin is None:
        raise Unauthorized("wrong username or password", where="password")
    return AdminView(admin.id, admin.username, Role(admin.role))


def authenticate(session: Session, token: str) -> AdminView:
    row = session.execute(
        select(Admin)
        .join(Token, Token.admin_id == Admin.id)
        .where(Token.token_hash == _hash_token(token), Token.revoked_at.is_(None), Admin.active)
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("invalid or revoked admin token", where="Authorization")
    return AdminView(row.id, row.username, Role(row.role))


def revoke_token(session: Session, token: str) -> bool:
    result = session.execute(
        update(Token).where(Token.token_hash == _hash_token(token)).values(revoked_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
