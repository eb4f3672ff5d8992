"""Payments: the gateway Protocol and registry, the sandbox channel, the notification inbox."""

from kami.payments.gateways.base import (
    Ack,
    Gateway,
    GatewayRegistry,
    NotificationRejected,
    PaymentInstruction,
    PaymentNotice,
    PaymentRequest,
    RawNotification,
    TradeStatus,
)
from kami.payments.gateways.sandbox import SandboxGateway
from kami.payments.inbox import (
    NotificationView,
    Verdict,
    list_notifications,
    record_inbox,
    record_notification,
)

__all__ = [
    "Ack",
    "Gateway",
    "GatewayRegistry",
    "NotificationRejected",
    "NotificationView",
    "PaymentInstruction",
    "PaymentNotice",
    "PaymentRequest",
    "RawNotification",
    "SandboxGateway",
    "TradeStatus",
    "Verdict",
    "list_notifications",
    "record_inbox",
    "record_notification",
]
