"""Webhook delivery: the seller's own endpoint returns the goods.

Request: `POST <url>` with a JSON body

    {"event": "delivery.requested", "delivery_id": "<order_no>-<line>", "order_no": …,
     "sku": …, "quantity": n, "buyer_input": {…}, "attempt": k}

and the headers `Idempotency-Key: <delivery_id>` (the same on every attempt: the endpoint must
answer a repeat with the same goods, never make new ones), `X-Kami-Timestamp: <unix seconds>`
and `X-Kami-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">` under the SKU's
webhook secret (`kami goods webhook-secret SKU`, or the admin API). The endpoint should refuse
a timestamp more than 5 minutes off.

Answer: HTTP 200 with `{"items": [{"card": "…", "password": "…"?}, …]}`, exactly `quantity`
items. `{"status": "processing"}` (or HTTP 202) means "ask again later". Anything else — a
time-out, a connection error, a non-2xx, a body over the size cap, JSON of another shape — is a
failed attempt, retried with backoff up to the SKU's `max_attempts`, after which the line fails
and its share is refunded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kami import vault

WEBHOOK_SECRET = "webhook-signing"


def sku_secret(master: bytes, sku_code: str) -> str:
    """The SKU's webhook signing secret, derived from the shop's: nothing to store or leak
    in the database, and one SKU's secret says nothing about another's."""
    return "whk_" + hmac.new(master, b"webhook:" + sku_code.encode(), hashlib.sha256).hexdigest()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one call to the endpoint gave: goods, "later", or a failure with its reason."""

    goods: list[vault.Secret] | None = None
    later: bool = False
    error: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def call(
    url: str,
    secret: str,
    payload: Mapping[str, Any],
    *,
    idempotency_key: str,
    quantity: int,
    timeout: float,
    max_bytes: int,
) -> Attempt:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    now = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": "Kami-Webhook/1",
        "Idempotency-Key": idempotency_key,
        "X-Kami-Timestamp": str(now),
        "X-Kami-Signature": signature(secret, now, body),
    }
    # S310: the URL's scheme was checked when the SKU was saved (http or https only).
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status = response.status
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        return Attempt(error=f"the endpoint answered HTTP {exc.code}")
    except TimeoutError:
        return Attempt(error=f"no answer within {timeout:g} s")
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return Attempt(error=f"the endpoint could not be reached: {reason}")
    if len(data) > max_bytes:
        return Attempt(error=f"the answer is larger than {max_bytes} bytes")
    if status == 202:
        return Attempt(later=True)
    if status != 200:
        return Attempt(error=f"the endpoint answered HTTP {status}; 200 with the goods expected")
    return _read(data, quantity)


def _read(data: bytes, quantity: int) -> Attempt:
    try:
        answer: Any = json.loads(data)
    except ValueError:
        return Attempt(error="the answer is not JSON")
    if isinstance(answer, dict) and answer.get("status") == "processing":
        return Attempt(later=True)
    items = answer.get("items") if isinstance(answer, dict) else None
    if not isinstance(items, list):
        return Attempt(error='the answer has no "items" list')
    if len(items) != quantity:
        return Attempt(error=f"the answer has {len(items)} item(s), {quantity} expected")
    goods = []
    for n, item in enumerate(items):
        card = item.get("card") if isinstance(item, dict) else None
        password = item.get("password") if isinstance(item, dict) else None
        if not isinstance(card, str) or not card.strip() or len(card) > 2000:
            return Attempt(error=f"items[{n}].card must be a non-empty string")
        if password is not None and (not isinstance(password, str) or len(password) > 2000):
            return Attempt(error=f"items[{n}].password must be a string")
        if "\x00" in card or (password and "\x00" in password):
            return Attempt(error=f"items[{n}] contains a NUL character")
        goods.append(vault.Secret(card.strip(), password or None))
    return Attempt(goods=goods)
