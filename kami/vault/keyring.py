"""Master keys (key-encryption keys) and where they come from.

Forms accepted, in `KAMI_MASTER_KEY` or one entry per line in the key file:
`<base64 of 32 bytes>` (version 1) or `<version>:<base64 of 32 bytes>`. The highest version wraps
new data keys; older versions stay readable until every data key has been re-wrapped
(`kami vault rotate`). The key material never appears in errors or logs.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from kami.vault.errors import KeyringError

log = logging.getLogger("kami.vault")

BACKUP_WARNING = (
    "A new master key was generated at {path}. BACK IT UP NOW and keep it apart from the database: "
    "without it every stored key is unreadable, and anyone holding both can read them."
)


@dataclass
class Keyring:
    keys: dict[int, bytes]
    path: Path | None = None
    generated: bool = False
    _from_env: bool = field(default=False, repr=False)

    @property
    def current_version(self) -> int:
        return max(self.keys)

    def key(self, version: int) -> bytes:
        if version not in self.keys and self.path is not None and not self._from_env:
            # Another process may have rotated: the file is the source of truth, re-read it once.
            self.keys = _read_file(self.path)
        try:
            return self.keys[version]
        except KeyError:
            raise KeyringError(
                f"master key version {version} is needed but not in the keyring "
                f"(have versions {sorted(self.keys)})",
                where="KAMI_MASTER_KEY" if self._from_env else str(self.path),
            ) from None

    def add_generated_version(self) -> int:
        """Create the next master key version and persist it to the key file."""
        if self.path is None or self._from_env:
            raise KeyringError(
                "the master key comes from KAMI_MASTER_KEY: add the new version there "
                "(as 'N:<base64>' next to the old one) on every process, then run rotate again",
                where="KAMI_MASTER_KEY",
            )
        version = self.current_version + 1
        self.keys[version] = secrets.token_bytes(32)
        _write_file(self.path, self.keys)
        return version


def _parse_entries(text: str, where: str) -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    entries = [e.strip() for e in text.replace(",", "\n").splitlines()]
    for n, entry in enumerate(entries, start=1):
        if not entry or entry.startswith("#"):
            continue
        version_text, sep, material = entry.partition(":")
        if not sep:
            version_text, material = "1", entry
        try:
            version = int(version_text)
            key = base64.b64decode(material.strip(), validate=True)
        except (ValueError, binascii.Error):
            raise KeyringError(
                f"entry {n} is not '<version>:<base64>' or '<base64>'", where=where
            ) from None
        if version < 1 or len(key) != 32:
            raise KeyringError(
                f"entry {n} must be a positive version and 32 bytes of key (got {len(key)} bytes)",
                where=where,
            )
        if version in keys:
            raise KeyringError(f"entry {n} repeats version {version}", where=where)
        keys[version] = key
    if not keys:
        raise KeyringError("no master key found", where=where)
    return keys


def _read_file(path: Path) -> dict[int, bytes]:
    return _parse_entries(path.read_text("ascii"), str(path))


def _write_file(path: Path, keys: dict[int, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "# Kami master keys: <version>:<base64>. Back this file up; never commit it.\n"
    body += "".join(
        f"{v}:{base64.b64encode(k).decode()}\n" for v, k in sorted(keys.items(), reverse=True)
    )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_keyring(env_value: str | None, path: Path, *, create: bool) -> Keyring:
    """Master keys from the environment, else from the key file, generating it if allowed."""
    if env_value:
        return Keyring(_parse_entries(env_value, "KAMI_MASTER_KEY"), _from_env=True)
    if path.exists():
        return Keyring(_read_file(path), path=path)
    if not create:
        raise KeyringError(
            "no master key: set KAMI_MASTER_KEY or restore the key file", where=str(path)
        )
    keys = {1: secrets.token_bytes(32)}
    _write_file(path, keys)
    log.warning(BACKUP_WARNING.format(path=path))
    return Keyring(keys, path=path, generated=True)
