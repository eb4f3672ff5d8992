"""The gateway Protocol every payment channel implements, and the explicit registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    payer_ip: str | None = None  # the buyer's address (WeChat H5 scene_info.payer_client_ip)
    payer_openid: str | None = None  # the buyer's openid under the AppID (WeChat JSAPI)


@dataclass(frozen=True, slots=True)
class PaymentInstruction:
    """What the buyer needs to pay: a page to open, or a payload to show as a QR code."""

    kind: str  # "redirect" | "qr" | "jsapi" (qr then holds the JSON for WeixinJSBridge)
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


class RefundStatus(StrEnum):
    SUCCEEDED = "succeeded"
    PROCESSING = "processing"  # accepted by the channel, money not yet back
    FAILED = "failed"  # definitively refused; a new refund (new refund_no) may be tried


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """One refund of (part of) a paid order.

    `refund_no` is Kami's own number for this refund and the channel's idempotency key
    (Alipay `out_request_no`, WeChat `out_refund_no`, Stripe's `Idempotency-Key`, epay's refund
    number): sending the same request again must never refund twice.
    """

    order_no: str
    trade_no: str  # the channel's trade number recorded when the order was paid
    refund_no: str
    amount_minor: int  # this refund
    order_amount_minor: int  # what the buyer paid in total (WeChat wants both)
    currency: str
    reason: str


@dataclass(frozen=True, slots=True)
class RefundResult:
    """The channel's answer to a refund or a refund query."""

    refund_no: str
    status: RefundStatus
    amount_minor: int
    channel_refund_id: str | None
    raw: str  # the channel's response as text, kept on the refund's record
    detail: str | None = None  # the channel's own words when it refused


@dataclass(frozen=True, slots=True)
class RefundNotice:
    """A verified notification about a refund (WeChat REFUND.*, Stripe charge.refunded, an
    Alipay notify carrying refund_fee …). At least one of refund_no / trade_no identifies it."""

    gateway: str
    order_no: str | None
    trade_no: str | None
    refund_no: str | None  # Kami's refund number, when the channel echoes it
    channel_refund_id: str | None
    amount_minor: int  # this refund
    currency: str
    status: RefundStatus
    merchant_id: str | None = None


Notice = PaymentNotice | RefundNotice


class RefundUnsupported(KamiError):
    """The channel (or this account of it) has no refund API: refund in its console instead."""

    status = 409
    slug = "refund-unsupported"
    title = "Refund not supported by the channel"


class NotificationRejected(KamiError):
    """A notification that must change nothing; `slug` names the specific reason."""

    status = 400
    slug = "notification-rejected"
    title = "Notification rejected"


class Gateway(Protocol):
    name: str
    # Whether asking the channel to refund again with the same refund number is safe (the
    # channel deduplicates on it). False (易支付 V1): an unknown outcome is never resent.
    refund_idempotent: bool
    # The currencies the channel takes; None: any (the channel itself refuses what it cannot).
    currencies: frozenset[str] | None

    def create_payment(self, request: PaymentRequest) -> PaymentInstruction: ...

    def verify_notification(self, raw: RawNotification) -> PaymentNotice | RefundNotice:
        """Check the signature and the channel's own fields; raise NotificationRejected.
        Runs on the server's event loop, before anything else the notification needs
        (`fulfilment.check_notification`): CPU only, never the network, a file or the database."""
        ...

    def acknowledge(self, rejection: NotificationRejected | None) -> Ack:
        """The reply the channel expects: success stops its retries, failure keeps them."""
        ...

    def query(self, request: PaymentRequest) -> QueryResult:
        """Ask the channel itself what became of the order's payment (a lost callback)."""
        ...

    def refund(self, request: RefundRequest) -> RefundResult:
        """Ask the channel to refund. Idempotent on `request.refund_no` at the channel: a retry
        after a time-out or a crash returns the first attempt's result and never refunds twice.
        Raise RefundUnsupported when the channel cannot refund; raise Unavailable when the
        channel could not be reached or answered nonsense (the outcome is then unknown and the
        caller queries before anything else)."""
        ...

    def query_refund(self, request: RefundRequest) -> RefundResult:
        """Ask the channel what became of a refund (same request as was sent)."""
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

    def __contains__(self, name: object) -> bool:
        return name in self._gateways

    def names(self) -> list[str]:
        return sorted(self._gateways)

    def currencies(self) -> dict[str, frozenset[str] | None]:
        """Each account and the currencies it takes (None: any), by name."""
        return {name: self._gateways[name].currencies for name in self.names()}


Builder = Callable[[str, Mapping[str, str], str], Gateway]


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """How one channel is configured: the option names of a merchant account and the builder.

    An account is a table of string options (from the accounts file or `KAMI_<CHANNEL>__*`).
    Any option may be given as `<name>_file` (read from that file, stripped) or `<name>_env`
    (read from that environment variable); options named in `secrets` must be given that way
    in the accounts file, so no secret sits in a file that also holds ordinary settings.
    `build(name, options, public_url)` returns the gateway registered under the account's name,
    or raises ValueError whose message starts with the option at fault ("app_private_key: …")
    and never contains a secret.
    """

    channel: str
    required: tuple[str, ...]
    build: Builder
    optional: tuple[str, ...] = ()
    secrets: frozenset[str] = frozenset()
    # Non-fatal remarks for `kami gateways check` (test mode, plain http …).
    warnings: Callable[[Mapping[str, str]], list[str]] | None = None
