"""易支付 (epay, the 彩虹易支付 protocol) version 1, and what V2 (`epay_v2`) shares with it."""

from kami.payments.gateways.amounts import yuan
from kami.payments.gateways.epay.gateway import (
    OUTCOME_UNKNOWN,
    SPEC,
    EpayGateway,
    check_flag,
    from_options,
    sign,
)
from kami.payments.gateways.epay.protocol import (
    MAX_RESPONSE,
    check_base_url,
    check_pid,
    fen,
    refused_refund,
    sign_content,
)
from kami.payments.gateways.transport import NoRedirect

__all__ = [
    "MAX_RESPONSE",
    "OUTCOME_UNKNOWN",
    "SPEC",
    "EpayGateway",
    "NoRedirect",
    "check_base_url",
    "check_flag",
    "check_pid",
    "fen",
    "from_options",
    "refused_refund",
    "sign",
    "sign_content",
    "yuan",
]
