"""Per-order access tokens.

The token is HMAC-SHA256(secret, order_no): 256 bits nobody can guess without the secret, and
nothing to store, so the e-mail job can rebuild the buyer's link without a token ever being
written to the database or the outbox. The secret itself lives wrapped in the vault.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def access_token(secret: bytes, order_no: str) -> str:
    digest = hmac.new(secret, b"order-access\x00" + order_no.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_access_token(secret: bytes, order_no: str, token: str) -> bool:
    return hmac.compare_digest(access_token(secret, order_no).encode(), token.encode())
