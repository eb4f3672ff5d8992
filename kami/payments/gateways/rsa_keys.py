"""RSA keys as merchants paste them from a channel's console, and SHA256withRSA signatures.

Alipay, WeChat Pay and 易支付 V2 all sign SHA256withRSA (PKCS#1 v1.5) with base64 signatures, and
all take keys as text: PEM (PKCS#1 `RSA PRIVATE KEY`, PKCS#8 `PRIVATE KEY`, SPKI `PUBLIC KEY`,
`CERTIFICATE`) or the bare base64 of the DER that consoles show. What each channel accepts, and the
words of its errors, differ; `KeyWording` holds a channel's words and the loaders its choices.

A loader's error is a ValueError that starts with the option's name and never holds any of the
text it was given, so it can go to a log or a terminal (invariant 5): the parsers' own exceptions,
which may quote the input, are dropped.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

_PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm)


@dataclass(frozen=True, slots=True)
class KeyWording:
    """A channel's words for what is wrong with a key, each following "<option>: "."""

    unreadable: str  # no key could be read from the text
    not_rsa: str | None = None  # a key, but not RSA or shorter than min_bits (default: unreadable)
    other_half: str | None = None  # the text names the other kind of key (checked before parsing)
    encrypted: str | None = None  # private keys: refuse an ENCRYPTED PEM with these words
    certificate: str | None = None  # public keys: refuse any CERTIFICATE with these words


def _der(text: str) -> bytes:
    """The bytes of bare base64 key text (white space ignored); ValueError when it is not."""
    return base64.b64decode("".join(text.split()), validate=True)


def load_private_key(
    text: str,
    option: str,
    wording: KeyWording,
    *,
    bare_base64: bool = True,
    min_bits: int = 0,
) -> RSAPrivateKey:
    """An unencrypted RSA private key from PEM (PKCS#1 or PKCS#8) or, with `bare_base64`, the
    base64 of its DER; without `bare_base64` all text is read as PEM."""
    text = text.strip()
    if wording.other_half and ("PUBLIC KEY" in text or "CERTIFICATE" in text):
        raise ValueError(f"{option}: {wording.other_half}")
    if wording.encrypted and "ENCRYPTED" in text:
        raise ValueError(f"{option}: {wording.encrypted}")
    try:
        if text.startswith("-----BEGIN") or not bare_base64:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = serialization.load_der_private_key(_der(text), password=None)
    except _PARSE_ERRORS:
        raise ValueError(f"{option}: {wording.unreadable}") from None
    if not isinstance(key, RSAPrivateKey) or key.key_size < min_bits:
        raise ValueError(f"{option}: {wording.not_rsa or wording.unreadable}")
    return key


def load_public_key(
    text: str,
    option: str,
    wording: KeyWording,
    *,
    bare_base64: bool = True,
    certificates: bool = False,
    min_bits: int = 0,
) -> RSAPublicKey:
    """An RSA public key from PEM (SPKI or PKCS#1), with `certificates` the key of one PEM
    certificate, and with `bare_base64` the base64 of an SPKI DER; without it all is PEM."""
    text = text.strip()
    if wording.other_half and "PRIVATE KEY" in text:
        raise ValueError(f"{option}: {wording.other_half}")
    if wording.certificate and "CERTIFICATE" in text:
        raise ValueError(f"{option}: {wording.certificate}")
    try:
        key: object
        if certificates and text.startswith("-----BEGIN CERTIFICATE"):
            key = x509.load_pem_x509_certificate(text.encode()).public_key()
        elif text.startswith("-----BEGIN") or not bare_base64:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(_der(text))
    except _PARSE_ERRORS:
        raise ValueError(f"{option}: {wording.unreadable}") from None
    if not isinstance(key, RSAPublicKey) or key.key_size < min_bits:
        raise ValueError(f"{option}: {wording.not_rsa or wording.unreadable}")
    return key


def is_public_half(public: RSAPublicKey, private: RSAPrivateKey) -> bool:
    """Whether `public` is the pair of `private`: a merchant's own key pasted where the
    channel's belongs, which would make every "channel" signature one the shop could forge."""
    return public.public_numbers() == private.public_key().public_numbers()


def sign_sha256(key: RSAPrivateKey, data: bytes) -> str:
    """SHA256withRSA (PKCS#1 v1.5) over `data`, base64."""
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def verify_sha256(key: RSAPublicKey, data: bytes, signature: str) -> bool:
    """Whether `signature` (strict base64) is SHA256withRSA over `data` under `key`."""
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
