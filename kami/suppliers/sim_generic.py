"""The simulator's side of Kami's own supplier protocol (`/generic/orders|orders/query|balance`,
see kami/suppliers/generic.py): HMAC-checked JSON in, signed JSON out, signed callbacks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kami.suppliers.base import HttpAnswer
from kami.suppliers.generic import check_signature, order_body, signed_headers
from kami.suppliers.sim_callbacks import CallbackJob
from kami.suppliers.sim_ledger import Ledger, Reply, SimAccount, SimOrder

PREFIX = "/generic/"
REFUSALS = {
    "unknown_product": (422, "the product does not exist"),
    "kind_mismatch": (422, "the product is not of this kind"),
    "price_above_max": (409, "the cost is above max_cost_minor"),
    "insufficient_balance": (402, "the prepaid balance is too low"),
    "out_of_stock": (409, "out of stock"),
}


def order_json(order: SimOrder, *, duplicate: bool = False) -> dict[str, Any]:
    done = order.status == "succeeded"
    return {
        "customer_order_no": order.customer_order_no,
        "supplier_order_no": order.supplier_order_no,
        "status": order.status,
        "cost_minor": order.amount_minor,
        "currency": "CNY",
        "cards": [{"card": c, "password": p} for c, p in order.cards] if done else [],
        "detail": {"failed": "recharge failed", "succeeded": "delivered"}.get(order.status),
        "duplicate": duplicate,
    }


def _answer(account: SimAccount | None, status: int, data: Any, *, hang: bool = False) -> Reply:
    body = order_body(data)
    headers = {}
    if account is not None:
        headers = signed_headers(account.account_id, account.secret, body)
        headers.pop("Content-Type")
    return Reply(status, body, headers=headers, hang=hang)


def _error(account: SimAccount | None, status: int, error: str, detail: str = "") -> Reply:
    return _answer(account, status, {"error": error, "detail": detail})


def handle(ledger: Ledger, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
    action = path.removeprefix(PREFIX).strip("/")
    account = ledger.account("generic", headers.get("x-kami-key", ""))
    if account is None:
        return _error(None, 401, "unknown_key", "X-Kami-Key is not a known key")
    problem = check_signature(headers, body, account.secret)
    if problem:
        return _error(account, 401, "bad_signature", problem)
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return _error(account, 400, "invalid_request", "the body is not a JSON object")
    if action == "orders":
        return _order(ledger, account, data)
    if action == "orders/query":
        order = ledger.find("generic", str(data.get("customer_order_no", "")))
        if order is None or order.account != account.ref:
            return _error(account, 404, "not_found", "no such order")
        return _answer(account, 200, order_json(order))
    if action == "balance":
        return _answer(account, 200, {"balance_minor": account.balance_minor, "currency": "CNY"})
    return _error(account, 404, "no_such_endpoint", path)


def _invalid(data: Mapping[str, Any]) -> str | None:
    no = data.get("customer_order_no")
    if not isinstance(no, str) or not 1 <= len(no) <= 50:
        return "customer_order_no"
    if not isinstance(data.get("product_id"), str):
        return "product_id"
    quantity = data.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        return "quantity"
    if data.get("kind") not in ("recharge", "card"):
        return "kind"
    if data.get("kind") == "recharge" and not isinstance(data.get("account"), str):
        return "account"
    cap = data.get("max_cost_minor")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)):
        return "max_cost_minor"
    if data.get("notify_url") is not None and not isinstance(data.get("notify_url"), str):
        return "notify_url"
    return None


def _order(ledger: Ledger, account: SimAccount, data: Mapping[str, Any]) -> Reply:
    bad = _invalid(data)
    if bad:
        return _error(account, 422, "invalid_request", f"{bad} is missing or invalid")
    booking = ledger.book(
        account,
        data["customer_order_no"],
        data["product_id"],
        data["quantity"],
        data.get("account"),
        data["kind"],
        notify_url=data.get("notify_url"),
        max_cost_minor=data.get("max_cost_minor"),
    )
    if booking.order is not None and booking.duplicate:
        return _answer(account, 200, order_json(booking.order, duplicate=True))
    if booking.refusal is not None or booking.order is None:
        status, detail = REFUSALS[booking.refusal or "out_of_stock"]
        reply = _error(account, status, booking.refusal or "out_of_stock", detail)
        return Reply(reply.status, reply.body, headers=reply.headers, hang=booking.hang)
    return _answer(account, 200, order_json(booking.order), hang=booking.hang)


def _acked(answer: HttpAnswer) -> bool:
    return 200 <= answer.status < 300


def callback(ledger: Ledger, order: SimOrder, url: str) -> CallbackJob:
    account = ledger.account_of(order)
    body = order_body(order_json(order))
    return CallbackJob(
        url=url,
        body=body,
        headers=signed_headers(account.account_id, account.secret, body),
        acknowledged=_acked,
        on_attempt=lambda acked: ledger.note_callback(order, acked),
    )
