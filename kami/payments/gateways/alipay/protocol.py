"""Alipay's protocol as data and pure functions: endpoints, products, statuses, the three signed
texts, the exact text of an answer's members, amounts, and the keys of an app."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta, timezone
from decimal import Decimal, InvalidOperation

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from kami.payments.gateways import rsa_keys
from kami.payments.gateways.amounts import fen_of
from kami.payments.gateways.base import TradeStatus

GATEWAY_URL = "https://openapi.alipay.com/gateway.do"
SANDBOX_URL = "https://openapi-sandbox.dl.alipaydev.com/gateway.do"
BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")  # no daylight saving since 1991
PRODUCTS = {
    "page": ("alipay.trade.page.pay", "FAST_INSTANT_TRADE_PAY"),
    "wap": ("alipay.trade.wap.pay", "QUICK_WAP_WAY"),
    "precreate": ("alipay.trade.precreate", "FACE_TO_FACE_PAYMENT"),
}
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gb2312"}
STATUSES = {
    "TRADE_SUCCESS": TradeStatus.PAID,
    "TRADE_FINISHED": TradeStatus.PAID,
    "WAIT_BUYER_PAY": TradeStatus.PENDING,
    "TRADE_CLOSED": TradeStatus.CLOSED,
}
# 40004 answers that mean "try again with the same parameters", not a refusal.
TRANSIENT = frozenset({"ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR"})
_PRIVATE = rsa_keys.KeyWording(
    unreadable="not an RSA private key (PEM PKCS#1 or PKCS#8, or bare base64)",
    not_rsa="RSA2 needs an RSA key of at least 2048 bits",
    other_half="this is a public key or certificate, not the app private key",
    encrypted="the key is encrypted; give it without a passphrase",
)
_PUBLIC = rsa_keys.KeyWording(
    unreadable="not an RSA public key (PEM or bare base64)",
    not_rsa="RSA2 needs an RSA key of at least 2048 bits",
    other_half="this is a private key; paste the 支付宝公钥 from the console",
    certificate="a certificate (公钥证书 mode) is not supported; use the 公钥 mode key",
)


# -- signing rules ---------------------------------------------------------------------------------
def request_content(params: Mapping[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v != "")


def notify_content(params: Mapping[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("sign", "sign_type"))


def rsa2_sign(key: RSAPrivateKey, data: bytes) -> str:
    return rsa_keys.sign_sha256(key, data)


def rsa2_verify(key: RSAPublicKey, data: bytes, signature: str) -> bool:
    return rsa_keys.verify_sha256(key, data, "".join(signature.split()))


def response_members(body: str) -> dict[str, str]:
    """The exact text of each top-level member of a JSON object: Alipay signs the text of
    `<method>_response` as it was sent, so it is cut out of the body, never re-serialised."""
    decoder = json.JSONDecoder()
    members: dict[str, str] = {}

    def skip(i: int) -> int:
        while i < len(body) and body[i] in " \t\r\n":
            i += 1
        return i

    i = skip(0)
    if body[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = skip(i + 1)
    while body[i : i + 1] != "}":
        name, i = decoder.raw_decode(body, i)
        i = skip(i)
        if not isinstance(name, str) or name in members or body[i : i + 1] != ":":
            raise ValueError("bad or repeated member name")
        start = skip(i + 1)
        _, end = decoder.raw_decode(body, start)
        members[name] = body[start:end]
        i = skip(end)
        if body[i : i + 1] == ",":
            i = skip(i + 1)
        elif body[i : i + 1] != "}":
            raise ValueError("expected , or }")
    return members


def to_fen(money: object) -> int | None:
    """Yuan as Alipay writes it ("12.34") to fen; None when it is not such an amount."""
    try:
        value = Decimal(str(money))
    except InvalidOperation:
        return None
    return fen_of(value)


# -- keys ------------------------------------------------------------------------------------------
def load_private_key(text: str, option: str = "app_private_key") -> RSAPrivateKey:
    """The app private key: PEM PKCS#1 or PKCS#8, or bare base64 as the key tool shows it."""
    return rsa_keys.load_private_key(text, option, _PRIVATE, min_bits=2048)


def load_public_key(text: str, option: str = "alipay_public_key") -> RSAPublicKey:
    """The 支付宝公钥 (public key mode): PEM or bare base64; certificates are refused."""
    return rsa_keys.load_public_key(text, option, _PUBLIC, min_bits=2048)
