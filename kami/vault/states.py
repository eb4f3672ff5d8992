"""Key statuses and the transitions between them, as data."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum


class KeyStatus(StrEnum):
    AVAILABLE = "available"
    RESERVED = "reserved"  # held for an unpaid order until it is paid, expires or is cancelled
    SOLD = "sold"
    VOID = "void"


TRANSITIONS: dict[KeyStatus, frozenset[KeyStatus]] = {
    KeyStatus.AVAILABLE: frozenset({KeyStatus.RESERVED, KeyStatus.SOLD, KeyStatus.VOID}),
    KeyStatus.RESERVED: frozenset({KeyStatus.AVAILABLE, KeyStatus.SOLD}),
    KeyStatus.SOLD: frozenset({KeyStatus.VOID}),
    KeyStatus.VOID: frozenset(),
}

NO_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)
