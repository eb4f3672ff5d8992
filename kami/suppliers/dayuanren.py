"""The "大猿人" recharge protocol (`yrapi.php`), spoken by many 话费/权益 supplier platforms.

`POST {base}/index/recharge` and `{base}/index/check`, form-encoded, JSON answers
`{"errno":0,"errmsg":…,"data":…}`. Signature (reference §5.2, vector in the tests): drop `sign`,
sort by key, join `k=v&…` with the raw (decoded) values, append `&apikey={KEY}`, MD5, upper-case
hex. Callbacks are form POSTs signed the same way over every field received; the reply that stops
their retries is the body `success`.

`check` states: -1 cancelled, 0 charging, 1 success, 2 failed, 3 partial. Partial is a definitive
success with `partial=True` (the difference is the caller's to refund).

How this adapter copes with what the reference does not pin down:
- a refused `recharge` (errno ≠ 0) may be a duplicate out_trade_num: it is always followed by a
  `check`, so a retry is answered with the existing order, never charged again;
- `check` answering errno 0 without the order, or an errmsg saying it does not exist (不存在),
  means "not found"; anything else is UNKNOWN;
- the protocol has no quantity, so an order of more than one unit is refused before sending;
- `charge_kami` (cards) is read as one card per line, number and password separated by a comma,
  "|", "----" or spaces (UNVERIFIED format); `total_price` (yuan), when an answer carries it, is
  the cost; the protocol's balance call is not in the reference, so balance() is None.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from kami.suppliers.base import (
    DEFAULT_TIMEOUT,
    NOT_FOUND,
    CallbackRejected,
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
    to_minor,
    unknown,
    yuan,
)

EXTRAS = frozenset({"amount", "area", "ytype", "id_card_no", "city", "param1", "param2", "param3"})
SECRET_FIELDS = frozenset({"charge_kami"})
_STATES = {
    "-1": SupplierOrderStatus.FAILED,
    "0": SupplierOrderStatus.PROCESSING,
    "1": SupplierOrderStatus.SUCCEEDED,
    "2": SupplierOrderStatus.FAILED,
    "3": SupplierOrderStatus.SUCCEEDED,
}
_CARD_SPLIT = re.compile(r"\s*(?:----|,|\||\s)\s*")


def sign_text(params: Mapping[str, str], apikey: str) -> str:
    items = sorted(
        ((k, v) for k, v in params.items() if k != "sign"), key=lambda item: item[0].encode()
    )
    return "&".join(f"{k}={v}" for k, v in items) + f"&apikey={apikey}"


def sign(params: Mapping[str, str], apikey: str) -> str:
    digest = hashlib.md5(sign_text(params, apikey).encode(), usedforsecurity=False)
    return digest.hexdigest().upper()


def parse_cards(text: str) -> list[SupplierCard]:
    cards = []
    for line in text.replace("\r", "\n").split("\n"):
        line = line.strip()
        if not line:
            continue
        parts = [p for p in _CARD_SPLIT.split(line, maxsplit=1) if p]
        cards.append(SupplierCard(parts[0], parts[1] if len(parts) > 1 else None))
    return cards


class DayuanrenSupplier:
    protocol = "dayuanren"

    def __init__(
        self,
        base_url: str,
        userid: str,
        apikey: str,
        *,
        name: str = "dayuanren",
        notify_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not userid or not apikey:
            raise ValueError("the 大猿人 userid and apikey must not be empty")
        self.name = name
        self._base = base_url.rstrip("/")
        self._userid = userid
        self._apikey = apikey
        self._notify_url = notify_url
        self._timeout = timeout

    def _call(self, path: str, params: dict[str, str]) -> tuple[int, str, Any, str]:
        """(errno, errmsg, data, raw text with cards replaced); TransportError if no answer."""
        params = {"userid": self._userid, **params}
        params["sign"] = sign(params, self._apikey)
        body = urllib.parse.urlencode(params).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        answer = post(f"{self._base}/{path}", body, headers, timeout=self._timeout)
        text = answer.text()
        if answer.status != 200:
            raise TransportError(f"HTTP {answer.status}: {text[:200]}")
        try:
            data = json.loads(text)
            errno = int(data["errno"])
        except (ValueError, TypeError, KeyError):
            raise TransportError(f"unparseable answer: {text[:200]}") from None
        raw = shown(data, SECRET_FIELDS)
        return errno, str(data.get("errmsg") or ""), data.get("data"), raw

    def submit(self, request: SupplierRequest) -> SupplierResult:
        no = request.customer_order_no
        if request.quantity != 1:
            return failed(no, "大猿人 orders carry no quantity: one unit per order (not sent)")
        for key in request.extra:
            if key not in EXTRAS:
                return failed(no, f"extra field {key!r} is not a 大猿人 field (nothing was sent)")
        params = {
            "out_trade_num": no,
            "product_id": request.product_id,
            "mobile": request.account or "",
        }
        if self._notify_url:
            params["notify_url"] = self._notify_url
        if request.max_cost_minor is not None:
            params["price"] = yuan(request.max_cost_minor)
        params.update(request.extra)
        try:
            errno, errmsg, data, raw = self._call("index/recharge", params)
        except TransportError as exc:
            return unknown(no, str(exc))
        if errno != 0:
            found = self.query(no)  # a duplicate out_trade_num is refused like any error
            if found.never_received:
                return failed(no, f"refused: {errmsg} (errno {errno})", raw)
            if found.status is SupplierOrderStatus.UNKNOWN:
                return unknown(no, f"refused ({errmsg}); query inconclusive", raw)
            return found
        order_number = data.get("order_number") if isinstance(data, dict) else None
        cost = (
            to_minor(data["total_price"])
            if isinstance(data, dict) and data.get("total_price")
            else None
        )
        return SupplierResult(
            no,
            SupplierOrderStatus.PROCESSING,
            supplier_order_no=str(order_number) if order_number else None,
            cost_minor=cost,
            detail=errmsg[:500] or None,
            raw=raw,
        )

    def query(self, customer_order_no: str) -> SupplierResult:
        no = customer_order_no
        try:
            errno, errmsg, data, raw = self._call("index/check", {"out_trade_nums": no})
        except TransportError as exc:
            return unknown(no, str(exc))
        if errno != 0:
            if "不存在" in errmsg or "not exist" in errmsg.lower():
                return failed(no, NOT_FOUND, raw)
            return unknown(no, f"check refused: {errmsg} (errno {errno})", raw)
        orders = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
        for order in orders:
            if isinstance(order, dict) and str(order.get("out_trade_num")) == no:
                return self._order(no, order, raw)
        if data is None or isinstance(data, list | dict):
            return failed(no, NOT_FOUND, raw)
        return unknown(no, "check answer without orders", raw)

    def _order(self, no: str, order: Mapping[str, Any], raw: str) -> SupplierResult:
        state = str(order.get("state", "")).strip()
        status = _STATES.get(state)
        if status is None:
            return unknown(no, f"unknown state {state!r}", raw)
        cards: tuple[SupplierCard, ...] = ()
        if status is SupplierOrderStatus.SUCCEEDED and order.get("charge_kami"):
            cards = tuple(parse_cards(str(order["charge_kami"])))
        detail = str(order.get("remark") or "") or None
        if state == "3":
            detail = f"partial: charged {order.get('charge_amount', '?')}" + (
                f" ({detail})" if detail else ""
            )
        price = order.get("total_price")
        return SupplierResult(
            customer_order_no=no,
            status=status,
            supplier_order_no=str(order["order_number"]) if order.get("order_number") else None,
            cards=cards,
            cost_minor=to_minor(price) if price not in (None, "") else None,
            detail=detail[:500] if detail else None,
            raw=raw,
            partial=state == "3",
        )

    def verify_callback(self, raw: SupplierCallback) -> SupplierResult:
        try:
            text = raw.body.decode()
        except UnicodeDecodeError:
            raise CallbackRejected(
                "the callback body is not UTF-8", where="body", slug="malformed-callback"
            ) from None
        if raw.method.upper() == "POST":
            params = dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
        else:
            params = dict(raw.query)
        given = params.get("sign", "")
        if not given:
            raise CallbackRejected("the sign is missing", where="sign", slug="bad-signature")
        if not hmac.compare_digest(given.upper().encode(), sign(params, self._apikey).encode()):
            raise CallbackRejected(
                "sign does not match the callback", where="sign", slug="bad-signature"
            )
        if params.get("userid") != self._userid:
            raise CallbackRejected(
                "userid is not this account's", where="userid", slug="unknown-merchant"
            )
        no = callback_order_no(params, "out_trade_num")
        kept = shown(dict(params, sign="***"), SECRET_FIELDS)
        return readable(self._order(no, params, kept), "state")

    def acknowledge(self, ok: bool) -> tuple[int, bytes, str]:
        return (200, b"success", "text/plain") if ok else (400, b"fail", "text/plain")

    def balance(self) -> int | None:
        return None


def from_options(name: str, options: Mapping[str, str]) -> DayuanrenSupplier:
    """An account from its options; errors name the option, never a secret."""
    require(options, SPEC.required)
    userid = options["userid"]
    if len(userid) > 32 or not userid.isprintable() or any(c.isspace() for c in userid):
        raise ValueError("userid: must be the merchant id (up to 32 characters, no spaces)")
    notify_url = http_url_option(options, "notify_url") if options.get("notify_url") else None
    return DayuanrenSupplier(
        http_url_option(options, "base_url"),
        userid,
        options["apikey"],
        name=name,
        notify_url=notify_url,
        timeout=timeout_option(options),
    )


SPEC = SupplierSpec(
    protocol="dayuanren",
    required=("base_url", "userid", "apikey"),
    optional=("notify_url", "timeout"),
    secrets=frozenset({"apikey"}),
    build=from_options,
)
