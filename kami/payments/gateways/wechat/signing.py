"""WeChat Pay's signatures: the merchant's on requests (`Authorization`), WeChat's on answers and
notifications (Wechatpay-* headers), checked with the platform certificates or public key."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from kami.payments.gateways.base import NotificationRejected
from kami.payments.gateways.freshness import stale_timestamp
from kami.payments.gateways.rsa_keys import sign_sha256, verify_sha256

SCHEME = "WECHATPAY2-SHA256-RSA2048"
TOLERANCE = 300


def sign(key: RSAPrivateKey, message: bytes) -> str:
    return sign_sha256(key, message)


def signed_message(*lines: str | bytes) -> bytes:
    """WeChat's signing string: every line, the last included, terminated by a newline."""
    return b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)


def serial_of(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "X")


class PlatformKeys:
    """WeChat's keys by Wechatpay-Serial: platform certificates (by serial number) and the
    WeChat Pay public key (by its PUB_KEY_ID_… id); either or both may be configured."""

    def __init__(
        self,
        certificates: Mapping[int, RSAPublicKey] | None = None,
        public_keys: Mapping[str, RSAPublicKey] | None = None,
    ) -> None:
        self._certificates = dict(certificates or {})
        self._public_keys = dict(public_keys or {})

    @property
    def public_key_id(self) -> str | None:
        """The id of the (first) WeChat Pay public key, None when only certificates are set."""
        return next(iter(self._public_keys), None)

    def key(self, serial: str, where: str) -> RSAPublicKey:
        key = self._public_keys.get(serial)
        if key is None and 0 < len(serial) <= 64:
            try:
                key = self._certificates.get(int(serial, 16))
            except ValueError:
                key = None
        if key is None:
            raise NotificationRejected(
                f"Wechatpay-Serial {serial[:70]!r} is neither a configured platform certificate's "
                "serial nor the configured WeChat Pay public key id",
                where=where,
                slug="unknown-serial",
            )
        return key

    def check(
        self,
        headers: Mapping[str, str],
        body: bytes,
        clock: Callable[[], float],
        *,
        typed: bool = True,
    ) -> None:
        """Raise NotificationRejected unless the headers sign `body` with a configured key,
        within TOLERANCE seconds of `clock()`."""
        # Notifications always name the signature type; API answers may leave it out.
        kind = headers.get("wechatpay-signature-type", "" if typed else SCHEME)
        if kind != SCHEME:
            raise NotificationRejected(
                f"signature type {kind[:40]!r} is not {SCHEME}",
                where="Wechatpay-Signature-Type",
                slug="bad-signature",
            )
        stamp = headers.get("wechatpay-timestamp", "")
        nonce = headers.get("wechatpay-nonce", "")
        given = headers.get("wechatpay-signature", "")
        serial = headers.get("wechatpay-serial", "")
        if not (stamp and nonce and given and serial):
            raise NotificationRejected(
                "a Wechatpay-Timestamp, -Nonce, -Signature or -Serial header is missing",
                where="Wechatpay-Signature",
                slug="bad-signature",
            )
        key = self.key(serial, "Wechatpay-Serial")
        if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
            raise NotificationRejected(
                "Wechatpay-Timestamp must be unix seconds",
                where="Wechatpay-Timestamp",
                slug="bad-signature",
            )
        if not verify_sha256(key, signed_message(stamp, nonce, body), given):
            raise NotificationRejected(
                "Wechatpay-Signature does not verify over the timestamp, nonce and body "
                f"with the key of serial {serial[:70]!r}",
                where="Wechatpay-Signature",
                slug="bad-signature",
            )
        skew = int(stamp) - clock()
        if abs(skew) > TOLERANCE:
            what = f"Wechatpay-Timestamp {stamp}"
            raise stale_timestamp(what, skew, TOLERANCE, "Wechatpay-Timestamp")
