"""Payments: the gateway Protocol and registry, the sandbox channel, the notification inbox."""

from kami.payments.gateways.base import (
    Ack,
    Gateway,
    GatewayRegistry,
    NotificationRejected,
    PaymentInstruction,
    PaymentNotice,
    PaymentRequest,
    QueryResult,
    RawNotification,
    TradeStatus,
)
from kami.payments.gateways.epay import EpayGateway
from kami.payments.gateways.sandbox import SandboxGateway
from kami.payments.gateways.stripe import StripeGateway
from kami.payments.inbox import (
    NotificationView,
    Verdict,
    list_notifications,
    record_inbox,
    record_notification,
)
from kami.payments.sandbox_books import find_sandbox_trade, record_sandbox_trade

__all__ = [
    "Ack",
    "EpayGateway",
    "Gateway",
    "GatewayRegistry",
    "NotificationRejected",
    "NotificationView",
    "PaymentInstruction",
    "PaymentNotice",
    "PaymentRequest",
    "QueryResult",
    "RawNotification",
    "SandboxGateway",
    "StripeGateway",
    "TradeStatus",
    "Verdict",
    "find_sandbox_trade",
    "list_notifications",
    "record_inbox",
    "record_notification",
    "record_sandbox_trade",
]
