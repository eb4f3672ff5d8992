"""What the flows need to run, built once by the composition root and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, timedelta, tzinfo
from time import monotonic

from kami import catalog
from kami.delivery import Mailer
from kami.kernel.clock import utcnow
from kami.kernel.db import Database
from kami.payments import GatewayRegistry
from kami.suppliers import SupplierRegistry
from kami.vault import ClaimHints, VaultCipher

VaultClaimHints = ClaimHints

ORDER_TOKEN_SECRET = "order-access"
MAIL_JOB = "mail.order_update"  # the outbox job that e-mails the buyer about their order
# The outbox job that refunds in full an order paid too late to be served (`pay_lapsed`).
UNSERVED_REFUND_JOB = "fulfilment.refund_unserved"
LOOKUP_SECRET = "order-lookup"  # keys the fingerprints of order look-up codes
SOLD_OUT_MEMO = 1.0
# For this long after the database said "sold out", the same answer is given from memory.
SOLD_OUT_ANSWER = 0.05
FLASH_MEMO = 5.0


@dataclass
class Shop:
    db: Database
    cipher: VaultCipher
    gateways: GatewayRegistry
    public_url: str
    order_ttl: timedelta = timedelta(minutes=15)
    mailer: Mailer | None = None
    shop_name: str = "Kami"
    # The shop's time zone (KAMI_TIMEZONE): where its pages show and read times.
    timezone: tzinfo = UTC
    # Anti-hoarding: unpaid orders one buyer may hold per SKU, by e-mail or device, and by IP
    # (higher: many buyers share a carrier-grade NAT address).
    open_orders_per_buyer: int = 3
    open_orders_per_ip: int = 20
    claim_hints: VaultClaimHints = field(default_factory=lambda: ClaimHints())
    # Upstream suppliers (direct recharge, card purchases), by account name.
    suppliers: SupplierRegistry = field(default_factory=SupplierRegistry)
    # Calls to a supplier whose outcome stayed unknown before a person is asked to look.
    supplier_unknown_limit: int = 8
    _sold_out: dict[str, tuple[float, int, float]] = field(default_factory=dict, repr=False)
    _flash: frozenset[str] = field(default=frozenset(), repr=False)
    _flash_read_at: float = field(default=-FLASH_MEMO, repr=False)

    def token_secret(self) -> bytes:
        # Made at start-up (bootstrap) and cached by the cipher; the session is opened only if
        # it is not cached yet, never once per request.
        cached = self.cipher.cached_secret(ORDER_TOKEN_SECRET)
        if cached is not None:
            return cached
        with self.db.read() as s:
            return self.cipher.named_secret(s, ORDER_TOKEN_SECRET)

    def mark_sold_out(
        self, sku_code: str, quantity: int, *, answer_for: float | None = 0.0
    ) -> None:
        """The database just refused `quantity` units of the SKU as sold out. `answer_for`:
        how long nothing can come back on sale by itself (None: no unpaid order will run out
        of time and give goods back); the same answer is given from memory for that long,
        SOLD_OUT_ANSWER at most."""
        now = monotonic()
        memory = SOLD_OUT_ANSWER if answer_for is None else min(answer_for, SOLD_OUT_ANSWER)
        self._sold_out[sku_code] = (now, quantity, now + memory)

    def forget_sold_out(self) -> None:
        """Goods went back on sale in this process (a cancellation, an expiry, an import): its
        next buyers ask the database again. Other processes learn it within SOLD_OUT_ANSWER."""
        self._sold_out.clear()

    def recently_sold_out(self, sku_code: str) -> bool:
        """Whether this process told a buyer "sold out" for the SKU in the last second: then
        the next checkout is first answered from a read, without the write lock."""
        marked = self._sold_out.get(sku_code)
        return marked is not None and monotonic() - marked[0] < SOLD_OUT_MEMO

    def sold_out_just_now(self, sku_code: str, quantity: int) -> bool:
        """Whether the database refused as many units or fewer of the SKU as sold out so
        recently that the answer still holds (`mark_sold_out`): then it is given again without
        asking. Goods another process puts back in that moment (a cancellation, an import) go
        to the next buyer, as they would had this one come a moment earlier; after a flash
        sale it keeps thousands of buyers a second from costing a read each."""
        marked = self._sold_out.get(sku_code)
        return marked is not None and quantity >= marked[1] and monotonic() < marked[2]

    def flash_sales_stale(self) -> bool:
        return monotonic() - self._flash_read_at >= FLASH_MEMO

    def read_flash_sales(self) -> None:
        """Learn which SKUs have a flash sale that has not ended; the web layer asks again
        every FLASH_MEMO seconds, and runs those SKUs' checkouts first (decision 0018)."""
        read_at = monotonic()
        with self.db.read() as s:
            self._flash = catalog.flash_sale_codes(s, utcnow())
        self._flash_read_at = read_at

    def mark_flash_sale(self, sku_code: str) -> None:
        """A checkout found a flash sale on the SKU: from now on it is known as one, without
        waiting for the next `read_flash_sales`."""
        if sku_code not in self._flash:
            self._flash = self._flash | {sku_code}

    def on_flash_sale(self, sku_code: str) -> bool:
        """A hint, from memory: a sale that ended since the last read costs its SKU's next
        checkouts nothing but their place in the queue."""
        return sku_code in self._flash

    def order_link(self, order_no: str, token: str) -> str:
        # The token rides in the fragment: browsers never send it to the server, so it stays out
        # of access logs and Referer headers; the page hands it to the API as a bearer token.
        return f"{self.public_url.rstrip('/')}/orders/{order_no}#t={token}"
