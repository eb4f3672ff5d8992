"""The storefront's side of order look-up by one-time code: the shop's key for the codes'
fingerprints, from the vault (kami.orders.lookup does the rest)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from kami import fulfilment, orders
from kami.kernel.clock import utcnow

LookupCode = orders.LookupCode
MAX_GUESSES = orders.LOOKUP_MAX_GUESSES
CODE_TTL = orders.LOOKUP_CODE_TTL
IssuedCode = orders.IssuedCode
TooManyCodes = orders.TooManyCodes
code_refused = orders.code_refused
normalise_email = orders.normalise_email


def issue_code(s: Session, shop: fulfilment.Shop, email: str, ip: str | None) -> IssuedCode:
    key = shop.cipher.named_secret(s, fulfilment.LOOKUP_SECRET)
    return orders.issue_code(s, key, email, ip, utcnow())


def redeem_code(s: Session, shop: fulfilment.Shop, ticket: str, email: str, code: str) -> bool:
    key = shop.cipher.named_secret(s, fulfilment.LOOKUP_SECRET)
    return orders.redeem_code(s, key, ticket, email, code, utcnow())
