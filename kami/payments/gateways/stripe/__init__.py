"""Stripe Checkout: hosted payment page, signed webhook events, session listing for queries.

Notification: `POST` of an Event, header `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, each
v1 the hex HMAC-SHA256 of `f"{t}.{raw body}"` keyed with the endpoint secret string (`whsec_…`,
used as-is). Any v1 may match (secret rotation); other schemes (v0) are ignored. Unlike Stripe's
own library, a timestamp too far in the *future* is refused as well as a stale one.
"""

from kami.payments.gateways.stripe.gateway import MAX_EXPIRY, MIN_EXPIRY, StripeGateway
from kami.payments.gateways.stripe.options import SPEC, from_options
from kami.payments.gateways.stripe.webhooks import HEADER, WHERE, sign

__all__ = [
    "HEADER",
    "MAX_EXPIRY",
    "MIN_EXPIRY",
    "SPEC",
    "WHERE",
    "StripeGateway",
    "from_options",
    "sign",
]
