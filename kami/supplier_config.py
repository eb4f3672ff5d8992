"""Supplier accounts as configured: built here for the composition root, and checked for
`kami suppliers check` with one clear line per problem. Secrets never appear in a message.

Accounts come from the accounts file (`KAMI_SUPPLIER_ACCOUNTS_FILE`, TOML): one table per
account; the table's name is the account's name, which SKUs' recharge routes and procurement
settings name and the callback URL carries (`/api/v1/suppliers/<name>/callback`). `protocol`
says which protocol (fulu, dayuanren, generic); `enabled = false` keeps an account configured
and checked but unused. Every option may be given as `<option>_file` (a path, relative to the
accounts file) or `<option>_env` (an environment variable); secret options only that way.
`notify_url`, where a protocol sends it with each order, defaults to the shop's callback URL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kami import suppliers
from kami.config import Settings
from kami.kernel import accounts_file
from kami.kernel.errors import InvalidInput


def supplier_specs() -> dict[str, suppliers.SupplierSpec]:
    return {spec.protocol: spec for spec in suppliers.SUPPLIER_SPECS}


def callback_url(public_url: str, name: str) -> str:
    return f"{public_url.rstrip('/')}/api/v1/suppliers/{name}/callback"


@dataclass
class SupplierCheck:
    """One account: where it came from, what was wrong, the adapter when it is sound."""

    name: str
    protocol: str = "?"
    source: str = ""
    enabled: bool = True
    callback_url: str = ""
    supplier: suppliers.Supplier | None = None
    errors: list[str] = field(default_factory=list)


def _account(
    name: str,
    table: Mapping[str, Any],
    source: str,
    base_dir: Path,
    public_url: str,
    environ: Mapping[str, str],
) -> SupplierCheck:
    check = SupplierCheck(name, source=source, callback_url=callback_url(public_url, name))
    specs = supplier_specs()
    protocol = table.get("protocol")
    check.enabled = accounts_file.check_enabled(table, check.errors)
    accounts_file.check_name(name, check.errors)
    if not isinstance(protocol, str) or protocol not in specs:
        check.errors.append(
            f"protocol: {str(protocol)[:40]!r} is not one of {', '.join(sorted(specs))}"
        )
        return check
    check.protocol = protocol
    spec = specs[protocol]
    rules = accounts_file.OptionRules(
        f"protocol {spec.protocol}",
        spec.required,
        spec.optional,
        spec.secrets,
        reserved=("protocol", "enabled"),
    )
    options = accounts_file.resolve_options(
        rules, table, check.errors, base_dir=base_dir, environ=environ
    )
    if check.errors:
        return check
    if "notify_url" in spec.optional and "notify_url" not in options:
        options["notify_url"] = check.callback_url
    try:
        check.supplier = spec.build(name, options)
    except ValueError as exc:  # the adapters' messages start with the option, hold no secret
        check.errors.append(str(exc))
    return check


def _from_file(path: Path, public_url: str, environ: Mapping[str, str]) -> list[SupplierCheck]:
    where = f"supplier accounts file {path}"
    tables, problem = accounts_file.read_tables(path)
    if problem is not None:
        return [SupplierCheck(str(path), source=where, errors=[problem])]
    checks = []
    for name, table in tables:
        if not isinstance(table, dict):
            checks.append(
                SupplierCheck(name, source=where, errors=[f"[{name}] must be a table of options"])
            )
            continue
        checks.append(_account(name, table, f"{where} [{name}]", path.parent, public_url, environ))
    return checks


def check_suppliers(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[SupplierCheck]:
    """Every configured supplier account, each with its problems (none: ready to use)."""
    if settings.supplier_accounts_file is None:
        return []
    env = os.environ if environ is None else environ
    return _from_file(settings.supplier_accounts_file, settings.base_url, env)


def configured_suppliers(settings: Settings) -> list[suppliers.Supplier]:
    """The enabled accounts; a misconfigured one stops start-up with its first problem."""
    found = []
    for check in check_suppliers(settings):
        if check.errors or check.supplier is None:
            problem = check.errors[0] if check.errors else "not built"
            raise InvalidInput(
                f"supplier account {check.name} ({check.source}): {problem}; "
                "run `kami suppliers check`",
                where=check.name,
                slug="supplier-config",
            )
        if check.enabled:
            found.append(check.supplier)
    return found
