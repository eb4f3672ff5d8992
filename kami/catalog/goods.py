"""What a SKU delivers and what the buyer must tell us: the kinds of goods and their settings.

Every SKU names one delivery kind; its `delivery_config` holds that kind's settings, checked
here when the SKU is saved (a bad setting is refused with the field it is in), and its
`input_fields` the values the buyer fills in at checkout (a recharge account, a phone number,
a QQ number), each with its validation rule.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kami.kernel.errors import InvalidInput


class DeliveryKind(StrEnum):
    CARD_KEY = "card_key"  # one pre-loaded key per unit, never sold twice
    REUSABLE_KEY = "reusable_key"  # one key sold up to N times (or without limit)
    TEXT = "text"  # the same text or link for every buyer (a reusable key without limit)
    LICENSE = "license"  # a license key generated at delivery, with activations
    WEBHOOK = "webhook"  # the seller's own endpoint returns the goods
    MANUAL = "manual"  # an operator fulfils it from the admin queue
    RECHARGE = "recharge"  # direct recharge (直充) through upstream suppliers
    BUNDLE = "bundle"  # several component SKUs delivered together (权益包)
    DOWNLOAD = "download"  # a stored file, through signed links limited in time and count


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReusableConfig(_Config):
    max_sales: int | None = Field(
        default=None,
        ge=1,
        le=10**9,
        description="how many units the one key may be sold; null: any",
    )
    per_buyer_limit: int = Field(default=1, ge=1, le=10_000)


class WebhookConfig(_Config):
    url: str = Field(min_length=8, max_length=2000, pattern=r"^https?://")
    timeout_seconds: float = Field(default=10, gt=0, le=60)
    max_attempts: int = Field(default=5, ge=1, le=20)
    max_response_bytes: int = Field(default=64 * 1024, ge=256, le=1024 * 1024)


class RechargeRoute(_Config):
    supplier: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="supplier account")
    product_id: str = Field(min_length=1, max_length=64)
    priority: int = Field(default=0, ge=0, le=1000, description="lower first")
    cost_minor: int = Field(default=0, ge=0, le=10**12, description="then cheaper first")


class RechargeConfig(_Config):
    routes: list[RechargeRoute] = Field(min_length=1, max_length=20)
    account_field: str = Field(default="account", description="the input field to recharge")


class BundleComponent(_Config):
    sku: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    quantity: int = Field(default=1, ge=1, le=100)
    share_minor: int = Field(
        ge=0, le=10**12, description="this component's share of the price, refunded if it fails"
    )


class BundleConfig(_Config):
    components: list[BundleComponent] = Field(min_length=1, max_length=20)

    @field_validator("components")
    @classmethod
    def _distinct(cls, value: list[BundleComponent]) -> list[BundleComponent]:
        codes = [c.sku for c in value]
        if len(set(codes)) != len(codes):
            raise ValueError("a component SKU is listed twice; raise its quantity instead")
        return value


class ManualConfig(_Config):
    instructions: str = Field(default="", max_length=2000, description="shown to the operator")


class DownloadConfig(_Config):
    file: str = Field(
        pattern=r"^[A-Za-z0-9_-]{8,32}$", description="a stored file's id (POST /api/admin/files)"
    )
    link_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60, description="a link lasts")
    max_downloads: int = Field(default=5, ge=1, le=1000, description="per unit bought")


class EmptyConfig(_Config):
    pass


class Procurement(_Config):
    """Buy card keys from a supplier when stock runs low, within a daily budget."""

    supplier: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="supplier account")
    product_id: str = Field(min_length=1, max_length=64, description="the supplier's card product")
    threshold: int = Field(ge=0, le=10**6, description="buy when fewer keys than this are left")
    batch_size: int = Field(ge=1, le=10_000, description="keys bought at a time")
    daily_budget_minor: int = Field(ge=0, le=10**12, description="spent per UTC day at most")
    unit_cost_minor: int = Field(ge=0, le=10**9, description="the expected price of one key")


class CardKeyConfig(_Config):
    procurement: Procurement | None = None


CONFIGS: dict[DeliveryKind, type[_Config]] = {
    DeliveryKind.CARD_KEY: CardKeyConfig,
    DeliveryKind.REUSABLE_KEY: ReusableConfig,
    DeliveryKind.TEXT: ReusableConfig,
    DeliveryKind.LICENSE: EmptyConfig,
    DeliveryKind.WEBHOOK: WebhookConfig,
    DeliveryKind.MANUAL: ManualConfig,
    DeliveryKind.RECHARGE: RechargeConfig,
    DeliveryKind.BUNDLE: BundleConfig,
    DeliveryKind.DOWNLOAD: DownloadConfig,
}


def check_config(kind: DeliveryKind, config: dict[str, Any] | None) -> dict[str, Any]:
    """The kind's settings, validated and with defaults filled in; a clear error otherwise."""
    try:
        model = CONFIGS[kind].model_validate(config or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "delivery_config"
        raise InvalidInput(
            f"{kind.value} setting {where}: {first['msg']}", where=f"delivery_config.{where}"
        ) from None
    return model.model_dump()


def config_of(kind: DeliveryKind, config: dict[str, Any] | None) -> Any:
    return CONFIGS[kind].model_validate(config or {})


# -- buyer input fields -----------------------------------------------------------------------
RULES = {
    "phone": r"^1[3-9][0-9]{9}$",  # a mainland mobile number
    "qq": r"^[1-9][0-9]{4,11}$",
    "email": r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,60}$",
    "account": r"^[\S ]{1,128}$",
    "text": r"^[^\x00-\x08\x0b-\x1f\x7f]{1,500}$",
}


class InputField(_Config):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    label: str = Field(min_length=1, max_length=100)
    rule: Literal["phone", "qq", "email", "account", "text", "pattern"] = "text"
    pattern: str | None = Field(default=None, max_length=200)
    required: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value


InputFields = Annotated[list[InputField], Field(max_length=10)]


def check_input_fields(fields: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if fields is None:
        return None
    checked = [InputField.model_validate(f) for f in fields]
    for f in checked:
        if f.rule == "pattern" and not f.pattern:
            raise InvalidInput(
                f"field {f.name}: rule 'pattern' needs a pattern", where="input_fields"
            )
    names = [f.name for f in checked]
    if len(set(names)) != len(names):
        raise InvalidInput("input field names must be distinct", where="input_fields")
    return [f.model_dump() for f in checked]


def validate_buyer_input(
    fields: list[dict[str, Any]] | None, given: dict[str, str] | None
) -> dict[str, str]:
    """The buyer's values for the SKU's fields: each required one present and matching its
    rule, nothing else accepted. Errors name the field (`buyer_input.<name>`)."""
    specs = [InputField.model_validate(f) for f in fields or []]
    values = dict(given or {})
    unknown = sorted(set(values) - {f.name for f in specs})
    if unknown:
        raise InvalidInput(
            f"unexpected input {', '.join(unknown)}; this item asks for "
            f"{', '.join(f.name for f in specs) or 'nothing'}",
            where=f"buyer_input.{unknown[0]}",
        )
    out: dict[str, str] = {}
    for f in specs:
        value = (values.get(f.name) or "").strip()
        if not value:
            if f.required:
                raise InvalidInput(f"{f.label} is required", where=f"buyer_input.{f.name}")
            continue
        pattern = f.pattern if f.rule == "pattern" else RULES[f.rule]
        if pattern is None or not re.fullmatch(pattern, value):
            raise InvalidInput(
                f"{f.label}: {value[:40]!r} is not a valid {f.rule}",
                where=f"buyer_input.{f.name}",
                slug="invalid-buyer-input",
            )
        out[f.name] = value
    return out
