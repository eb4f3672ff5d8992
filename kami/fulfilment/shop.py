"""What the flows need to run, built once by the composition root and passed in."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from kami.delivery import Mailer
from kami.kernel.db import Database
from kami.payments import GatewayRegistry
from kami.suppliers import SupplierRegistry
from kami.vault import ClaimHints, VaultCipher

VaultClaimHints = ClaimHints

ORDER_TOKEN_SECRET = "order-access"
MAIL_JOB = "mail.order_update"  # the outbox job that e-mails the buyer about their order
LOOKUP_SECRET = "order-lookup"  # keys the fingerprints of order look-up codes
SOLD_OUT_MEMO = 1.0


@dataclass
class Shop:
    db: Database
    cipher: VaultCipher
    gateways: GatewayRegistry
    public_url: str
    order_ttl: timedelta = timedelta(minutes=15)
    mailer: Mailer | None = None
    shop_name: str = "Kami"
    # Anti-hoarding: unpaid orders one buyer may hold per SKU, by e-mail or device, and by IP
    # (higher: many buyers share a carrier-grade NAT address).
    open_orders_per_buyer: int = 3
    open_orders_per_ip: int = 20
    claim_hints: VaultClaimHints = field(default_factory=lambda: ClaimHints())
    # Upstream suppliers (direct recharge, card purchases), by account name.
    suppliers: SupplierRegistry = field(default_factory=SupplierRegistry)
    # Calls to a supplier whose outcome stayed unknown before a person is asked to look.
    supplier_unknown_limit: int = 8
    _sold_out: dict[str, float] = field(default_factory=dict, repr=False)

    def token_secret(self) -> bytes:
        # Made at start-up (bootstrap) and cached by the cipher; the session is opened only if
        # it is not cached yet, never once per request.
        cached = self.cipher.cached_secret(ORDER_TOKEN_SECRET)
        if cached is not None:
            return cached
        with self.db.read() as s:
            return self.cipher.named_secret(s, ORDER_TOKEN_SECRET)

    def mark_sold_out(self, sku_code: str) -> None:
        self._sold_out[sku_code] = time.monotonic()

    def recently_sold_out(self, sku_code: str) -> bool:
        """Whether this process told a buyer "sold out" for the SKU in the last second: then
        the next checkout is first answered from a read, without the write lock."""
        at = self._sold_out.get(sku_code)
        return at is not None and time.monotonic() - at < SOLD_OUT_MEMO

    def order_link(self, order_no: str, token: str) -> str:
        # The token rides in the fragment: browsers never send it to the server, so it stays out
        # of access logs and Referer headers; the page hands it to the API as a bearer token.
        return f"{self.public_url.rstrip('/')}/orders/{order_no}#t={token}"
