"""Every channel Kami speaks, as configurable specs (the accounts file names them by channel)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from kami.payments.gateways import alipay, stripe, wechat
from kami.payments.gateways.base import ChannelSpec
from kami.payments.gateways.epay import EpayGateway


def _epay(name: str, options: Mapping[str, str], public_url: str) -> EpayGateway:
    return EpayGateway(
        options["base_url"],
        options["pid"],
        options["key"],
        public_url,
        name=name,
        pay_type=options.get("pay_type"),
    )


def _epay_warnings(options: Mapping[str, str]) -> list[str]:
    if urlsplit(options.get("base_url", "")).scheme != "https":
        return ["base_url is not https: the query sends the key in it"]
    return []


EPAY = ChannelSpec(
    channel="epay",
    required=("base_url", "pid", "key"),
    optional=("pay_type",),
    secrets=frozenset({"key"}),
    build=_epay,
    warnings=_epay_warnings,
)

CHANNEL_SPECS: tuple[ChannelSpec, ...] = (stripe.SPEC, EPAY, alipay.SPEC, wechat.SPEC)
