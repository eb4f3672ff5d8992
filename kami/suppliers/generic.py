"""Kami's own signed-JSON supplier protocol ("kami-supplier/1"), for suppliers that speak
neither Fulu nor 大猿人. A supplier implements three endpoints and one callback:

Every request and every answer is JSON, signed with a shared secret:

    X-Kami-Key:        the merchant's key id
    X-Kami-Timestamp:  Unix seconds
    X-Kami-Signature:  hex HMAC-SHA256(secret, f"{timestamp}.".encode() + body)

and is refused when the timestamp is more than 300 s away from the receiver's clock.

`POST {base}/orders` with
    {"customer_order_no": str (≤ 50), "product_id": str, "quantity": int, "account": str|null,
     "kind": "recharge"|"card", "max_cost_minor": int|null, "extra": {str: str},
     "notify_url": str|null}
answers 200 with the order:
    {"customer_order_no", "supplier_order_no", "status": "processing"|"succeeded"|"failed",
     "cost_minor": int|null, "currency": "CNY", "cards": [{"card": str, "password": str|null}],
     "detail": str|null, "duplicate": bool}
A customer_order_no the supplier already has is *not* booked again: the answer is the existing
order with "duplicate": true. Any other refusal is a 4xx with {"error": code, "detail": text}
and means nothing was booked (e.g. 402 insufficient_balance, 409 price_above_max, 422
unknown_product, 401 bad_signature).

`POST {base}/orders/query` with {"customer_order_no": …} answers 200 with the order, or 404
{"error": "not_found"} when the supplier never received it.
`POST {base}/balance` with {} answers {"balance_minor": int, "currency": "CNY"}.

Callback: when an order becomes succeeded or failed the supplier POSTs the order object to the
order's notify_url, signed as above; a 2xx answer stops its retries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from kami.suppliers.base import (
    DEFAULT_TIMEOUT,
    NOT_FOUND,
    CallbackRejected,
    HttpAnswer,
    SupplierCallback,
    SupplierCard,
    SupplierOrderStatus,
    SupplierRequest,
    SupplierResult,
    SupplierSpec,
    TransportError,
    callback_order_no,
    failed,
    http_url_option,
    post,
    readable,
    require,
    shown,
    timeout_option,
    unknown,
)

FRESHNESS = 300  # seconds either way
SECRET_FIELDS = frozenset({"card", "password"})
_STATES = {s.value: s for s in SupplierOrderStatus if s is not SupplierOrderStatus.UNKNOWN}


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signed_headers(
    key_id: str, secret: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        "X-Kami-Key": key_id,
        "X-Kami-Timestamp": timestamp,
        "X-Kami-Signature": signature(secret, timestamp, body),
    }


def check_signature(
    headers: Mapping[str, str], body: bytes, secret: str, now: float | None = None
) -> str | None:
    """None when the (lower-case) headers sign `body` freshly, else the reason."""
    timestamp = headers.get("x-kami-timestamp", "")
    given = headers.get("x-kami-signature", "")
    if not timestamp.isdigit() or not given:
        return "signature headers missing"
    if abs((time.time() if now is None else now) - int(timestamp)) > FRESHNESS:
        return "timestamp outside ±300 s"
    if not hmac.compare_digest(given.lower().encode(), signature(secret, timestamp, body).encode()):
        return "signature does not match"
    return None


def order_body(order: Mapping[str, Any]) -> bytes:
    return json.dumps(order, ensure_ascii=False, separators=(",", ":")).encode()


class GenericSupplier:
    protocol = "generic"

    def __init__(
        self,
        base_url: str,
        key_id: str,
        secret: str,
        *,
        name: str = "generic",
        notify_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not key_id or not secret:
            raise ValueError("the key_id and secret must not be empty")
        self.name = name
        self._base = base_url.rstrip("/")
        self._key_id = key_id
        self._secret = secret
        self._notify_url = notify_url
        self._timeout = timeout
        self._clock = clock

    def _call(self, path: str, payload: Mapping[str, Any]) -> tuple[HttpAnswer, Any, str]:
        """(answer, decoded JSON, raw text with cards replaced); TransportError when the answer
        is missing, unsigned, badly signed, a 5xx or not JSON (outcome unknown)."""
        body = order_body(payload)
        headers = signed_headers(self._key_id, self._secret, body, self._clock())
        answer = post(f"{self._base}/{path}", body, headers, timeout=self._timeout)
        if answer.status >= 500:
            raise TransportError(f"HTTP {answer.status}: {answer.text()[:200]}")
        problem = check_signature(answer.headers, answer.body, self._secret, self._clock())
        if problem:
            raise TransportError(f"HTTP {answer.status} answer refused: {problem}")
        try:
            data = json.loads(answer.body)
        except ValueError:
            raise TransportError(f"HTTP {answer.status}: answer is not JSON") from None
        raw = shown(data, SECRET_FIELDS)
        return answer, data, raw

    def submit(self, request: SupplierRequest) -> SupplierResult:
        no = request.customer_order_no
        payload = {
            "customer_order_no": no,
            "product_id": request.product_id,
            "quantity": request.quantity,
            "account": request.account,
            "kind": request.kind,
            "max_cost_minor": request.max_cost_minor,
            "extra": dict(request.extra),
            "notify_url": self._notify_url,
        }
        try:
            answer, data, raw = self._call("orders", payload)
        except TransportError as exc:
            return unknown(no, str(exc))
        if answer.status == 200:
            return self._order(no, data, raw)
        if 400 <= answer.status < 500 and isinstance(data, dict) and data.get("error"):
            # Duplicates are answered 200 with the existing order: a 4xx booked nothing.
            return failed(no, f"{data['error']}: {data.get('detail') or ''}".strip(), raw)
        return unknown(no, f"unexpected HTTP {answer.status}", raw)

    def query(self, customer_order_no: str) -> SupplierResult:
        no = customer_order_no
        try:
            answer, data, raw = self._call("orders/query", {"customer_order_no": no})
        except TransportError as exc:
            return unknown(no, str(exc))
        if answer.status == 404 and isinstance(data, dict) and data.get("error") == "not_found":
            return failed(no, NOT_FOUND, raw)
        if answer.status != 200:
            return unknown(no, f"query answered HTTP {answer.status}", raw)
        return self._order(no, data, raw)

    def _order(self, no: str, data: Any, raw: str) -> SupplierResult:
        if not isinstance(data, dict):
            return unknown(no, "answer is not an order", raw)
        if data.get("customer_order_no") != no:
            return unknown(no, "answer is about another order", raw)
        status = _STATES.get(str(data.get("status")))
        if status is None:
            return unknown(no, f"unknown status {data.get('status')!r}", raw)
        cards = []
        for item in data.get("cards") or []:
            if not isinstance(item, dict) or not isinstance(item.get("card"), str):
                return unknown(no, "unreadable card", raw)
            password = item.get("password")
            cards.append(SupplierCard(item["card"], str(password) if password else None))
        cost = data.get("cost_minor")
        if cost is not None and (not isinstance(cost, int) or isinstance(cost, bool) or cost < 0):
            return unknown(no, "cost_minor is not a non-negative integer", raw)
        detail = data.get("detail")
        supplier_no = data.get("supplier_order_no")
        return SupplierResult(
            customer_order_no=no,
            status=status,
            supplier_order_no=str(supplier_no) if supplier_no else None,
            cards=tuple(cards) if status is SupplierOrderStatus.SUCCEEDED else (),
            cost_minor=cost,
            detail=str(detail)[:500] if detail else None,
            raw=raw,
        )

    def verify_callback(self, raw: SupplierCallback) -> SupplierResult:
        problem = check_signature(raw.headers, raw.body, self._secret, self._clock())
        if problem:
            slug = "stale-callback" if "timestamp" in problem else "bad-signature"
            raise CallbackRejected(problem, where="x-kami-signature", slug=slug)
        if raw.headers.get("x-kami-key") != self._key_id:
            raise CallbackRejected(
                "X-Kami-Key is not this account's key", where="x-kami-key", slug="unknown-merchant"
            )
        try:
            data = json.loads(raw.body)
        except ValueError:
            raise CallbackRejected(
                "the callback body is not JSON", where="body", slug="malformed-callback"
            ) from None
        no = callback_order_no(data, "customer_order_no")
        return readable(self._order(no, data, shown(data, SECRET_FIELDS)), "status")

    def acknowledge(self, ok: bool) -> tuple[int, bytes, str]:
        return (200, b"ok", "text/plain") if ok else (400, b"fail", "text/plain")

    def balance(self) -> int | None:
        try:
            answer, data, _ = self._call("balance", {})
        except TransportError:
            return None
        value = data.get("balance_minor") if isinstance(data, dict) else None
        if answer.status != 200 or not isinstance(value, int) or isinstance(value, bool):
            return None
        return value


def from_options(name: str, options: Mapping[str, str]) -> GenericSupplier:
    """An account from its options; errors name the option, never a secret."""
    require(options, SPEC.required)
    key_id = options["key_id"]
    if len(key_id) > 64 or not key_id.isprintable() or any(c.isspace() for c in key_id):
        raise ValueError("key_id: must be up to 64 printable characters without spaces")
    if len(options["secret"]) < 16:
        raise ValueError("secret: must be at least 16 characters")
    notify_url = http_url_option(options, "notify_url") if options.get("notify_url") else None
    return GenericSupplier(
        http_url_option(options, "base_url"),
        key_id,
        options["secret"],
        name=name,
        notify_url=notify_url,
        timeout=timeout_option(options),
    )


SPEC = SupplierSpec(
    protocol="generic",
    required=("base_url", "key_id", "secret"),
    optional=("notify_url", "timeout"),
    secrets=frozenset({"secret"}),
    build=from_options,
)
