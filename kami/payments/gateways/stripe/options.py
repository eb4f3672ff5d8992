"""Stripe accounts from their options."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from datetime import timedelta

from kami.payments.gateways.base import ChannelSpec
from kami.payments.gateways.stripe.gateway import StripeGateway


def from_options(name: str, options: Mapping[str, str], public_url: str) -> StripeGateway:
    """An account from its options (see SPEC); errors name the option, never its value."""
    lookback = options.get("query_lookback_hours", "48")
    if not lookback.isdigit() or not 1 <= int(lookback) <= 24 * 30:
        raise ValueError("query_lookback_hours: a whole number of hours from 1 to 720")
    secret_key = options.get("secret_key", "")
    if not secret_key.startswith(("sk_", "rk_")):
        raise ValueError("secret_key: must be a secret (sk_…) or restricted (rk_…) key")
    if not options.get("webhook_secret", "").startswith("whsec_"):
        raise ValueError("webhook_secret: must be the endpoint's signing secret (whsec_…)")
    api_base = options.get("api_base", "https://api.stripe.com")
    if urllib.parse.urlsplit(api_base).scheme not in ("http", "https"):
        raise ValueError("api_base: must be an http(s) URL")
    return StripeGateway(
        secret_key,
        options["webhook_secret"],
        public_url,
        name=name,
        api_base=api_base,
        query_lookback=timedelta(hours=int(lookback)),
    )


def _warnings(options: Mapping[str, str]) -> list[str]:
    if options.get("secret_key", "").startswith(("sk_test_", "rk_test_")):
        return ["a test-mode key (sk_test_…): no real money moves"]
    return []


SPEC = ChannelSpec(
    channel="stripe",
    required=("secret_key", "webhook_secret"),
    optional=("api_base", "query_lookback_hours"),
    secrets=frozenset({"secret_key", "webhook_secret"}),
    build=from_options,
    warnings=_warnings,
)
