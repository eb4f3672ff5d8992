"""The open platform's gateway: requests signed with the app key, answers verified with the
Alipay public key (the exact text of `<method>_response`, see `protocol.response_members`)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from kami.kernel.errors import Unavailable
from kami.payments.gateways.alipay.protocol import (
    BEIJING,
    PRODUCTS,
    TRANSIENT,
    request_content,
    response_members,
    rsa2_sign,
    rsa2_verify,
)
from kami.payments.gateways.transport import opener


class AlipayClient:
    def __init__(
        self,
        app_id: str,
        app_private_key: RSAPrivateKey,
        alipay_public_key: RSAPublicKey,
        *,
        gateway_url: str,
        notify_url: str,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self.gateway_url = gateway_url
        self._app_id = app_id
        self._key = app_private_key
        self._alipay_key = alipay_public_key
        self._notify_url = notify_url
        self._timeout = timeout
        self._clock = clock
        self._opener = opener()

    def signed_params(self, method: str, biz: Mapping[str, str], **extra: str) -> dict[str, str]:
        params = {
            "app_id": self._app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": datetime.fromtimestamp(self._clock(), BEIJING).strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
            "version": "1.0",
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        if method in (spec[0] for spec in PRODUCTS.values()):
            params["notify_url"] = self._notify_url
        params.update(extra)
        params["sign"] = rsa2_sign(self._key, request_content(params).encode())
        return params

    def call(self, method: str, biz: Mapping[str, str]) -> tuple[dict[str, Any], str, bool]:
        """One API call: (the `<method>_response` object, the body, whether it was signed).

        A signed answer whose signature does not verify is never returned."""
        params = self.signed_params(method, biz)
        content = params.pop("biz_content")
        # As the official SDKs do: common parameters in the URL, the business ones in the body.
        url = f"{self.gateway_url}?{urllib.parse.urlencode(params)}"
        data = urllib.parse.urlencode({"biz_content": content}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"}
        # S310: the scheme was checked by from_options (http or https only).
        request = urllib.request.Request(  # noqa: S310
            url, data=data, headers=headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                body = response.read(1024 * 1024).decode("utf-8")
        except urllib.error.HTTPError as exc:
            raise Unavailable(
                f"Alipay answered {method} with HTTP {exc.code}",
                where="alipay",
                slug="gateway-error",
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise Unavailable(
                f"Alipay could not be reached for {method}: {type(exc).__name__}",
                where="alipay",
                slug="gateway-unavailable",
            ) from None
        key = method.replace(".", "_") + "_response"
        try:
            members = response_members(body)
            text = members.get(key) or members["error_response"]
            answer: Any = json.loads(text)
            sign: Any = json.loads(members["sign"]) if "sign" in members else None
        except (ValueError, KeyError):
            answer = sign = None
        if not isinstance(answer, dict) or not (sign is None or isinstance(sign, str)):
            raise Unavailable(
                f"Alipay answered {method} with no {key} object",
                where="alipay",
                slug="gateway-error",
            )
        if sign is not None and not rsa2_verify(self._alipay_key, text.encode(), sign):
            raise Unavailable(
                f"Alipay's answer to {method} does not verify under alipay_public_key",
                where="alipay",
                slug="bad-signature",
            )
        return answer, body, sign is not None

    def answer(self, method: str, biz: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        return trusted(method, *self.call(method, biz))


def trusted(
    method: str, answer: dict[str, Any], body: str, signed: bool
) -> tuple[dict[str, Any], str]:
    """A signed answer with code 10000 or 40004 (a business refusal); anything else is an
    error of the channel or of the configuration, and raises Unavailable."""
    code = answer.get("code")
    if signed and (
        code == "10000" or (code == "40004" and answer.get("sub_code") not in TRANSIENT)
    ):
        return answer, body
    why = "unsigned answer " if not signed else ""
    raise Unavailable(
        f"Alipay {method}: {why}{code} {answer.get('sub_code', '')} "
        f"{str(answer.get('sub_msg') or answer.get('msg') or '')[:200]}".strip(),
        where="alipay",
        slug="gateway-error",
    )
