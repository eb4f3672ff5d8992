"""Every channel Kami speaks, as configurable specs (the accounts file names them by channel)."""

from __future__ import annotations

from kami.payments.gateways import alipay, epay, epay_v2, stripe, wechat
from kami.payments.gateways.base import ChannelSpec

CHANNEL_SPECS: tuple[ChannelSpec, ...] = (
    stripe.SPEC,
    epay.SPEC,
    epay_v2.SPEC,
    alipay.SPEC,
    wechat.SPEC,
)
