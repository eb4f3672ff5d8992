"""Unguessable public identifiers (invariant 8): sequential ids never leave the database."""

import base64
import secrets

from kami.kernel.clock import utcnow

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


def new_order_no() -> str:
    """A date prefix for humans plus 100 random bits, so order numbers cannot be enumerated."""
    # 32 letters divide 256, so the low five bits of each random byte pick one uniformly.
    rand = "".join(_ALPHABET[b & 31] for b in secrets.token_bytes(20))
    return f"K{utcnow():%y%m%d}{rand}"


def new_token(nbytes: int = 32) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).rstrip(b"=").decode()
