"""Payment channels as configured: built here for the composition root, and checked for
`kami gateways check` with one clear line per problem. Secrets never appear in a message."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

from kami import payments
from kami.config import Settings
from kami.kernel.errors import InvalidInput


@dataclass
class ChannelCheck:
    name: str
    gateway: payments.Gateway | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _stripe(settings: Settings) -> ChannelCheck | None:
    c = settings.stripe
    given = {
        "KAMI_STRIPE__SECRET_KEY": c.secret_key,
        "KAMI_STRIPE__WEBHOOK_SECRET": c.webhook_secret,
    }
    if not any(given.values()):
        return None
    check = ChannelCheck("stripe")
    check.errors += [f"{name} is missing" for name, value in given.items() if not value]
    if c.secret_key and c.webhook_secret:
        try:
            check.gateway = payments.StripeGateway(
                c.secret_key.get_secret_value(),
                c.webhook_secret.get_secret_value(),
                settings.base_url,
                api_base=c.api_base,
                query_lookback=timedelta(minutes=settings.order_ttl_minutes) + timedelta(days=1),
            )
        except ValueError as exc:
            check.errors.append(str(exc))
        if c.secret_key.get_secret_value().startswith("sk_test_"):
            check.warnings.append("a test-mode key (sk_test_…): no real money moves")
    return check


def _epay(settings: Settings) -> ChannelCheck | None:
    c = settings.epay
    given = {"KAMI_EPAY__BASE_URL": c.base_url, "KAMI_EPAY__PID": c.pid, "KAMI_EPAY__KEY": c.key}
    if not any(given.values()):
        return None
    check = ChannelCheck("epay")
    check.errors += [f"{name} is missing" for name, value in given.items() if not value]
    if c.base_url and c.pid and c.key:
        try:
            check.gateway = payments.EpayGateway(
                c.base_url,
                c.pid,
                c.key.get_secret_value(),
                settings.base_url,
                pay_type=c.pay_type,
            )
        except ValueError as exc:
            check.errors.append(str(exc))
        if urlsplit(c.base_url).scheme != "https":
            check.warnings.append("KAMI_EPAY__BASE_URL is not https: the query sends the key in it")
    return check


def check_channels(settings: Settings) -> list[ChannelCheck]:
    """Every configured channel but the sandbox (which needs the database for its books)."""
    return [c for c in (_stripe(settings), _epay(settings)) if c is not None]


def configured_gateways(settings: Settings) -> list[payments.Gateway]:
    """The channels to register; a misconfigured one stops start-up with its first problem."""
    gateways = []
    for check in check_channels(settings):
        if check.errors or check.gateway is None:
            raise InvalidInput(
                f"payment channel {check.name}: {check.errors[0]}; run `kami gateways check`",
                where=check.name,
                slug="gateway-config",
            )
        gateways.append(check.gateway)
    return gateways
