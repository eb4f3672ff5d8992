"""Browser sessions of the admin console: a random id in a cookie, stored only as SHA-256.

A session ends at its expiry or at sign-out; a disabled admin's sessions stop working at once
(every look-up joins the admin and checks `active`).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kami.accounts.models import Admin, ConsoleSession
from kami.accounts.service import AdminView, Role
from kami.kernel.clock import utcnow
from kami.kernel.errors import Unauthorized
from kami.kernel.ids import new_token

SESSION_TTL = timedelta(hours=12)


def _hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


def open_session(session: Session, admin_id: int, ttl: timedelta = SESSION_TTL) -> str:
    """Returns the id for the cookie; only its hash is kept."""
    session_id = new_token(32)
    now = utcnow()
    session.add(
        ConsoleSession(
            admin_id=admin_id,
            session_hash=_hash(session_id),
            created_at=now,
            expires_at=now + ttl,
        )
    )
    session.flush()
    return session_id


def session_admin(session: Session, session_id: str) -> AdminView:
    row = session.execute(
        select(Admin)
        .join(ConsoleSession, ConsoleSession.admin_id == Admin.id)
        .where(
            ConsoleSession.session_hash == _hash(session_id),
            ConsoleSession.ended_at.is_(None),
            ConsoleSession.expires_at > utcnow(),
            Admin.active,
        )
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("sign in to the console", where="session")
    return AdminView(row.id, row.username, Role(row.role))


def close_session(session: Session, session_id: str) -> bool:
    result = session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.session_hash == _hash(session_id), ConsoleSession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
