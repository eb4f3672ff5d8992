"""易支付 V2's signatures (SHA256withRSA over the V1 signed text) and its keys."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from kami.payments.gateways import rsa_keys
from kami.payments.gateways.epay.protocol import sign_content

SIGN_TYPES = ("RSA", "SHA256WithRSA")
_PRIVATE = rsa_keys.KeyWording(
    unreadable="not a PEM RSA private key (PKCS#1 or PKCS#8, unencrypted)",
    not_rsa="not an RSA key",
)
_PUBLIC = rsa_keys.KeyWording(
    unreadable="not a PEM RSA public key (or certificate)",
    not_rsa="not an RSA key",
    other_half="is a private key; give the platform's public key",
)


def rsa_sign(params: Mapping[str, str], key: RSAPrivateKey) -> str:
    return rsa_keys.sign_sha256(key, sign_content(params).encode())


def rsa_verify(params: Mapping[str, str], key: RSAPublicKey) -> bool:
    given = params.get("sign", "").strip().replace(" ", "+")  # a '+' decoded as a space
    return rsa_keys.verify_sha256(key, sign_content(params).encode(), given)


def php_text(value: Any) -> str | None:
    """A JSON value as the platform's PHP signs it, or None when it is not signed."""
    if value is True:
        return "1"
    if value is None or value is False or isinstance(value, list | dict):
        return None
    return value if isinstance(value, str) else json.dumps(value)


def load_private_key(text: str, option: str) -> RSAPrivateKey:
    """PEM (PKCS#1 or PKCS#8) or the bare base64 the merchant console shows."""
    return rsa_keys.load_private_key(text, option, _PRIVATE)


def load_public_key(text: str, option: str) -> RSAPublicKey:
    """PEM, a PEM certificate, or bare base64 (SPKI)."""
    return rsa_keys.load_public_key(text, option, _PUBLIC, certificates=True)
