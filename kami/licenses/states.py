"""License statuses and the refusals the public API signs, as data."""

from __future__ import annotations

from enum import StrEnum


class LicenseStatus(StrEnum):
    """What is stored. `expired` is never stored: it follows from `expires_at` and the clock."""

    ACTIVE = "active"
    REVOKED = "revoked"  # after a refund or by the seller; final


class Standing(StrEnum):
    """A license's standing as a signed answer reports it."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"
    INVALID = "invalid"  # malformed, wrong checksum or unknown: indistinguishable on purpose


class Refusal(StrEnum):
    """Why a request was refused; each is the problem `type` slug of the refusal."""

    INVALID = "license-invalid"
    REVOKED = "license-revoked"
    EXPIRED = "license-expired"
    NOT_ACTIVATED = "machine-not-activated"
    LIMIT_REACHED = "activation-limit-reached"


# HTTP status and title of each refusal, for the problem document that carries it.
REFUSALS: dict[Refusal, tuple[int, str]] = {
    Refusal.INVALID: (404, "License invalid"),
    Refusal.REVOKED: (403, "License revoked"),
    Refusal.EXPIRED: (403, "License expired"),
    Refusal.NOT_ACTIVATED: (403, "Machine not activated"),
    Refusal.LIMIT_REACHED: (409, "Activation limit reached"),
}
