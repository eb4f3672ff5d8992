"""Accounts files: TOML tables of string options, one table per account, for payment channels
and suppliers alike. Any option may be given as `<option>_file` (a path, relative to the file)
or `<option>_env` (an environment variable); an option the caller names secret may only be
given that way, so the file itself can hold no secret. Every problem is one clear line that
names the option and never contains a secret's value."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
NAME_RULE = "1–32 of a-z, 0-9, - and _, starting with a letter or digit"
MAX_OPTION_FILE = 64 * 1024


@dataclass(frozen=True, slots=True)
class OptionRules:
    """What one kind of account takes: `label` names the kind in messages ("channel stripe")."""

    label: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    secrets: frozenset[str]
    reserved: tuple[str, ...] = ("enabled",)  # table keys that are not options


def read_tables(path: Path) -> tuple[list[tuple[str, Any]], str | None]:
    """The file's (name, table) pairs in order, or the one problem that stops reading it."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [], "the file does not exist"
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # tomllib names the line and column; the text itself is never echoed.
        return [], f"not valid TOML: {exc}"
    return list(document.items()), None


def check_name(name: str, errors: list[str], reserved: frozenset[str] = frozenset()) -> None:
    if not ACCOUNT_NAME.match(name) or name in reserved:
        taken = f", and not {', '.join(repr(r) for r in sorted(reserved))}" if reserved else ""
        errors.append(f"account name {name[:40]!r}: {NAME_RULE}{taken}")


def check_enabled(table: Mapping[str, Any], errors: list[str]) -> bool:
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append("enabled: must be true or false")
        return True
    return enabled


def _text(key: str, value: Any, errors: list[str]) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    errors.append(f"{key}: must be a string")
    return None


def _read_file(key: str, text: str, base_dir: Path | None, errors: list[str]) -> str | None:
    path = Path(text).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        if path.stat().st_size > MAX_OPTION_FILE:
            errors.append(f"{key}: {path} is larger than 64 KiB")
            return None
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        errors.append(f"{key}: {path} does not exist")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "unreadable"
        errors.append(f"{key}: {path} {reason}")
    return None


def resolve_options(
    rules: OptionRules,
    table: Mapping[str, Any],
    errors: list[str],
    *,
    base_dir: Path | None,
    environ: Mapping[str, str],
    inline_secrets: bool = False,
) -> dict[str, str]:
    """The account's options as plain strings, read from files and variables where so given.
    `inline_secrets` allows a secret written as a plain value (an account that comes from the
    environment, where that value is already a variable's)."""
    known = set(rules.required) | set(rules.optional)
    options: dict[str, str] = {}
    for key, value in table.items():
        if key in rules.reserved:
            continue
        option, _, how = key.rpartition("_")
        if how not in ("file", "env") or option not in known:
            option, how = key, "inline"
        if option not in known:
            errors.append(
                f"unknown option {key!r} for {rules.label} (known: {', '.join(sorted(known))})"
            )
            continue
        if option in options:
            errors.append(f"{option} is given twice")
            continue
        text = _text(key, value, errors)
        if text is None:
            continue
        if how == "inline" and option in rules.secrets and not inline_secrets:
            errors.append(
                f"{option}: a secret must not be written in the accounts file; "
                f'use {option}_file = "path" or {option}_env = "VARIABLE"'
            )
            continue
        if how == "env":
            if text not in environ:
                errors.append(f"{key}: environment variable {text} is not set")
                continue
            resolved: str | None = environ[text].strip()
        elif how == "file":
            resolved = _read_file(key, text, base_dir, errors)
        else:
            resolved = text
        if resolved is None:
            continue
        if not resolved:
            errors.append(f"{option} is empty")
            continue
        options[option] = resolved
    said = list(errors)  # an option already reported is not "missing" as well
    errors += [
        f"{name} is missing"
        for name in rules.required
        if name not in options and not any(e.startswith(name) for e in said)
    ]
    return options
