"""易支付 V2 accounts from their options."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from kami.payments.gateways.base import ChannelSpec
from kami.payments.gateways.epay.protocol import (
    check_base_url,
    check_pay_type,
    check_pid,
    check_required,
)
from kami.payments.gateways.epay_v2.gateway import MODES, EpayV2Gateway
from kami.payments.gateways.epay_v2.signing import load_private_key, load_public_key
from kami.payments.gateways.rsa_keys import is_public_half


def from_options(name: str, options: Mapping[str, str], public_url: str) -> EpayV2Gateway:
    """An account from its options (see SPEC); errors name the option, never its value."""
    check_required(options, SPEC)
    private = load_private_key(options["merchant_private_key"], "merchant_private_key")
    platform = load_public_key(options["platform_public_key"], "platform_public_key")
    if is_public_half(platform, private):
        raise ValueError(
            "platform_public_key: is the public half of merchant_private_key; give the "
            "platform's public key from the merchant console's API page"
        )
    mode = options.get("mode") or "submit"
    if mode not in MODES:
        raise ValueError(f"mode: must be {' or '.join(MODES)}")
    pay_type = check_pay_type(options)
    if mode == "create" and pay_type is None:
        raise ValueError("pay_type: required when mode is create (the create API needs it)")
    try:
        timeout = float(options.get("timeout") or "10")
    except ValueError:
        timeout = 0.0
    if not 1 <= timeout <= 60:
        raise ValueError("timeout: seconds, from 1 to 60")
    return EpayV2Gateway(
        check_base_url(options["base_url"]),
        check_pid(options["pid"]),
        private,
        platform,
        public_url,
        name=name,
        pay_type=pay_type,
        mode=mode,
        timeout=timeout,
    )


def _warnings(options: Mapping[str, str]) -> list[str]:
    if urllib.parse.urlsplit(options.get("base_url", "")).scheme != "https":
        return ["base_url is not https: orders and refunds travel readable (signed, not secret)"]
    return []


SPEC = ChannelSpec(
    channel="epay_v2",
    required=("base_url", "pid", "merchant_private_key", "platform_public_key"),
    optional=("pay_type", "mode", "timeout"),
    secrets=frozenset({"merchant_private_key"}),
    build=from_options,
    warnings=_warnings,
)
