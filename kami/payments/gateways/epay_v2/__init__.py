"""易支付 V2 (the newer 彩虹易支付 API): RSA-signed requests, responses and notifications.

Field names follow the V2 document (payments.md §4.4, a summary of epay.qcjy.cc/doc):
form-encoded POST requests to `/api/pay/{submit,create,query,refund,refundquery}`, JSON answers
with `code` 0 for success (V1 used 1), every request and answer carrying `timestamp` (unix
seconds), `sign` and `sign_type`. Where the document is silent this module follows V1: the
notification's `trade_status=TRADE_SUCCESS` is the only paid state, the reply is the bare word
`success`, `return_url` is the order page, and the page payment is a GET of the signed
parameters (like `submit.php`).

Signature: the V1 string (non-empty values but `sign`/`sign_type`, byte-sorted keys, `k=v&…`,
raw values) signed SHA256WithRSA (PKCS#1 v1.5) with the merchant private key, base64; we send
`sign_type=RSA` as the 彩虹 SDK does, and accept `RSA` or `SHA256WithRSA`. Answers and
notifications are verified with the platform public key, and their `timestamp` must be within
five minutes of our clock in either direction (slug `stale-timestamp` for notifications).
JSON values are signed as PHP prints them: numbers as digits, true as "1"; false, null, arrays
and objects are left out.

An error answer (`code` ≠ 0) may come unsigned, as error paths of the platform often do; a
signature on it must still verify. Such an answer is only ever read as "no" (no trade, refund
refused) and never as a payment or a refund that happened. A success answer must be signed.

Refunds are idempotent at the platform on `out_refund_no` (Kami's refund number), so a resent
refund is safe; a transport failure raises Unavailable and the caller asks `refundquery`. The
platform refunds synchronously (the refund query knows only 0 failed / 1 succeeded), so `code`
0 is SUCCEEDED. A refusal is checked once with `refundquery` on the same `out_refund_no`, so a
platform that answers a repeated refund number with an error still reports the first refund.
The platform sends no refund notifications.

The `submit` page URL carries the timestamp it was signed at, which the platform checks:
it is for an immediate redirect, and a later attempt needs a new `create_payment`.
"""

from kami.payments.gateways.epay_v2.gateway import MODES, EpayV2Gateway
from kami.payments.gateways.epay_v2.options import SPEC, from_options
from kami.payments.gateways.epay_v2.signing import (
    SIGN_TYPES,
    load_private_key,
    load_public_key,
    rsa_sign,
    rsa_verify,
)

__all__ = [
    "MODES",
    "SIGN_TYPES",
    "SPEC",
    "EpayV2Gateway",
    "from_options",
    "load_private_key",
    "load_public_key",
    "rsa_sign",
    "rsa_verify",
]
