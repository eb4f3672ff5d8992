"""Ed25519-signed answers, and the check a seller's software runs on them offline.

The signing key is a 32-byte seed kept as a vault named secret (wrapped by the master key like
every data key), so every server process signs with the same key and a database restore keeps
it. Clients pin the public key (`GET /api/v1/licenses/public-key`) and verify each answer's
signature over the canonical JSON bytes of its payload: refusals are signed too, so a client can
trust a "no" without a network round trip of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

ALGORITHM = "Ed25519"


def canonical(payload: dict[str, Any]) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id_of(raw_public_key: bytes) -> str:
    """A short name for a public key, so a client holding several can pick the right one."""
    return "ed25519:" + hashlib.sha256(raw_public_key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SignedAnswer:
    payload: dict[str, Any]
    signature: str  # standard base64 of the 64-byte signature
    key_id: str

    def body(self) -> dict[str, Any]:
        return {"payload": self.payload, "signature": self.signature, "key_id": self.key_id}


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: str
    algorithm: str
    pem: str
    raw_base64: str


class Signer:
    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._key.public_key()
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id_of(raw)
        self.public_key = PublicKey(
            key_id=self.key_id,
            algorithm=ALGORITHM,
            pem=public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode(),
            raw_base64=base64.b64encode(raw).decode(),
        )

    def sign(self, payload: dict[str, Any]) -> SignedAnswer:
        signature = self._key.sign(canonical(payload))
        return SignedAnswer(payload, base64.b64encode(signature).decode(), self.key_id)


_signers: dict[bytes, Signer] = {}
_signers_lock = threading.Lock()


def signer_for(seed: bytes) -> Signer:
    """One Signer per seed per process (deriving the public key costs a scalar multiplication)."""
    with _signers_lock:
        signer = _signers.get(seed)
        if signer is None:
            signer = _signers[seed] = Signer(seed)
        return signer


# -- the client's side -------------------------------------------------------------------------
class SignatureInvalid(ValueError):
    """The answer was not signed by the given key, or was altered after signing."""


def _public_key(key: Ed25519PublicKey | str | bytes) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    data = key.encode() if isinstance(key, str) else key
    if data.lstrip().startswith(b"-----BEGIN"):
        loaded = load_pem_public_key(data)
        if not isinstance(loaded, Ed25519PublicKey):
            raise SignatureInvalid("the PEM key is not an Ed25519 public key")
        return loaded
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(data, validate=True))
    except ValueError:
        raise SignatureInvalid("the public key is neither PEM nor 32 bytes of base64") from None


def verify_offline(
    public_key: Ed25519PublicKey | str | bytes,
    response: dict[str, Any] | str | bytes,
    *,
    nonce: str | None = None,
    machine_id: str | None = None,
    license_key: str | None = None,
) -> dict[str, Any]:
    """What a seller's software does with an answer (2xx or a refusal alike): check the
    signature over the canonical payload with the pinned public key (PEM, base64 of the 32 raw
    bytes, or a key object), then that the answer is about this request. Returns the payload;
    raises SignatureInvalid otherwise. Whether to run is then `payload["ok"]`.

    Needs only `cryptography` and the standard library, so it can be copied into a client."""
    doc = json.loads(response) if isinstance(response, str | bytes) else response
    try:
        payload, signature = doc["payload"], base64.b64decode(doc["signature"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise SignatureInvalid("the answer has no payload and signature") from None
    if not isinstance(payload, dict):
        raise SignatureInvalid("the payload is not an object")
    key = _public_key(public_key)
    try:
        key.verify(signature, canonical(payload))
    except InvalidSignature:
        raise SignatureInvalid("the signature does not match the payload and key") from None
    if nonce is not None and payload.get("nonce") != nonce:
        raise SignatureInvalid("the answer is for another request (nonce differs)")
    if machine_id is not None and payload.get("machine_id") != machine_id:
        raise SignatureInvalid("the answer is for another machine")
    if license_key is not None and payload.get("key_sha256") != key_digest(license_key):
        raise SignatureInvalid("the answer is for another license key")
    return payload


def key_digest(license_key: str) -> str:
    """SHA-256 (hex) of a key's canonical form (upper case, no separators): ties an answer to
    the key it is about without repeating the key. Same rule as the server's normalisation."""
    canonical_key = license_key.strip().upper().translate(str.maketrans("", "", "- \t"))
    return hashlib.sha256(canonical_key.encode()).hexdigest()
