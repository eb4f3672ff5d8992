"""The supplier Protocol every upstream (直充 / card) adapter implements, its value types, the
explicit registry, and the one HTTP client all adapters share.

Suppliers are asynchronous: an accepted order is *submitted*, not delivered. Kami stores its
`customer_order_no` before the first call and sends the same number on every retry, so the
supplier's duplicate check is what keeps a retry from charging twice. The statuses say what the
caller may do next:

- SUCCEEDED / FAILED are definitive. After FAILED no charge stands at this supplier for this
  `customer_order_no`, so another supplier may be tried.
- PROCESSING: the supplier has the order; poll `query()` or wait for the callback.
- UNKNOWN: the outcome of the call is unknown (time-out, dropped connection, 5xx, redirect,
  oversized or unparseable answer). The order may or may not exist: query before doing anything
  else, and never fail over to another supplier on UNKNOWN.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Literal, Protocol

from kami.kernel.errors import InvalidInput, KamiError, NotFound

MAX_RESPONSE = 1024 * 1024  # 1 MiB: an answer larger than this is refused (UNKNOWN)
DEFAULT_TIMEOUT = 10.0
NOT_FOUND = "not found"  # SupplierResult.detail of an order the supplier says it never received
_ORDER_NO = re.compile(r"^[A-Za-z0-9_.:-]{1,50}$")


class SupplierOrderStatus(StrEnum):
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


Kind = Literal["recharge", "card"]


@dataclass(frozen=True, slots=True)
class SupplierRequest:
    """One order to one supplier. `customer_order_no` is Kami's number, stored before the call
    and reused unchanged on every retry to this supplier (its idempotency key there)."""

    customer_order_no: str
    product_id: str
    quantity: int
    account: str | None
    kind: Kind = "recharge"
    max_cost_minor: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _ORDER_NO.match(self.customer_order_no):
            raise InvalidInput(
                "customer_order_no must be 1-50 characters of A-Z a-z 0-9 _ . : -",
                where="customer_order_no",
            )
        if not self.product_id or len(self.product_id) > 64 or not self.product_id.isprintable():
            raise InvalidInput("product_id must be the supplier's product code", where="product_id")
        if isinstance(self.quantity, bool) or not isinstance(self.quantity, int):
            raise InvalidInput("quantity must be an integer", where="quantity")
        if not 1 <= self.quantity <= 10_000:
            raise InvalidInput("quantity must be between 1 and 10000", where="quantity")
        if self.kind not in ("recharge", "card"):
            raise InvalidInput("kind must be 'recharge' or 'card'", where="kind")
        if self.kind == "recharge" and not self.account:
            raise InvalidInput("a recharge needs the account to recharge", where="account")
        if self.account is not None and (len(self.account) > 128 or not self.account.isprintable()):
            raise InvalidInput("account must be at most 128 printable characters", where="account")
        if self.max_cost_minor is not None and (
            isinstance(self.max_cost_minor, bool) or self.max_cost_minor < 0
        ):
            raise InvalidInput("max_cost_minor must be a non-negative integer", where="max_cost")


@dataclass(frozen=True, slots=True)
class SupplierCard:
    card: str
    password: str | None = None

    def __repr__(self) -> str:  # card secrets must not reach logs through a repr
        return "SupplierCard(card=***, password=***)"


@dataclass(frozen=True, slots=True)
class SupplierResult:
    """The supplier's answer about one order, amounts in minor units (CNY fen).

    `raw` is the supplier's response as text with card numbers and passwords replaced by
    "***", so it may be stored with the order. `partial` marks a definitive success that
    delivered only part of the order (大猿人 state 3): the rest must be refunded.
    """

    customer_order_no: str
    status: SupplierOrderStatus
    supplier_order_no: str | None = None
    cards: tuple[SupplierCard, ...] = ()
    cost_minor: int | None = None
    detail: str | None = None
    raw: str = ""
    partial: bool = False

    @property
    def never_received(self) -> bool:
        """The supplier said definitively it has no such order (FAILED, detail "not found").

        A submit whose outcome was UNKNOWN may still be in flight when the query says this:
        the safe next step is to submit again *to the same supplier* with the same
        customer_order_no (its duplicate check makes that idempotent), not to fail over."""
        return self.status is SupplierOrderStatus.FAILED and self.detail == NOT_FOUND


@dataclass(frozen=True, slots=True)
class SupplierCallback:
    """Exactly what arrived at the callback URL, before any parsing."""

    method: str
    headers: Mapping[str, str]  # lower-case names
    query: Mapping[str, str]
    body: bytes


class CallbackRejected(KamiError):
    """A callback that must change nothing; `slug` names the reason (bad-signature,
    malformed-callback, stale-callback, unknown-merchant)."""

    status = 400
    slug = "callback-rejected"
    title = "Supplier callback rejected"


class Supplier(Protocol):
    name: str

    def submit(self, request: SupplierRequest) -> SupplierResult:
        """Place the order. Never raises for an answer, a time-out or a transport error:
        those are FAILED / PROCESSING / SUCCEEDED / UNKNOWN results. A duplicate
        customer_order_no is answered with the existing order's state, never a new charge."""
        ...

    def query(self, customer_order_no: str) -> SupplierResult:
        """The order's state at the supplier; FAILED with detail "not found" only when the
        protocol says definitively that it has no such order, else UNKNOWN."""
        ...

    def verify_callback(self, raw: SupplierCallback) -> SupplierResult:
        """Check a callback's signature and fields; raise CallbackRejected."""
        ...

    def acknowledge(self, ok: bool) -> tuple[int, bytes, str]:
        """(status code, body, content type) the supplier expects: ok stops its retries."""
        ...

    def balance(self) -> int | None:
        """The prepaid balance at the supplier in minor units, or None if unknown."""
        ...


class SupplierRegistry:
    def __init__(self) -> None:
        self._suppliers: dict[str, Supplier] = {}

    def register(self, supplier: Supplier) -> None:
        if supplier.name in self._suppliers:
            raise ValueError(f"supplier {supplier.name!r} registered twice")
        self._suppliers[supplier.name] = supplier

    def get(self, name: str) -> Supplier:
        try:
            return self._suppliers[name]
        except KeyError:
            raise NotFound(
                f"supplier {name!r} is not configured "
                f"(configured: {', '.join(self.names()) or 'none'})",
                where="supplier",
                slug="unknown-supplier",
            ) from None

    def names(self) -> list[str]:
        return sorted(self._suppliers)


@dataclass(frozen=True, slots=True)
class SupplierSpec:
    """How one supplier protocol is configured, like payments' ChannelSpec: an account is a
    table of string options; options in `secrets` must come from a file or the environment.
    `build(name, options)` returns the adapter or raises ValueError whose message starts with
    the option at fault ("app_secret: …") and never contains a secret's value."""

    protocol: str
    required: tuple[str, ...]
    build: Callable[[str, Mapping[str, str]], Supplier]
    optional: tuple[str, ...] = ()
    secrets: frozenset[str] = frozenset()


# -- helpers shared by the adapters ---------------------------------------------------------
def unknown(order_no: str, detail: str, raw: str = "") -> SupplierResult:
    return SupplierResult(order_no, SupplierOrderStatus.UNKNOWN, detail=detail, raw=raw[:4000])


def failed(order_no: str, detail: str, raw: str = "") -> SupplierResult:
    return SupplierResult(order_no, SupplierOrderStatus.FAILED, detail=detail[:500], raw=raw)


def to_minor(amount: Any, quantity: int = 1) -> int | None:
    """A decimal amount in yuan (string or number, any number of decimals) times `quantity`,
    in fen rounded half-up; None when it is not an amount."""
    try:
        value = Decimal(str(amount).strip()) * quantity
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite() or value < 0:
        return None
    return int((value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def yuan(amount_minor: int) -> str:
    whole, fen = divmod(amount_minor, 100)
    return f"{whole}.{fen:02d}"


def redact(value: Any, keys: frozenset[str]) -> Any:
    """A copy of a parsed JSON value with the values of `keys` (at any depth) replaced."""
    if isinstance(value, dict):
        return {k: "***" if k in keys else redact(v, keys) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, keys) for v in value]
    return value


MAX_SHOWN = 8000  # characters of a supplier's answer kept for the timeline


def shown(data: Any, secret_fields: frozenset[str]) -> str:
    """A supplier's answer or callback as kept for people to read: secrets masked, capped."""
    return json.dumps(redact(data, secret_fields), ensure_ascii=False)[:MAX_SHOWN]


def callback_order_no(data: Any, field: str) -> str:
    """The order number a callback is about; CallbackRejected if it is missing or too long."""
    no = data.get(field) if isinstance(data, Mapping) else None
    if not isinstance(no, str) or not no or len(no) > 50:
        raise CallbackRejected(
            f"{field} is missing or too long", where=field, slug="malformed-callback"
        )
    return no


def readable(result: SupplierResult, where: str) -> SupplierResult:
    """A callback's outcome; CallbackRejected if it could not be read (nothing changes)."""
    if result.status is SupplierOrderStatus.UNKNOWN:
        raise CallbackRejected(
            result.detail or f"unreadable {where}", where=where, slug="malformed-callback"
        )
    return result


def timeout_option(options: Mapping[str, str]) -> float:
    text = options.get("timeout", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ValueError("timeout: must be a number of seconds") from None
    if not 0.05 <= value <= 120:
        raise ValueError("timeout: must be between 0.05 and 120 seconds")
    return value


def http_url_option(options: Mapping[str, str], option: str) -> str:
    value = options.get(option, "")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{option}: must be an http(s) address without ?query")
    return value.rstrip("/")


def require(options: Mapping[str, str], spec_required: tuple[str, ...]) -> None:
    for option in spec_required:
        if not options.get(option):
            raise ValueError(f"{option}: is missing")


# -- the HTTP client --------------------------------------------------------------------------
class TransportError(Exception):
    """The call's outcome is unknown; the message says why and never holds a secret."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes
    headers: Mapping[str, str]  # lower-case names

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Suppliers never redirect; following one would resend a signed order elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float,
    max_bytes: int = MAX_RESPONSE,
) -> HttpAnswer:
    """POST and read the whole answer within `timeout` (for the whole read, not per packet).

    Any status is returned as an answer except redirects, which raise TransportError like
    time-outs, connection errors and answers over `max_bytes`."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise TransportError("only http(s) supplier addresses are called")
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310
    deadline = time.monotonic() + timeout
    try:
        try:
            resp = _OPENER.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                exc.close()
                raise TransportError(f"redirect refused (HTTP {exc.code})") from None
            resp = exc
        with resp:
            chunks: list[bytes] = []
            size = 0
            while True:
                if time.monotonic() > deadline:
                    raise TransportError(f"timed out after {timeout:g} s")
                chunk = resp.read(64 * 1024)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise TransportError(f"answer larger than {max_bytes} bytes refused")
                chunks.append(chunk)
            status = int(resp.status if resp.status is not None else resp.code)
            answer_headers = {k.lower(): v for k, v in resp.headers.items()}
    except TimeoutError:
        raise TransportError(f"timed out after {timeout:g} s") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise TransportError(f"timed out after {timeout:g} s") from None
        raise TransportError(f"connection failed: {type(reason).__name__}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, bad status line …
        raise TransportError(f"transport error: {type(exc).__name__}") from None
    return HttpAnswer(status, b"".join(chunks), answer_headers)
