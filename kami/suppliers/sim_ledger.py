"""The simulator's books: products, prepaid accounts, orders and a journal of every debit and
refund, all in memory behind one lock (optionally dumped to a JSON file after each change).

An order is keyed by (protocol, customer_order_no): a second submit of the same number is a
duplicate and never books or charges again. Each new order's fate is drawn from one seeded RNG
(or scripted by a test): refused at once (definitive failure, nothing booked), processing for a
while (then succeeding or failing, refunded if it fails), and — independently — whether the HTTP
answer hangs past the client's time-out *after* the order was booked.
"""

from __future__ import annotations

import json
import os
import random
import string
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from kami.kernel.clock import utcnow

OrderState = Literal["processing", "succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class SimProduct:
    product_id: str
    price_minor: int  # per unit, CNY fen
    kind: Literal["recharge", "card"] = "recharge"
    name: str = ""


@dataclass(slots=True)
class SimAccount:
    protocol: str  # "fulu" | "dayuanren" | "generic"
    account_id: str  # Fulu app_key, 大猿人 userid, generic key id
    secret: str  # Fulu AppSecret, 大猿人 apikey, generic HMAC secret
    balance_minor: int = 1_000_000_00

    @property
    def ref(self) -> str:
        return f"{self.protocol}:{self.account_id}"


@dataclass(frozen=True, slots=True)
class Fate:
    """What happens to one new order (scripted by tests, else drawn from the RNG)."""

    fail: bool = False  # refused at once, or — when processing — fails when it settles
    processing: bool = False
    hang: bool = False  # the answer to this submit arrives after the client gave up


@dataclass(slots=True)
class SimOrder:
    protocol: str
    customer_order_no: str
    account: str  # SimAccount.ref
    supplier_order_no: str
    product_id: str
    product_name: str
    kind: str
    quantity: int
    target: str | None
    amount_minor: int
    status: OrderState
    will_fail: bool
    created_at: str
    notify_url: str | None = None
    settle_at: float | None = None  # monotonic time a processing order settles
    finished_at: str | None = None
    cards: list[tuple[str, str]] = field(default_factory=list)
    submits: int = 1
    callback_attempts: int = 0
    callback_acked: bool = False


@dataclass(frozen=True, slots=True)
class Booking:
    """The outcome of one submit: a new order, a duplicate of an existing one, or a refusal."""

    order: SimOrder | None
    duplicate: bool = False
    refusal: str | None = None  # unknown_product | kind_mismatch | price_above_max |
    # insufficient_balance | out_of_stock
    hang: bool = False


class Ledger:
    def __init__(
        self,
        products: tuple[SimProduct, ...],
        accounts: tuple[SimAccount, ...],
        *,
        seed: int | None,
        fail_rate: float,
        processing_rate: float,
        processing_s: float,
        timeout_rate: float,
        on_final: Callable[[SimOrder], None],
        dump_path: Path | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self.products = {p.product_id: p for p in products}
        self.accounts = {(a.protocol, a.account_id): a for a in accounts}
        self._by_ref = {a.ref: a for a in accounts}
        self._fail_rate = fail_rate
        self._processing_rate = processing_rate
        self._processing_s = processing_s
        self._timeout_rate = timeout_rate
        self._on_final = on_final
        self._dump_path = dump_path
        self._orders: dict[tuple[str, str], SimOrder] = {}
        self._journal: list[dict[str, Any]] = []
        self._scripted: dict[str, Fate] = {}
        self._counter = 0
        self.duplicates = 0
        self.refusals = 0

    def account(self, protocol: str, account_id: str) -> SimAccount | None:
        return self.accounts.get((protocol, account_id))

    def account_of(self, order: SimOrder) -> SimAccount:
        return self._by_ref[order.account]

    def script(self, customer_order_no: str, fate: Fate) -> None:
        with self._lock:
            self._scripted[customer_order_no] = fate

    def _draw(self, customer_order_no: str) -> Fate:
        # Always three draws in the same order, so a seed reproduces the run.
        hang = self._rng.random() < self._timeout_rate
        fail = self._rng.random() < self._fail_rate
        processing = self._rng.random() < self._processing_rate
        return self._scripted.pop(customer_order_no, Fate(fail, processing, hang))

    def book(
        self,
        account: SimAccount,
        customer_order_no: str,
        product_id: str,
        quantity: int,
        target: str | None,
        kind: str,
        *,
        notify_url: str | None = None,
        max_cost_minor: int | None = None,
    ) -> Booking:
        with self._lock:
            key = (account.protocol, customer_order_no)
            existing = self._orders.get(key)
            if existing is not None:
                existing.submits += 1
                self.duplicates += 1
                self._dump()
                return Booking(existing, duplicate=True)
            product = self.products.get(product_id)
            if product is None:
                return self._refuse("unknown_product")
            if product.kind != kind:
                return self._refuse("kind_mismatch")
            amount = product.price_minor * quantity
            if max_cost_minor is not None and amount > max_cost_minor:
                return self._refuse("price_above_max")
            if account.balance_minor < amount:
                return self._refuse("insufficient_balance")
            fate = self._draw(customer_order_no)
            if fate.fail and not fate.processing:
                return self._refuse("out_of_stock", hang=fate.hang)
            self._counter += 1
            account.balance_minor -= amount
            order = SimOrder(
                protocol=account.protocol,
                customer_order_no=customer_order_no,
                account=account.ref,
                supplier_order_no=f"{time.strftime('%y%m%d')}{self._counter:010d}",
                product_id=product_id,
                product_name=product.name or product_id,
                kind=kind,
                quantity=quantity,
                target=target,
                amount_minor=amount,
                status="processing",
                will_fail=fate.fail,
                created_at=utcnow().isoformat(),
                notify_url=notify_url,
            )
            self._orders[key] = order
            self._journal.append(self._entry("debit", order))
            if fate.processing:
                order.settle_at = time.monotonic() + self._processing_s
                self._dump()
            else:
                self._finish(order)
            return Booking(order, hang=fate.hang)

    def _refuse(self, reason: str, *, hang: bool = False) -> Booking:
        self.refusals += 1
        return Booking(None, refusal=reason, hang=hang)

    def _entry(self, kind: str, order: SimOrder) -> dict[str, Any]:
        return {
            "kind": kind,
            "protocol": order.protocol,
            "customer_order_no": order.customer_order_no,
            "account": order.account,
            "amount_minor": order.amount_minor,
            "at": utcnow().isoformat(),
        }

    def _finish(self, order: SimOrder) -> None:
        order.settle_at = None
        order.finished_at = utcnow().isoformat()
        if order.will_fail:
            order.status = "failed"
            self._by_ref[order.account].balance_minor += order.amount_minor
            self._journal.append(self._entry("refund", order))
        else:
            order.status = "succeeded"
            if order.kind == "card":
                order.cards = [self._new_card() for _ in range(order.quantity)]
        self._dump()
        self._on_final(order)

    def _new_card(self) -> tuple[str, str]:
        number = "SIM" + "".join(self._rng.choice(string.digits) for _ in range(16))
        alphabet = string.ascii_uppercase + string.digits
        return number, "".join(self._rng.choice(alphabet) for _ in range(12))

    def find(self, protocol: str, customer_order_no: str) -> SimOrder | None:
        with self._lock:
            self.settle_due()
            return self._orders.get((protocol, customer_order_no))

    def settle_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            for order in self._orders.values():
                if order.settle_at is not None and order.settle_at <= now:
                    self._finish(order)

    def settle(self, customer_order_no: str) -> int:
        """Settle now every processing order with this number (test hook); how many."""
        with self._lock:
            due = [
                o
                for o in self._orders.values()
                if o.customer_order_no == customer_order_no and o.settle_at is not None
            ]
            for order in due:
                self._finish(order)
            return len(due)

    def note_callback(self, order: SimOrder, acked: bool) -> None:
        with self._lock:
            order.callback_attempts += 1
            order.callback_acked = order.callback_acked or acked
            self._dump()

    # -- views ---------------------------------------------------------------------------------
    def charges_per_account(self) -> dict[str, int]:
        """Money that stands charged per account (debits minus refunds), in minor units."""
        with self._lock:
            totals = {a.ref: 0 for a in self.accounts.values()}
            for entry in self._journal:
                sign = 1 if entry["kind"] == "debit" else -1
                totals[entry["account"]] += sign * entry["amount_minor"]
            return totals

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self.settle_due()
            return self._view()

    def _view(self) -> dict[str, Any]:
        with self._lock:
            orders = []
            for order in self._orders.values():
                item = asdict(order)
                item.pop("settle_at")
                item["cards"] = [{"card": c, "password": p} for c, p in order.cards]
                orders.append(item)
            return {
                "orders": orders,
                "journal": list(self._journal),
                "charges_per_account": self.charges_per_account(),
                "balances": {a.ref: a.balance_minor for a in self.accounts.values()},
                "duplicates": self.duplicates,
                "refusals": self.refusals,
            }

    def _dump(self) -> None:
        if self._dump_path is None:
            return
        tmp = self._dump_path.with_suffix(self._dump_path.suffix + ".tmp")
        with self._lock:
            data = self._view()
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1))
        os.replace(tmp, self._dump_path)


@dataclass(frozen=True, slots=True)
class Reply:
    """What a protocol module answers one request with; `hang` makes the server hold the
    answer until after the client's time-out (the order, if any, is already booked)."""

    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


def unit_price(price_minor: int, decimals: int = 2) -> str:
    """Fen as a yuan string with `decimals` (≥ 2) decimals, no float on the way."""
    return f"{price_minor // 100}.{price_minor % 100:02d}" + "0" * (decimals - 2)


def beijing(iso: str | None) -> str:
    """A stored UTC ISO time as the 'yyyy-MM-dd HH:mm:ss' Beijing time Chinese APIs use."""
    if not iso:
        return ""
    return (datetime.fromisoformat(iso) + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S")
