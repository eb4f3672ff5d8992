"""福禄开放平台 (Fulu open platform): one method gateway, MD5 signature over sorted characters.

Every call is `POST {gateway}` with a JSON object of common parameters whose `biz_content` is
itself a JSON *string*. The signature (reference §5.1, vectors in the tests): serialise the
object without `sign` as compact JSON with no ASCII- and no slash-escaping, sort its
characters, append the AppSecret, MD5, lower-case hex. Key order does not matter, escapes do.

Answers are `{"code":0,"message":…,"result":"<JSON string>","sign":…}`; code 0 means the call
was accepted. Order answers (`fulu.order.*.add`, `fulu.order.info.get`) carry `order_state`
(untreated / processing / success / failed) and `order_price` (unit price, yuan, up to four
decimals); callbacks carry the same order as `order_status` / `price` (both spellings are read).

Cards come only from `fulu.order.info.get` and are encrypted: base64 of AES-256-ECB with the
AppSecret as the key, PKCS#7 padding (Fulu's published decryption sample, checked in the tests
against the sandbox sample ciphertexts). A card order that succeeds at submit time is therefore
queried at once for its cards.

Not confirmed from Fulu's own documentation (reference §5.1 marks them UNVERIFIED), and how this
adapter copes:
- the error code for a duplicate customer_order_no: *any* refusal of a submit is followed by a
  query, so a duplicate is answered with the existing order and never becomes a new charge;
- the error for an unknown order in `fulu.order.info.get`: a message saying the order does not
  exist ("订单不存在" / "order … not exist|found") is read as "not found"; anything else is UNKNOWN;
- the callback signature: assumed to be the same rule over the callback object without `sign`;
- the acknowledgement: the body `success`;
- answer signatures are not checked (their rule is undocumented): use the https gateway.
Fulu has no price ceiling on an order, so `max_cost_minor` is not sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from kami.kernel.clock import utcnow
from kami.suppliers.base import (
    DEFAULT_TIMEOUT,
    MAX_SHOWN,
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
    redact,
    require,
    shown,
    timeout_option,
    to_minor,
    unknown,
)
from kami.suppliers.fulu_cards import decrypt_card as decrypt_card
from kami.suppliers.fulu_cards import encrypt_card as encrypt_card

DIRECT_ADD = "fulu.order.direct.add"
CARD_ADD = "fulu.order.card.add"
INFO_GET = "fulu.order.info.get"
USER_INFO_GET = "fulu.user.info.get"
SECRET_FIELDS = frozenset({"card_number", "card_pwd"})
# fmt: off
DIRECT_EXTRAS = frozenset({
    "charge_game_name", "charge_game_region", "charge_game_srv", "charge_game_role",
    "charge_type", "charge_password", "charge_ip", "contact_qq", "contact_tel",
    "remaining_number", "customer_price", "shop_type", "external_biz_id",
})
# fmt: on
CARD_EXTRAS = frozenset({"customer_price", "shop_type", "external_biz_id"})
_STATES = {
    "success": SupplierOrderStatus.SUCCEEDED,
    "failed": SupplierOrderStatus.FAILED,
    "processing": SupplierOrderStatus.PROCESSING,
    "untreated": SupplierOrderStatus.PROCESSING,
}
_NOT_FOUND_WORDS = ("订单不存在", "订单号不存在", "订单信息不存在")
_BEIJING = timedelta(hours=8)


# -- signing ----------------------------------------------------------------------------------
class RawNumber(str):
    """A JSON number kept as the text that arrived, so re-serialising it changes nothing."""

    __slots__ = ()


def loads(text: str) -> Any:
    """Parse JSON keeping numbers as they were written (needed to re-create a signed text)."""
    return json.loads(text, parse_float=RawNumber, parse_int=RawNumber)


def compact(value: Any) -> str:
    """Compact JSON, no ASCII-escaping, no slash-escaping (PHP `json_encode($v, 320)`)."""
    if isinstance(value, RawNumber):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{compact(str(k))}:{compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(compact(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def sign_text(params: Mapping[str, Any]) -> str:
    """The characters of the compact JSON of `params` without `sign`, sorted (code points:
    the same order as PHP's byte-wise sort of UTF-8 characters)."""
    return "".join(sorted(compact({k: v for k, v in params.items() if k != "sign"})))


def sign(params: Mapping[str, Any], secret: str) -> str:
    text = sign_text(params) + secret
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def beijing_timestamp() -> str:
    return (utcnow() + _BEIJING).strftime("%Y-%m-%d %H:%M:%S")


# -- the adapter ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Reply:
    code: int
    message: str
    result: Any  # the decoded `result` (dict, list, str or None)
    raw: str  # the answer as text with card secrets replaced


class FuluSupplier:
    protocol = "fulu"

    def __init__(
        self,
        gateway_url: str,
        app_key: str,
        app_secret: str,
        *,
        name: str = "fulu",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not app_key or not app_secret:
            raise ValueError("the Fulu app_key and app_secret must not be empty")
        self.name = name
        self._url = gateway_url
        self._app_key = app_key
        self._secret = app_secret
        self._timeout = timeout

    # -- calls ---------------------------------------------------------------------------------
    def _call(self, method: str, biz: Mapping[str, Any]) -> _Reply:
        params: dict[str, Any] = {
            "app_key": self._app_key,
            "method": method,
            "timestamp": beijing_timestamp(),
            "version": "2.0",
            "format": "json",
            "charset": "utf-8",
            "sign_type": "md5",
            "app_auth_token": "",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        params["sign"] = sign(params, self._secret)
        body = compact(params).encode()
        headers = {"Content-Type": "application/json;charset=utf-8"}
        answer = post(self._url, body, headers, timeout=self._timeout)
        text = answer.text()
        if answer.status != 200:
            raise TransportError(f"HTTP {answer.status}: {text[:200]}")
        try:
            data = json.loads(text)
            code = int(data["code"])
        except (ValueError, TypeError, KeyError):
            raise TransportError(f"unparseable answer: {text[:200]}") from None
        result = data.get("result")
        if isinstance(result, str) and result:
            with contextlib.suppress(ValueError):
                result = json.loads(result)
        visible = dict(data, result=redact(result, SECRET_FIELDS))
        raw = json.dumps(visible, ensure_ascii=False)[:MAX_SHOWN]
        return _Reply(code, str(data.get("message") or ""), result, raw)

    def submit(self, request: SupplierRequest) -> SupplierResult:
        no = request.customer_order_no
        if not (request.product_id.isascii() and request.product_id.isdigit()):
            return failed(no, "fulu product_id must be a number (nothing was sent)")
        allowed = DIRECT_EXTRAS if request.kind == "recharge" else CARD_EXTRAS
        for key in request.extra:
            if key not in allowed:
                return failed(no, f"extra field {key!r} is not a Fulu field (nothing was sent)")
        biz: dict[str, Any] = {"product_id": int(request.product_id), "customer_order_no": no}
        if request.kind == "recharge":
            biz["charge_account"] = request.account
        biz["buy_num"] = request.quantity
        biz.update(request.extra)
        method = DIRECT_ADD if request.kind == "recharge" else CARD_ADD
        try:
            reply = self._call(method, biz)
        except TransportError as exc:
            return unknown(no, str(exc))
        if reply.code != 0:
            return self._after_refusal(no, reply)
        if not isinstance(reply.result, dict):
            return SupplierResult(
                no, SupplierOrderStatus.PROCESSING, detail="accepted", raw=reply.raw
            )
        result = self._order(no, reply.result, reply.raw)
        if (
            request.kind == "card"
            and result.status is SupplierOrderStatus.SUCCEEDED
            and not result.cards
        ):
            fetched = self.query(no)  # card.add never returns the cards
            if fetched.status is SupplierOrderStatus.SUCCEEDED and fetched.cards:
                return fetched
            return replace(
                result, status=SupplierOrderStatus.PROCESSING, detail="cards not fetched yet"
            )
        return result

    def _after_refusal(self, no: str, reply: _Reply) -> SupplierResult:
        """A refused submit may be a duplicate of an order Fulu already has: ask before
        calling it a failure, so a retry is never mistaken for a failed (re-buyable) order."""
        found = self.query(no)
        if found.never_received:
            return failed(no, f"refused: {reply.message} (code {reply.code})", reply.raw)
        if found.status is SupplierOrderStatus.UNKNOWN:
            return unknown(no, f"refused ({reply.message}); query inconclusive", reply.raw)
        return found

    def query(self, customer_order_no: str) -> SupplierResult:
        no = customer_order_no
        try:
            reply = self._call(INFO_GET, {"customer_order_no": no})
        except TransportError as exc:
            return unknown(no, str(exc))
        if reply.code != 0:
            if any(word in reply.message for word in _NOT_FOUND_WORDS) or (
                "order" in reply.message.lower()
                and any(w in reply.message.lower() for w in ("not exist", "not found"))
            ):
                return failed(no, NOT_FOUND, reply.raw)
            return unknown(no, f"query refused: {reply.message} (code {reply.code})", reply.raw)
        if not isinstance(reply.result, dict):
            return unknown(no, "query answer without an order", reply.raw)
        return self._order(no, reply.result, reply.raw)

    def _order(self, no: str, order: Mapping[str, Any], raw: str) -> SupplierResult:
        """An order object (answer or callback) as a result; UNKNOWN if it cannot be read."""
        answered_no = str(order.get("customer_order_no") or no)
        if answered_no != no:
            return unknown(no, f"answer is about order {answered_no!r}", raw)
        state = str(order.get("order_state") or order.get("order_status") or "")
        status = _STATES.get(state)
        if status is None:
            return unknown(no, f"unknown order state {state!r}", raw)
        try:
            quantity = int(str(order.get("buy_num") or "1"))
        except ValueError:
            quantity = 1
        price = order.get("order_price", order.get("price"))
        cost = to_minor(price, quantity) if price not in (None, "") else None
        cards: list[SupplierCard] = []
        if status is SupplierOrderStatus.SUCCEEDED:
            try:
                cards = self._cards(order.get("cards"))
            except ValueError as exc:
                return unknown(no, f"succeeded, but {exc}", raw)
        description = order.get("recharge_description")
        return SupplierResult(
            customer_order_no=no,
            status=status,
            supplier_order_no=str(order["order_id"]) if order.get("order_id") else None,
            cards=tuple(cards),
            cost_minor=cost,
            detail=str(description)[:500] if description else None,
            raw=raw,
        )

    def _cards(self, value: Any) -> list[SupplierCard]:
        if not value:
            return []
        if not isinstance(value, list):
            raise ValueError("cards is not a list")
        cards = []
        for item in value:
            if not isinstance(item, dict):
                raise ValueError("a card is not an object")
            number = str(item.get("card_number") or "")
            pwd = str(item.get("card_pwd") or "")
            number = decrypt_card(number, self._secret) if number else ""
            pwd = decrypt_card(pwd, self._secret) if pwd else ""
            if not number and not pwd:
                raise ValueError("a card has neither number nor password")
            cards.append(SupplierCard(number, pwd or None) if number else SupplierCard(pwd))
        return cards

    # -- callbacks -----------------------------------------------------------------------------
    def verify_callback(self, raw: SupplierCallback) -> SupplierResult:
        """The callback's order. Fulu callbacks carry no cards: for a card order, a SUCCEEDED
        callback means "call query() now to collect the cards"."""
        try:
            data = loads(raw.body.decode())
        except (UnicodeDecodeError, ValueError):
            raise CallbackRejected(
                "the callback body is not JSON", where="body", slug="malformed-callback"
            ) from None
        if not isinstance(data, dict):
            raise CallbackRejected(
                "the callback body is not a JSON object", where="body", slug="malformed-callback"
            )
        given = data.get("sign")
        if not isinstance(given, str) or not given:
            raise CallbackRejected("the sign is missing", where="sign", slug="bad-signature")
        expected = sign(data, self._secret)
        if not hmac.compare_digest(given.lower().encode(), expected.encode()):
            raise CallbackRejected(
                "sign does not match the callback", where="sign", slug="bad-signature"
            )
        no = callback_order_no(data, "customer_order_no")
        return readable(self._order(no, data, shown(data, SECRET_FIELDS)), "order_status")

    def acknowledge(self, ok: bool) -> tuple[int, bytes, str]:
        return (200, b"success", "text/plain") if ok else (400, b"fail", "text/plain")

    def balance(self) -> int | None:
        try:
            reply = self._call(USER_INFO_GET, {})
        except TransportError:
            return None
        if reply.code != 0 or not isinstance(reply.result, dict):
            return None
        return to_minor(reply.result.get("balance"))


# -- configuration ----------------------------------------------------------------------------
def from_options(name: str, options: Mapping[str, str]) -> FuluSupplier:
    """An account from its options; errors name the option, never a secret."""
    require(options, SPEC.required)
    app_key = options["app_key"]
    if len(app_key) > 128 or not app_key.isprintable():
        raise ValueError("app_key: must be the AppKey Fulu issued (printable, ≤ 128 characters)")
    return FuluSupplier(
        http_url_option(options, "gateway_url"),
        app_key,
        options["app_secret"],
        name=name,
        timeout=timeout_option(options),
    )


SPEC = SupplierSpec(
    protocol="fulu",
    required=("gateway_url", "app_key", "app_secret"),
    optional=("timeout",),
    secrets=frozenset({"app_secret"}),
    build=from_options,
)
