"""Delivery: which keys went to which order, reveals, and the mail that tells the buyer."""

from kami.delivery.notifiers.base import Email, Mailer
from kami.delivery.notifiers.smtp import SmtpMailer, SmtpSettings
from kami.delivery.service import (
    RevealView,
    item_key_ids,
    list_reveals,
    live_items,
    record_items,
    record_reveal,
    revoke_items,
)

__all__ = [
    "Email",
    "Mailer",
    "RevealView",
    "SmtpMailer",
    "SmtpSettings",
    "item_key_ids",
    "list_reveals",
    "live_items",
    "record_items",
    "record_reveal",
    "revoke_items",
]
