"""The gateway Protocol every payment channel implements, and the explicit registry."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from kami.kernel.errors import KamiError, NotFound


class TradeStatus(StrEnum):
    PAID = "paid"
    PENDING = "pending"
    CLOSED = "closed"
    REFUNDED = "refunded"


@dataclass(frozen=True, slots=True)
class RawNotification:
    """Exactly what arrived, before any parsing: signatures are checked over these bytes."""

    gateway: str
    method: str
    headers: Mapping[str, str]  # lower-case names
    query: Mapping[str, str]
    body: bytes
    remote_addr: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentNotice:
    """A verified notification, amounts already in minor units."""

    gateway: str
    order_no: str
    trade_no: str
    amount_minor: int
    currency: str
    status: TradeStatus
    merchant_id: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    order_no: str
    amount_minor: int
    currency: str
    subject: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class PaymentInstruction:
    """What the buyer needs to pay: a page to open, or a payload to show as a QR code."""

    kind: str  # "redirect" | "qr"
    url: str | None = None
    qr: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    status_code: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The channel's answer to a query: the trade as a notice (any status), or none at all,
    with the channel's own response kept as text for the order's record."""

    notice: PaymentNotice | None
    raw: str


class NotificationRejected(KamiError):
    """A notification that must change nothing; `slug` names the specific reason."""

    status = 400
    slug = "notification-rejected"
    title = "Notification rejected"


class Gateway(Protocol):
    name: str

    def create_payment(self, request: PaymentRequest) -> PaymentInstruction: ...

    def verify_notification(self, raw: RawNotification) -> PaymentNotice:
        """Check the signature and the channel's own fields; raise NotificationRejected."""
        ...

    def acknowledge(self, rejection: NotificationRejected | None) -> Ack:
        """The reply the channel expects: success stops its retries, failure keeps them."""
        ...

    def query(self, request: PaymentRequest) -> QueryResult:
        """Ask the channel itself what became of the order's payment (a lost callback)."""
        ...


class GatewayRegistry:
    def __init__(self) -> None:
        self._gateways: dict[str, Gateway] = {}

    def register(self, gateway: Gateway) -> None:
        if gateway.name in self._gateways:
            raise ValueError(f"gateway {gateway.name!r} registered twice")
        self._gateways[gateway.name] = gateway

    def get(self, name: str) -> Gateway:
        try:
            return self._gateways[name]
        except KeyError:
            raise NotFound(
                f"payment gateway {name!r} is not enabled "
                f"(enabled: {', '.join(self.names()) or 'none'})",
                where="gateway",
                slug="unknown-gateway",
            ) from None

    def names(self) -> list[str]:
        return sorted(self._gateways)
