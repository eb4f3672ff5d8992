"""Values that cross the domain's boundary: inputs checked here, views as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kami.licenses.keyformat import DEFAULT_PATTERN, pattern_problem

PRODUCT_CODE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MACHINE_ID_MAX = 128
NONCE_MAX = 128
LICENSE_KEY_MAX = 256  # longer text is refused by the schema; shorter garbage by the checksum


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str = Field(
        default=DEFAULT_PATTERN,
        description="X: a random character of 23456789ABCDEFGHJKLMNPQRSTUVWXYZ; '-' separates "
        "groups; other alphabet characters are fixed; the last two X are the checksum",
    )
    activation_limit: int = Field(default=1, ge=1, le=100_000, description="machines at once")
    validity_days: int | None = Field(
        default=None, ge=1, le=36_500, description="from issue; null: perpetual"
    )
    product_code: str = Field(pattern=PRODUCT_CODE, description="named in every signed answer")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        problem = pattern_problem(value)
        if problem is not None:
            raise ValueError(f"pattern {problem}")
        return value


class PolicyView(BaseModel):
    sku_id: int = Field(exclude=True)
    pattern: str
    activation_limit: int
    validity_days: int | None
    product_code: str
    created_at: datetime
    updated_at: datetime


def _printable(value: str, name: str) -> str:
    if not value.isprintable() or value != value.strip():
        raise ValueError(f"{name} must be printable, without leading or trailing spaces")
    return value


class LicenseRequest(BaseModel):
    """What a seller's software sends to validate, activate or deactivate."""

    model_config = ConfigDict(extra="forbid")
    license_key: str = Field(max_length=LICENSE_KEY_MAX, description="as the buyer typed it")
    machine_id: str = Field(
        min_length=1,
        max_length=MACHINE_ID_MAX,
        description="the machine or instance: stable for one installation, e.g. a hash of a "
        "hardware id",
    )
    nonce: str | None = Field(
        default=None,
        min_length=1,
        max_length=NONCE_MAX,
        description="echoed in the signed payload: ties an answer to this request",
    )

    @field_validator("machine_id")
    @classmethod
    def _machine_id(cls, value: str) -> str:
        return _printable(value, "machine_id")

    @field_validator("nonce")
    @classmethod
    def _nonce(cls, value: str | None) -> str | None:
        return None if value is None else _printable(value, "nonce")


@dataclass(frozen=True, slots=True)
class IssuedLicense:
    license_id: int
    sku_id: int
    order_id: int | None
    masked: str
    product_code: str
    activation_limit: int
    issued_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class RevealedLicense:
    """Plaintext: only for an authorised, recorded reveal to the buyer."""

    license_id: int
    key: str
    masked: str


@dataclass(frozen=True, slots=True)
class ActivationView:
    machine_id: str
    activated_at: datetime
    last_seen_at: datetime
    deactivated_at: datetime | None


@dataclass(frozen=True, slots=True)
class LicenseView:
    license_id: int
    sku_id: int
    order_id: int | None
    masked: str
    product_code: str
    status: str
    activation_limit: int
    activations_used: int
    issued_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_reason: str | None
