"""WeChat Pay API v3 calls: signed with the merchant API key, answers verified by WeChat's keys."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from kami.kernel.errors import Unavailable
from kami.payments.gateways.base import NotificationRejected
from kami.payments.gateways.transport import opener
from kami.payments.gateways.wechat.signing import SCHEME, PlatformKeys, sign, signed_message


def failure(detail: str, slug: str = "gateway-error") -> Unavailable:
    return Unavailable(detail, where="wechat", slug=slug)


class WechatClient:
    def __init__(
        self,
        *,
        mchid: str,
        merchant_key: RSAPrivateKey,
        merchant_serial_no: str,
        platform: PlatformKeys,
        api_base: str,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._mchid = mchid
        self._key = merchant_key
        self._serial = merchant_serial_no
        self._platform = platform
        self._api_base = api_base.rstrip("/")
        self._timeout = timeout
        self._clock = clock
        self._opener = opener()

    def authorization(self, method: str, url: str, body: bytes) -> str:
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        stamp, nonce = str(int(self._clock())), secrets.token_hex(16).upper()
        signature = sign(self._key, signed_message(method, target, stamp, nonce, body))
        return (
            f'{SCHEME} mchid="{self._mchid}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{stamp}",serial_no="{self._serial}"'
        )

    def call(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any], str]:
        """Send a signed request; answer (status, JSON object, text) for a 2xx or a business
        error (4xx but 401/429), each with a valid signature when one is present (2xx: always)."""
        body = json.dumps(payload, ensure_ascii=False).encode() if payload is not None else b""
        url = f"{self._api_base}{path}"
        headers = {
            "Authorization": self.authorization(method, url, body),
            "Accept": "application/json",
            "User-Agent": "kami-wechatpay",
        }
        if body:
            headers["Content-Type"] = "application/json"
        key_id = self._platform.public_key_id
        if key_id is not None:  # so WeChat signs its answer with the public key's pair
            headers["Wechatpay-Serial"] = key_id
        request = urllib.request.Request(url, body or None, headers, method=method)  # noqa: S310
        where = f"{method} {path.split('?')[0]}"
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                status, answer, raw = response.status, response.headers, response.read(1 << 20)
        except urllib.error.HTTPError as exc:
            status, answer, raw = exc.code, exc.headers, exc.read(1 << 20)
        except OSError as exc:
            raise failure(
                f"WeChat Pay could not be reached for {where}: {type(exc).__name__}",
                "gateway-unavailable",
            ) from None
        text = raw.decode("utf-8", "replace")
        try:
            data: Any = json.loads(text) if text else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        if not 200 <= status < 500 or status in (401, 429):
            code, message = str(data.get("code", ""))[:40], str(data.get("message", ""))[:200]
            raise failure(
                f"WeChat Pay answered {where} with HTTP {status} {code}: {message}".rstrip(": ")
            )
        lower = {k.lower(): v for k, v in answer.items()}
        if 200 <= status < 300 or "wechatpay-signature" in lower:
            try:
                self._platform.check(lower, raw, self._clock, typed=False)
            except NotificationRejected as exc:
                raise failure(
                    f"WeChat Pay's answer to {where} is not trustworthy: {exc.detail}",
                    "bad-response-signature",
                ) from None
        return status, data, text


def business_error(data: Mapping[str, Any]) -> str:
    """WeChat's `code: message` of a refusal, cut short."""
    return f"{str(data.get('code', 'ERROR'))[:40]}: {str(data.get('message', ''))[:200]}"
