"""Payment accounts as configured: built here for the composition root, and checked for
`kami gateways check` with one clear line per problem. Secrets never appear in a message.

Accounts come from two places:

- the accounts file (`KAMI_PAYMENT_ACCOUNTS_FILE`, TOML): one table per merchant account, any
  number per channel; the table's name is the account's name, which is the gateway name orders
  and notification URLs use (`/api/v1/payments/<name>/notify`). `channel` says which protocol;
  `enabled = false` keeps an account configured and checked but out of the shop. Every option
  may be given as `<option>_file` (a path, relative to the accounts file) or `<option>_env` (an
  environment variable); a channel's secret options may only be given that way.
- the environment, for one account per channel without a file: `KAMI_STRIPE__*` (named
  "stripe") and `KAMI_EPAY__*` (named "epay").
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kami import payments
from kami.config import Settings
from kami.kernel import accounts_file
from kami.kernel.errors import InvalidInput

RESERVED_NAMES = frozenset({"sandbox"})


def channel_specs() -> dict[str, payments.ChannelSpec]:
    return {spec.channel: spec for spec in payments.CHANNEL_SPECS}


@dataclass
class ChannelCheck:
    """One account: where it came from, what was wrong with it, the gateway when it is sound."""

    name: str
    channel: str = "?"
    source: str = ""
    enabled: bool = True
    gateway: payments.Gateway | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _account(
    name: str,
    table: Mapping[str, Any],
    source: str,
    base_dir: Path | None,
    public_url: str,
    environ: Mapping[str, str],
) -> ChannelCheck:
    check = ChannelCheck(name, source=source)
    specs = channel_specs()
    channel = table.get("channel")
    check.enabled = accounts_file.check_enabled(table, check.errors)
    accounts_file.check_name(name, check.errors, RESERVED_NAMES)
    if not isinstance(channel, str) or channel not in specs:
        check.errors.append(
            f"channel: {str(channel)[:40]!r} is not one of {', '.join(sorted(specs))}"
        )
        return check
    check.channel = channel
    spec = specs[channel]
    rules = accounts_file.OptionRules(
        f"channel {spec.channel}",
        spec.required,
        spec.optional,
        spec.secrets,
        reserved=("channel", "enabled"),
    )
    options = accounts_file.resolve_options(
        rules,
        table,
        check.errors,
        base_dir=base_dir,
        environ=environ,
        inline_secrets=base_dir is None,
    )
    if check.errors:
        return check
    try:
        check.gateway = spec.build(name, options, public_url)
    except ValueError as exc:
        check.errors.append(str(exc))
    if spec.warnings is not None:
        check.warnings += spec.warnings(options)
    return check


def _from_environment(settings: Settings, environ: Mapping[str, str]) -> list[ChannelCheck]:
    found: list[ChannelCheck] = []
    stripe = settings.stripe
    if stripe.secret_key or stripe.webhook_secret:
        table: dict[str, str] = {"channel": "stripe", "api_base": stripe.api_base}
        if stripe.secret_key:
            table["secret_key"] = stripe.secret_key.get_secret_value()
        if stripe.webhook_secret:
            table["webhook_secret"] = stripe.webhook_secret.get_secret_value()
        found.append(_account("stripe", table, "KAMI_STRIPE__*", None, settings.base_url, environ))
    epay = settings.epay
    if epay.base_url or epay.pid or epay.key:
        table = {"channel": "epay"}
        for option, value in (("base_url", epay.base_url), ("pid", epay.pid)):
            if value:
                table[option] = value
        if epay.key:
            table["key"] = epay.key.get_secret_value()
        if epay.pay_type:
            table["pay_type"] = epay.pay_type
        if epay.refund:
            table["refund"] = "true"
        found.append(_account("epay", table, "KAMI_EPAY__*", None, settings.base_url, environ))
    for check in found:  # name the variables the way the seller wrote them
        prefix = f"KAMI_{check.name.upper()}__"
        check.errors = [_env_name(e, prefix) for e in check.errors]
    return found


def _env_name(message: str, prefix: str) -> str:
    option, sep, rest = message.partition(" ")
    if re.fullmatch(r"[a-z_]+:?", option):
        return (
            f"{prefix}{option.rstrip(':').upper()}{':' if option.endswith(':') else ''}{sep}{rest}"
        )
    return message


def _from_file(path: Path, public_url: str, environ: Mapping[str, str]) -> list[ChannelCheck]:
    where = f"accounts file {path}"
    tables, problem = accounts_file.read_tables(path)
    if problem is not None:
        return [ChannelCheck(str(path), source=where, errors=[problem])]
    checks = []
    for name, table in tables:
        if not isinstance(table, dict):
            checks.append(
                ChannelCheck(name, source=where, errors=[f"[{name}] must be a table of options"])
            )
            continue
        checks.append(_account(name, table, f"{where} [{name}]", path.parent, public_url, environ))
    return checks


def check_channels(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[ChannelCheck]:
    """Every configured account but the sandbox (which needs the database for its books)."""
    env = os.environ if environ is None else environ
    checks = _from_environment(settings, env)
    if settings.payment_accounts_file is not None:
        checks += _from_file(settings.payment_accounts_file, settings.base_url, env)
    seen: dict[str, str] = {}
    for check in checks:
        if check.name in seen:
            check.errors.append(f"account name {check.name!r} is also used by {seen[check.name]}")
        seen.setdefault(check.name, check.source)
    return checks


def configured_gateways(settings: Settings) -> list[payments.Gateway]:
    """The enabled accounts; a misconfigured one stops start-up with its first problem."""
    gateways = []
    for check in check_channels(settings):
        if check.errors or check.gateway is None:
            problem = check.errors[0] if check.errors else "not built"
            raise InvalidInput(
                f"payment account {check.name} ({check.source}): {problem}; "
                "run `kami gateways check`",
                where=check.name,
                slug="gateway-config",
            )
        if check.enabled:
            gateways.append(check.gateway)
    return gateways
