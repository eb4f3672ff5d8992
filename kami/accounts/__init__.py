"""Admin accounts and their bearer tokens."""

from kami.accounts.service import (
    AdminView,
    Role,
    authenticate,
    check_password,
    create_admin,
    issue_token,
    revoke_token,
)
from kami.accounts.sessions import SESSION_TTL, close_session, open_session, session_admin
from kami.accounts.totp import (
    TOTP_SECRET,
    begin_totp,
    check_totp,
    confirm_totp,
    otpauth_uri,
    pending_secret,
    reset_totp,
    totp_enabled,
    totp_now,
)

__all__ = [
    "SESSION_TTL",
    "TOTP_SECRET",
    "AdminView",
    "Role",
    "authenticate",
    "begin_totp",
    "check_password",
    "check_totp",
    "close_session",
    "confirm_totp",
    "create_admin",
    "issue_token",
    "open_session",
    "otpauth_uri",
    "pending_secret",
    "reset_totp",
    "revoke_token",
    "session_admin",
    "totp_enabled",
    "totp_now",
]
