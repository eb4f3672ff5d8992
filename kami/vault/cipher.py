"""AES-256-GCM envelope encryption and keyed fingerprints.

Each import batch gets its own random data key (DEK); the DEK is stored only wrapped by the
current master key version. A key's ciphertext is bound to its fingerprint as associated data, so
ciphertexts cannot be swapped between rows unnoticed. Fingerprints are HMAC-SHA256 under a named
secret that is itself a wrapped data key: de-duplication and "where did this key go" never decrypt
the pool, and re-wrapping (rotation) leaves fingerprints unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kami.kernel.clock import utcnow
from kami.vault.errors import KeyringError
from kami.vault.keyring import Keyring
from kami.vault.models import DataKey

log = logging.getLogger("kami.vault")

NONCE = 12
SEP = "\x00"  # between card and password inside the plaintext; refused in imported text


@dataclass(frozen=True, slots=True)
class Secret:
    card: str
    password: str | None = None

    def encode(self) -> bytes:
        return (self.card if self.password is None else self.card + SEP + self.password).encode()

    @staticmethod
    def decode(raw: bytes) -> Secret:
        card, sep, password = raw.decode().partition(SEP)
        return Secret(card, password if sep else None)


def _aad(version: int) -> bytes:
    return b"kami-dek-v%d" % version


class VaultCipher:
    """Holds the keyring and a cache of unwrapped data keys; safe to share between threads."""

    def __init__(self, keyring: Keyring, *, cache_size: int = 4096) -> None:
        self.keyring = keyring
        self._cache: OrderedDict[int, AESGCM] = OrderedDict()
        self._named: dict[str, bytes] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    # -- wrapping ---------------------------------------------------------------------------
    def wrap(self, dek: bytes, version: int | None = None) -> tuple[int, bytes]:
        version = self.keyring.current_version if version is None else version
        nonce = os.urandom(NONCE)
        return version, nonce + AESGCM(self.keyring.key(version)).encrypt(nonce, dek, _aad(version))

    def unwrap(self, version: int, wrapped: bytes) -> bytes:
        try:
            return AESGCM(self.keyring.key(version)).decrypt(
                wrapped[:NONCE], wrapped[NONCE:], _aad(version)
            )
        except InvalidTag:
            raise KeyringError(
                f"master key version {version} does not open this data key: wrong master key?",
                where="KAMI_MASTER_KEY",
            ) from None

    def new_data_key(self, session: Session, name: str | None = None) -> int:
        dek = AESGCM.generate_key(bit_length=256)
        version, wrapped = self.wrap(dek)
        row = DataKey(name=name, master_version=version, wrapped=wrapped, created_at=utcnow())
        session.add(row)
        session.flush()
        with self._lock:
            self._remember(row.id, AESGCM(dek))
        return row.id

    def _remember(self, key_id: int, aead: AESGCM) -> None:
        self._cache[key_id] = aead
        self._cache.move_to_end(key_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _aead(self, session: Session, data_key_id: int) -> AESGCM:
        with self._lock:
            aead = self._cache.get(data_key_id)
        if aead is not None:
            return aead
        row = session.get(DataKey, data_key_id)
        if row is None:
            raise KeyringError(f"data key {data_key_id} is missing", where="vault_data_key")
        aead = AESGCM(self.unwrap(row.master_version, row.wrapped))
        with self._lock:
            self._remember(data_key_id, aead)
        return aead

    # -- named secrets ----------------------------------------------------------------------
    def cached_secret(self, name: str) -> bytes | None:
        return self._named.get(name)

    def named_secret(self, session: Session, name: str) -> bytes:
        """A stable random secret kept wrapped in the database, created on first use."""
        cached = self._named.get(name)
        if cached is not None:
            return cached
        row = session.execute(select(DataKey).where(DataKey.name == name)).scalar_one_or_none()
        if row is None:
            # Created in its own savepoint so a concurrent creator wins cleanly.
            try:
                with session.begin_nested():
                    self.new_data_key(session, name)
            except IntegrityError:  # lost the race: the other creator's row is the secret
                log.debug("named secret %s was created concurrently", name)
            row = session.execute(select(DataKey).where(DataKey.name == name)).scalar_one()
        secret = self.unwrap(row.master_version, row.wrapped)
        self._named[name] = secret
        return secret

    # -- items ------------------------------------------------------------------------------
    def fingerprint(self, fp_key: bytes, secret: Secret) -> bytes:
        return hmac.digest(fp_key, secret.encode(), "sha256")

    def fingerprinter(self, fp_key: bytes) -> Callable[[bytes], bytes]:
        """`fingerprint` for many items: takes `Secret.encode()` bytes, keys the HMAC once."""
        keyed = hmac.new(fp_key, digestmod=hashlib.sha256)

        def fingerprint(plaintext: bytes) -> bytes:
            h = keyed.copy()
            h.update(plaintext)
            return h.digest()

        return fingerprint

    def encrypt(self, aead: AESGCM, secret: Secret, fingerprint: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + aead.encrypt(nonce, secret.encode(), fingerprint)

    def encrypt_many(
        self, aead: AESGCM, plaintexts: Sequence[bytes], fingerprints: Sequence[bytes]
    ) -> list[bytes]:
        """`encrypt` for many items (`Secret.encode()` bytes): one random nonce each, drawn in
        one read of the system's random source."""
        nonces = os.urandom(NONCE * len(plaintexts))
        seal = aead.encrypt
        out = []
        for i, (plaintext, fingerprint) in enumerate(zip(plaintexts, fingerprints, strict=True)):
            nonce = nonces[i * NONCE : (i + 1) * NONCE]
            out.append(nonce + seal(nonce, plaintext, fingerprint))
        return out

    def aead_for(self, session: Session, data_key_id: int) -> AESGCM:
        return self._aead(session, data_key_id)

    def decrypt(
        self, session: Session, data_key_id: int, ciphertext: bytes, fingerprint: bytes
    ) -> Secret:
        aead = self._aead(session, data_key_id)
        try:
            raw = aead.decrypt(ciphertext[:NONCE], ciphertext[NONCE:], fingerprint)
        except InvalidTag:
            raise KeyringError(
                "a stored key failed its integrity check (ciphertext altered or moved)",
                where="vault_key",
            ) from None
        return Secret.decode(raw)


_ALNUM = re.compile(r"[^\W_]")  # exactly the characters for which str.isalnum() is true
# The first n alphanumeric characters and whatever precedes them, for n = 1..4.
_LEADING = {n: re.compile(rf"(?:[\W_]*[^\W_]){{{n}}}") for n in range(1, 5)}
_ASCII_STARS = str.maketrans(dict.fromkeys((c for c in map(chr, range(128)) if c.isalnum()), "*"))


def mask(secret: Secret) -> str:
    """`ABCD-EFGH-WXYZ` → `ABCD-****-WXYZ`: at most a third of the characters, four at each end."""
    card = secret.card
    if card.isascii():  # the common case, without a regex pass
        stars = card.translate(_ASCII_STARS)
        alnum = stars.count("*") - card.count("*")
    else:
        stars = _ALNUM.sub("*", card)
        alnum = sum(map(str.isalnum, card))
    show = min(4, alnum // 3)
    if show:
        head = _LEADING[show].match(card)
        tail = _LEADING[show].match(card[::-1])
        assert head is not None and tail is not None  # `show` is at most a third of `alnum`
        start, end = head.end(), len(card) - tail.end()
        masked = card[:start] + stars[start:end] + card[end:]
    else:
        masked = stars
    if len(masked) > 64:
        masked = masked[:30] + "…" + masked[-30:]
    return masked if secret.password is None else masked + " / ******"
