"""Alipay accounts from their options, and the remarks `kami gateways check` makes on them."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from kami.payments.gateways.alipay.gateway import AlipayGateway
from kami.payments.gateways.alipay.protocol import (
    GATEWAY_URL,
    PRODUCTS,
    load_private_key,
    load_public_key,
)
from kami.payments.gateways.base import ChannelSpec
from kami.payments.gateways.rsa_keys import is_public_half


def _url(options: Mapping[str, str], option: str, default: str | None) -> str | None:
    value = options.get(option, "").strip() or default
    if value is not None:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{option}: must be an http(s) URL")
    return value


def from_options(name: str, options: Mapping[str, str], public_url: str) -> AlipayGateway:
    for option in SPEC.required:
        if not options.get(option, "").strip():
            raise ValueError(f"{option}: missing")
    app_id = options["app_id"].strip()
    if not (app_id.isascii() and app_id.isdigit() and len(app_id) <= 32):
        raise ValueError("app_id: must be the digits of the app's APPID")
    seller_id = options.get("seller_id", "").strip() or None
    if seller_id is not None and not (seller_id.isascii() and seller_id.isdigit()):
        raise ValueError("seller_id: must be the merchant's 2088… PID (digits)")
    product = options.get("product", "").strip() or "page"
    if product not in PRODUCTS:
        raise ValueError(f"product: must be one of {', '.join(PRODUCTS)}")
    try:
        timeout = float(options.get("timeout", "").strip() or "10")
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= 120:
        raise ValueError("timeout: must be a number of seconds between 0 and 120")
    private = load_private_key(options["app_private_key"])
    public = load_public_key(options["alipay_public_key"])
    if is_public_half(public, private):
        raise ValueError(
            "alipay_public_key: this is the app's own public key (应用公钥); "
            "paste the 支付宝公钥 from the console"
        )
    return AlipayGateway(
        name,
        app_id,
        private,
        public,
        public_url,
        seller_id=seller_id,
        product=product,
        gateway_url=_url(options, "gateway_url", GATEWAY_URL) or GATEWAY_URL,
        return_url=_url(options, "return_url", None),
        timeout=timeout,
    )


def warnings(options: Mapping[str, str]) -> list[str]:
    url = options.get("gateway_url", "").strip() or GATEWAY_URL
    found = []
    if urllib.parse.urlsplit(url).scheme == "http":
        found.append("gateway_url is plain http: signed calls and answers travel unencrypted")
    if "alipaydev.com" in urllib.parse.urlsplit(url).netloc:
        found.append("gateway_url is Alipay's sandbox (沙箱): no real money moves")
    return found


SPEC = ChannelSpec(
    channel="alipay",
    required=("app_id", "app_private_key", "alipay_public_key"),
    optional=("seller_id", "product", "gateway_url", "return_url", "timeout"),
    secrets=frozenset({"app_private_key"}),
    build=from_options,
    warnings=warnings,
)
