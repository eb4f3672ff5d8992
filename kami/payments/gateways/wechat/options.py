"""WeChat Pay accounts from their options, and the remarks `kami gateways check` makes on them."""

from __future__ import annotations

import ipaddress
import string
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from kami.payments.gateways import rsa_keys
from kami.payments.gateways.base import ChannelSpec
from kami.payments.gateways.wechat.gateway import API_BASE, PRODUCTS, WechatGateway
from kami.payments.gateways.wechat.signing import serial_of

# WeChat's keys come as PEM files (apiclient_key.pem, pub_key.pem): no bare base64.
_MERCHANT_KEY = rsa_keys.KeyWording(
    unreadable="not a PEM RSA private key of at least 2048 bits "
    "(the apiclient_key.pem of the merchant API certificate)"
)
_PUBLIC_KEY = rsa_keys.KeyWording(
    unreadable="not a PEM RSA public key (-----BEGIN PUBLIC KEY----- …)"
)


def _certificates(pem: str) -> list[tuple[x509.Certificate, RSAPublicKey]]:
    try:
        certificates = x509.load_pem_x509_certificates(pem.strip().encode())
    except ValueError:
        certificates = []
    if not certificates or pem.count("-----BEGIN CERTIFICATE-----") != len(certificates):
        raise ValueError(
            "platform_certificate: not one or more PEM X.509 certificates "
            "(-----BEGIN CERTIFICATE----- …)"
        )
    found = []
    for certificate in certificates:
        public = certificate.public_key()
        if not isinstance(public, RSAPublicKey):
            raise ValueError(
                f"platform_certificate: certificate {serial_of(certificate)} has no RSA key"
            )
        found.append((certificate, public))
    return found


def from_options(name: str, options: Mapping[str, str], public_url: str) -> WechatGateway:
    def get(option: str) -> str:
        return (options.get(option) or "").strip()

    mchid, appid, serial = get("mchid"), get("appid"), get("merchant_serial_no")
    if not (mchid.isascii() and mchid.isdigit() and len(mchid) <= 32):
        raise ValueError("mchid: must be the merchant number (digits), e.g. 1900000109")
    if not (appid.isascii() and appid.isalnum() and len(appid) <= 32):
        raise ValueError("appid: must be the AppID bound to the merchant, e.g. wxd678efh567hg6787")
    apiv3_key = options.get("apiv3_key") or ""
    if len(apiv3_key.encode()) != 32:
        raise ValueError(
            f"apiv3_key: must be exactly 32 bytes (the APIv3 key), not {len(apiv3_key.encode())}"
        )
    key = rsa_keys.load_private_key(
        options.get("merchant_private_key") or "",
        "merchant_private_key",
        _MERCHANT_KEY,
        bare_base64=False,
        min_bits=2048,
    )
    if not serial or len(serial) > 64 or any(c not in string.hexdigits for c in serial):
        raise ValueError(
            "merchant_serial_no: must be the merchant API certificate's serial number in hex"
        )
    certificates: dict[int, RSAPublicKey] = {}
    if get("platform_certificate"):
        for certificate, public in _certificates(get("platform_certificate")):
            if rsa_keys.is_public_half(public, key):
                raise ValueError(
                    f"platform_certificate: certificate {serial_of(certificate)} holds the public "
                    "half of merchant_private_key: that is the merchant's own apiclient_cert.pem, "
                    "not a WeChat Pay platform certificate"
                )
            certificates[certificate.serial_number] = public
    public_keys: dict[str, RSAPublicKey] = {}
    key_id = get("wechatpay_public_key_id")
    if get("wechatpay_public_key") or key_id:
        if not key_id.startswith("PUB_KEY_ID_") or not key_id.isprintable():
            raise ValueError("wechatpay_public_key_id: must be the key's id, PUB_KEY_ID_…")
        if not get("wechatpay_public_key"):
            raise ValueError("wechatpay_public_key: missing (wechatpay_public_key_id is given)")
        public = rsa_keys.load_public_key(
            get("wechatpay_public_key"), "wechatpay_public_key", _PUBLIC_KEY, bare_base64=False
        )
        if rsa_keys.is_public_half(public, key):
            raise ValueError(
                "wechatpay_public_key: is the public half of merchant_private_key, not the "
                "WeChat Pay public key (pub_key.pem from the merchant platform)"
            )
        public_keys[key_id] = public
    if not certificates and not public_keys:
        raise ValueError(
            "platform_certificate: give platform_certificate, or wechatpay_public_key with "
            "wechatpay_public_key_id, to verify WeChat Pay's signatures"
        )
    product = get("product") or "native"
    if product not in PRODUCTS:
        raise ValueError(f"product: must be one of {', '.join(PRODUCTS)}, not {product[:20]!r}")
    api_base = get("api_base") or API_BASE
    if urllib.parse.urlsplit(api_base).scheme not in ("http", "https"):
        raise ValueError("api_base: must be an http(s) URL")
    client_ip = get("h5_client_ip") or None
    if client_ip is not None:
        try:
            ipaddress.ip_address(client_ip)
        except ValueError:
            raise ValueError("h5_client_ip: must be an IP address") from None
    elif product == "h5":
        raise ValueError(
            "h5_client_ip: required for product h5 (WeChat wants scene_info.payer_client_ip)"
        )
    try:
        timeout = float(get("timeout") or "10")
    except ValueError:
        timeout = 0.0
    if not 0 < timeout <= 120:
        raise ValueError("timeout: must be a number of seconds between 0 and 120")
    return WechatGateway(
        name,
        mchid=mchid,
        appid=appid,
        apiv3_key=apiv3_key,
        merchant_key=key,
        merchant_serial_no=serial.upper(),
        public_url=public_url,
        certificates=certificates,
        public_keys=public_keys,
        product=product,
        api_base=api_base,
        h5_client_ip=client_ip,
        timeout=timeout,
    )


def remarks(options: Mapping[str, str]) -> list[str]:
    """Non-fatal remarks for `kami gateways check`."""
    found = []
    now = datetime.now(UTC)
    try:
        certificates = _certificates(options.get("platform_certificate") or "")
    except ValueError:
        certificates = []
    for certificate, _ in certificates:
        if certificate.not_valid_after_utc < now:
            found.append(
                f"platform_certificate: certificate {serial_of(certificate)} expired on "
                f"{certificate.not_valid_after_utc:%Y-%m-%d}; download the current one"
            )
        elif certificate.not_valid_before_utc > now:
            found.append(
                f"platform_certificate: certificate {serial_of(certificate)} is not valid "
                f"before {certificate.not_valid_before_utc:%Y-%m-%d}"
            )
    if (options.get("product") or "").strip() == "h5":
        found.append(
            "h5_client_ip: every H5 order reports this address as the buyer's, not the real one"
        )
    if urllib.parse.urlsplit(options.get("api_base") or API_BASE).scheme != "https":
        found.append("api_base: not https")
    return found


SPEC = ChannelSpec(
    channel="wechat",
    required=("mchid", "appid", "apiv3_key", "merchant_private_key", "merchant_serial_no"),
    optional=(
        "platform_certificate",
        "wechatpay_public_key",
        "wechatpay_public_key_id",
        "product",
        "api_base",
        "h5_client_ip",
        "timeout",
    ),
    secrets=frozenset({"apiv3_key", "merchant_private_key"}),
    build=from_options,
    warnings=remarks,
)
