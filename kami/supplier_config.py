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
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kami import suppliers
from kami.config import Settings
from kami.kernel.errors import InvalidInput

ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_MAX_SECRET_FILE = 64 * 1024


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


def _text(check: SupplierCheck, key: str, value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    check.errors.append(f"{key}: must be a string")
    return None


def _read_file(check: SupplierCheck, key: str, text: str, base_dir: Path) -> str | None:
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        if path.stat().st_size > _MAX_SECRET_FILE:
            check.errors.append(f"{key}: {path} is larger than 64 KiB")
            return None
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        check.errors.append(f"{key}: {path} does not exist")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "unreadable"
        check.errors.append(f"{key}: {path} {reason}")
    return None


def _resolve(
    check: SupplierCheck,
    spec: suppliers.SupplierSpec,
    table: Mapping[str, Any],
    base_dir: Path,
    environ: Mapping[str, str],
) -> dict[str, str]:
    """The account's options as plain strings, read from files and variables where so given."""
    known = set(spec.required) | set(spec.optional)
    options: dict[str, str] = {}
    for key, value in table.items():
        if key in ("protocol", "enabled"):
            continue
        option, _, how = key.rpartition("_")
        if how not in ("file", "env") or option not in known:
            option, how = key, "inline"
        if option not in known:
            check.errors.append(
                f"unknown option {key!r} for protocol {spec.protocol} "
                f"(known: {', '.join(sorted(known))})"
            )
            continue
        if option in options:
            check.errors.append(f"{option} is given twice")
            continue
        text = _text(check, key, value)
        if text is None:
            continue
        if how == "inline" and option in spec.secrets:
            check.errors.append(
                f"{option}: a secret must not be written in the accounts file; "
                f'use {option}_file = "path" or {option}_env = "VARIABLE"'
            )
            continue
        if how == "env":
            if text not in environ:
                check.errors.append(f"{key}: environment variable {text} is not set")
                continue
            resolved: str | None = environ[text].strip()
        elif how == "file":
            resolved = _read_file(check, key, text, base_dir)
        else:
            resolved = text
        if resolved is None:
            continue
        if not resolved:
            check.errors.append(f"{option} is empty")
            continue
        options[option] = resolved
    said = list(check.errors)  # an option already reported is not "missing" as well
    check.errors += [
        f"{name} is missing"
        for name in spec.required
        if name not in options and not any(e.startswith(name) for e in said)
    ]
    return options


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
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        check.errors.append("enabled: must be true or false")
    else:
        check.enabled = enabled
    if not ACCOUNT_NAME.match(name):
        check.errors.append(
            f"account name {name[:40]!r}: 1–32 of a-z, 0-9, - and _, starting with a letter or "
            "digit"
        )
    if not isinstance(protocol, str) or protocol not in specs:
        check.errors.append(
            f"protocol: {str(protocol)[:40]!r} is not one of {', '.join(sorted(specs))}"
        )
        return check
    check.protocol = protocol
    spec = specs[protocol]
    options = _resolve(check, spec, table, base_dir, environ)
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
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [SupplierCheck(str(path), source=where, errors=["the file does not exist"])]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # tomllib names the line and column; the text itself is never echoed.
        return [SupplierCheck(str(path), source=where, errors=[f"not valid TOML: {exc}"])]
    checks = []
    for name, table in document.items():
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
