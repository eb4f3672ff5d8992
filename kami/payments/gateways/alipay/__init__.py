"""支付宝开放平台 (Alipay open platform): page / wap / precreate payments, RSA2 notifications,
trade query, refunds and refund query.

Three signing rules, all SHA256withRSA (PKCS#1 v1.5), base64:
* requests, signed with the app private key: every parameter except `sign` and empty values
  (`sign_type` included), sorted, `k=v` joined with `&`, raw values, UTF-8;
* synchronous answers, verified with the Alipay public key: the exact JSON text of the
  `<method_with_underscores>_response` member, as it stands in the body;
* notifications, verified with the Alipay public key: every parameter except `sign` and
  `sign_type` (empty ones kept), URL-decoded, sorted, joined the same way, encoded in the
  notification's own `charset` (utf-8, gbk or gb2312: the body is decoded in that charset).

Alipay resends a notification until it reads the bare word `success`, for about 25 hours, so
`notify_time` is no freshness window and is not checked. The trade notify is sent again when a
refund succeeds, carrying `out_biz_no` (the refund's `out_request_no`), `gmt_refund` and
`refund_fee`; `refund_fee` is the trade's *cumulative* refunded amount, so the amount of this one
refund is read from `alipay.trade.fastpay.refund.query` (see `AlipayGateway._refund_notice`).
"""

from kami.payments.gateways.alipay.client import AlipayClient
from kami.payments.gateways.alipay.gateway import AlipayGateway
from kami.payments.gateways.alipay.options import SPEC, from_options, warnings
from kami.payments.gateways.alipay.protocol import (
    BEIJING,
    CHARSETS,
    GATEWAY_URL,
    PRODUCTS,
    SANDBOX_URL,
    load_private_key,
    load_public_key,
    notify_content,
    request_content,
    response_members,
    rsa2_sign,
    rsa2_verify,
    to_fen,
)
from kami.payments.gateways.amounts import yuan

__all__ = [
    "BEIJING",
    "CHARSETS",
    "GATEWAY_URL",
    "PRODUCTS",
    "SANDBOX_URL",
    "SPEC",
    "AlipayClient",
    "AlipayGateway",
    "from_options",
    "load_private_key",
    "load_public_key",
    "notify_content",
    "request_content",
    "response_members",
    "rsa2_sign",
    "rsa2_verify",
    "to_fen",
    "warnings",
    "yuan",
]
