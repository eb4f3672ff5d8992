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

__all__ = [
    "AdminView",
    "Role",
    "authenticate",
    "check_password",
    "create_admin",
    "issue_token",
    "revoke_token",
]
