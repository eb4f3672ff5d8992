"""Fulu's card secrets: card numbers and passwords come AES-256-ECB encrypted under the
AppSecret (as in Fulu's published sample), base64, PKCS#7 padded."""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def _aes_key(secret: str) -> bytes:
    # openssl (PHP openssl_decrypt, Fulu's sample) pads a short key with NULs, cuts a long one.
    return secret.encode()[:32].ljust(32, b"\0")


def decrypt_card(ciphertext: str, secret: str) -> str:
    """base64 → AES-256-ECB (key: the AppSecret) → PKCS#7 → UTF-8, stripped. ValueError if not."""
    try:
        data = base64.b64decode(ciphertext, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("card secret is not base64") from None
    if not data or len(data) % 16:
        raise ValueError("card secret is not whole AES blocks")
    decryptor = Cipher(algorithms.AES(_aes_key(secret)), modes.ECB()).decryptor()  # noqa: S305
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        return plain.decode().strip()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("card secret does not decrypt with this AppSecret") from None


def encrypt_card(plaintext: str, secret: str) -> str:
    """The inverse of decrypt_card (what Fulu does; used by the simulator)."""
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(_aes_key(secret)), modes.ECB()).encryptor()  # noqa: S305
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()
