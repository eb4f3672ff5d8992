"""WeChat Pay API v3 (微信支付), direct merchant: Native (QR), H5 and JSAPI payments, notifications,
order query, refunds.

Every request carries `Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…,nonce_str=…,signature=…,
timestamp=…,serial_no=…`, the signature being SHA256withRSA (PKCS#1 v1.5) with the merchant API key
over `METHOD\\npath?query\\ntimestamp\\nnonce\\nbody\\n`. Answers and notifications are signed by
WeChat over `timestamp\\nnonce\\nbody\\n` (headers Wechatpay-Timestamp/-Nonce/-Signature/-Serial);
the key is chosen by Wechatpay-Serial: a platform certificate's serial (upper-case hex; several
certificates may be configured for rotation) or the id `PUB_KEY_ID_…` of the WeChat Pay public key.
Both forms may be configured at once (WeChat's migration period). Unlike WeChat's SDKs, Kami also
refuses a signature whose timestamp is more than 5 minutes away from now, in either direction, on
notifications and on answers. The notification's `resource` is AES-256-GCM under the APIv3 key.
A 2xx answer must be signed; a 4xx business error is checked when signed (WeChat does not sign
every error, e.g. 401 SIGN_ERROR); 401, 429, 5xx and transport errors raise Unavailable.

The payment instruction per product: Native → kind "qr" with the `weixin://` code_url; H5 →
kind "redirect" to the h5_url (with `redirect_url` back to the order page); JSAPI → kind "jsapi"
with `qr` holding the JSON object to pass as-is to `WeixinJSBridge.invoke("getBrandWCPayRequest",
…)` (appId, timeStamp, nonceStr, package, signType "RSA", paySign).

H5 sends the buyer's IP (`PaymentRequest.payer_ip`, from checkout) as `scene_info.payer_client_ip`,
falling back to the account's `h5_client_ip`; JSAPI needs `payer_openid` (the buyer's openid under
the AppID) and refuses a request without it.
"""

from kami.payments.gateways.wechat.client import WechatClient
from kami.payments.gateways.wechat.gateway import API_BASE, CHINA, PRODUCTS, WechatGateway
from kami.payments.gateways.wechat.options import SPEC, from_options, remarks
from kami.payments.gateways.wechat.signing import (
    SCHEME,
    TOLERANCE,
    PlatformKeys,
    serial_of,
    sign,
    signed_message,
)

__all__ = [
    "API_BASE",
    "CHINA",
    "PRODUCTS",
    "SCHEME",
    "SPEC",
    "TOLERANCE",
    "PlatformKeys",
    "WechatClient",
    "WechatGateway",
    "from_options",
    "remarks",
    "serial_of",
    "sign",
    "signed_message",
]
