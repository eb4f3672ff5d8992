"""What the flows need to run, built once by the composition root and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from kami.delivery import Mailer
from kami.kernel.db import Database
from kami.payments import GatewayRegistry
from kami.vault import ClaimHints, VaultCipher

VaultClaimHints = ClaimHints

ORDER_TOKEN_SECRET = "order-access"


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

    def token_secret(self) -> bytes:
        with self.db.read() as s:
            return self.cipher.named_secret(s, ORDER_TOKEN_SECRET)

    def order_link(self, order_no: str, token: str) -> str:
        # The token rides in the fragment: browsers never send it to the server, so it stays out
        # of access logs and Referer headers; the page hands it to the API as a bearer token.
        return f"{self.public_url.rstrip('/')}/orders/{order_no}#t={token}"
