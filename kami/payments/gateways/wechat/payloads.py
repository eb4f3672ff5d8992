"""The JSON WeChat Pay sends: notifications (an encrypted `resource`), transactions and refunds.
A field that is not what it must be raises NotificationRejected naming the field."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kami.payments.gateways.base import (
    NotificationRejected,
    PaymentNotice,
    RefundNotice,
    RefundStatus,
    TradeStatus,
)

TRADE_STATES = {
    "SUCCESS": TradeStatus.PAID,
    "REFUND": TradeStatus.REFUNDED,
    "NOTPAY": TradeStatus.PENDING,
    "USERPAYING": TradeStatus.PENDING,
    "CLOSED": TradeStatus.CLOSED,
    "REVOKED": TradeStatus.CLOSED,
    "PAYERROR": TradeStatus.CLOSED,
}
REFUND_STATES = {
    "SUCCESS": RefundStatus.SUCCEEDED,
    "PROCESSING": RefundStatus.PROCESSING,
    "ABNORMAL": RefundStatus.FAILED,
    "CLOSED": RefundStatus.FAILED,
}
REFUND_EVENTS = ("REFUND.SUCCESS", "REFUND.ABNORMAL", "REFUND.CLOSED")


def malformed(detail: str, where: str) -> NotificationRejected:
    return NotificationRejected(detail, where=where, slug="malformed-notification")


def text_field(obj: Mapping[str, Any], name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value or len(value) > 64 or not value.isprintable():
        raise malformed(f"{name} must be a non-empty printable string", f"{where}.{name}")
    return value


def fen_field(obj: Mapping[str, Any], name: str, where: str) -> int:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise malformed(f"{name} must be a non-negative integer of fen", f"{where}.{name}")
    return value


def amount_of(data: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    amount = data.get("amount")
    if not isinstance(amount, dict):
        raise malformed("amount must be an object", f"{where}.amount")
    return amount


def decrypt(aes: AESGCM, resource: Any) -> dict[str, Any]:
    """The JSON object a notification's `resource` holds, AES-256-GCM under the APIv3 key."""
    if not isinstance(resource, dict) or resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise malformed("resource must be an AEAD_AES_256_GCM object", "resource")
    nonce, text, extra = (resource.get(k) for k in ("nonce", "ciphertext", "associated_data"))
    if not isinstance(nonce, str) or not isinstance(text, str):
        raise malformed("resource needs a nonce and a ciphertext", "resource")
    try:
        plain = aes.decrypt(
            nonce.encode(), base64.b64decode(text, validate=True), str(extra or "").encode()
        )
        data: Any = json.loads(plain)
    except (binascii.Error, ValueError, InvalidTag):
        raise NotificationRejected(
            "resource does not decrypt under the APIv3 key (wrong apiv3_key, or altered)",
            where="resource.ciphertext",
            slug="undecryptable",
        ) from None
    if not isinstance(data, dict):
        raise malformed("the decrypted resource is not an object", "resource")
    return data


@dataclass(frozen=True, slots=True)
class Account:
    """The merchant account a notification or an answer must be about."""

    gateway: str  # the name the account is registered under
    mchid: str
    appid: str

    def check(self, data: Mapping[str, Any], where: str, *, app: bool) -> None:
        mchid = data.get("mchid")
        if not isinstance(mchid, str) or not hmac.compare_digest(mchid, self.mchid):
            raise NotificationRejected(
                f"mchid {str(mchid)[:40]!r} is not this account's",
                where=f"{where}.mchid",
                slug="merchant-mismatch",
            )
        appid = data.get("appid")
        if app and (not isinstance(appid, str) or not hmac.compare_digest(appid, self.appid)):
            raise NotificationRejected(
                f"appid {str(appid)[:40]!r} is not this account's",
                where=f"{where}.appid",
                slug="app-mismatch",
            )

    def transaction(self, data: Mapping[str, Any], where: str) -> PaymentNotice:
        """The trade in a notification's resource or a query's answer."""
        self.check(data, where, app=True)
        state = data.get("trade_state")
        status = TRADE_STATES.get(state) if isinstance(state, str) else None
        if status is None:
            raise malformed(f"trade_state {str(state)[:20]!r} is unknown", f"{where}.trade_state")
        amount = amount_of(data, where)
        return PaymentNotice(
            gateway=self.gateway,
            order_no=text_field(data, "out_trade_no", where),
            trade_no=text_field(data, "transaction_id", where),
            amount_minor=fen_field(amount, "total", f"{where}.amount"),
            currency=str(amount.get("currency") or "CNY")[:3],
            status=status,
            merchant_id=self.mchid,
        )

    def refund_notice(self, data: Mapping[str, Any]) -> RefundNotice:
        self.check(data, "resource", app=False)
        state = data.get("refund_status")
        status = REFUND_STATES.get(state) if isinstance(state, str) else None
        if status is None:
            raise malformed(f"refund_status {str(state)[:20]!r} is unknown", "refund_status")
        amount = amount_of(data, "resource")
        return RefundNotice(
            gateway=self.gateway,
            order_no=text_field(data, "out_trade_no", "resource"),
            trade_no=text_field(data, "transaction_id", "resource"),
            refund_no=text_field(data, "out_refund_no", "resource"),
            channel_refund_id=text_field(data, "refund_id", "resource"),
            amount_minor=fen_field(amount, "refund", "resource.amount"),
            currency=str(amount.get("currency") or "CNY")[:3],
            status=status,
            merchant_id=self.mchid,
        )
