"""`kami admin reset-2fa NAME`: the way back in for an admin who lost their authenticator.

It is a command on the server rather than a button in the console on purpose: whoever can run
it already holds the database and the master key, so it grants nothing a stolen console
session could not; an owner's button would let one stolen owner session strip 2FA from all.
"""

from __future__ import annotations

from kami import accounts
from kami.cli.context import clear_errors, console, container


def reset_2fa(username: str) -> None:
    """Turn two-factor sign-in off for an admin; they sign in with the password and enrol again."""
    with clear_errors(), container() as c, c.db.write() as s:
        was_on = accounts.reset_totp(s, username)
    if was_on:
        console.print(f"two-factor sign-in is off for {username}; they should set it up again")
    else:
        console.print(f"{username} had no two-factor sign-in; nothing changed")
