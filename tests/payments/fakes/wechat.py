"""A loopback WeChat Pay API v3 server for tests, written from WeChat's rules, not Kami's.

It checks every request the way WeChat does: `Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…,
nonce_str=…,signature=…,timestamp=…,serial_no=…`, the signature being SHA256withRSA over
`METHOD\\n<path?query as sent>\\ntimestamp\\nnonce\\nbody\\n` under the merchant API key named by
serial_no, the timestamp within 5 minutes; a failing request gets an unsigned 401 SIGN_ERROR.
Every other answer is signed like WeChat's (Wechatpay-Timestamp/-Nonce/-Signature/-Serial/
-Signature-Type over `timestamp\\nnonce\\nbody\\n`) with the platform key the request's
Wechatpay-Serial names, else the default one.

The ledger: `transactions` by out_trade_no (as the query answers them) and `refunds` by
out_refund_no, WeChat's refund idempotency key. Like WeChat it answers a repeated out_refund_no
with the first refund and moves no money again, refuses to refund more than was paid or against
a wrong order total, and (with `balance` set) answers NOT_ENOUGH when the merchant's balance is
short; `outage` makes it answer every request 500 SYSTEM_ERROR or 429 FREQUENCY_LIMITED;
`refund_outcome = "PROCESSING"` makes new refunds wait for `finish_refund()`.

It also plays WeChat's notifier: `notification()` returns the headers and body of a callback
encrypted and signed exactly as WeChat does. The real SDK (`wechatpayv3`) talks to it unchanged:
`wx._core._gate_way = fake.url`.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

CHINA = timezone(timedelta(hours=8))
SCHEME = "WECHATPAY2-SHA256-RSA2048"
_ids = itertools.count(1)


# -- key material, made the way WeChat's console hands it out -----------------------------------
def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    """PKCS#8, like apiclient_key.pem."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: rsa.RSAPrivateKey) -> str:
    """SubjectPublicKeyInfo, like the WeChat Pay public key's pub_key.pem."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def make_certificate(
    key: rsa.RSAPrivateKey, *, days: int = 365, expired: bool = False
) -> x509.Certificate:
    """A platform certificate: a 40-hex-digit serial, like WeChat's (160 bits, top bit set)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com"),
        ]
    )
    now = datetime.now(UTC)
    start = now - timedelta(days=days + 10) if expired else now - timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number((1 << 158) | secrets.randbits(158))
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


def certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def serial_of(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "X")


def rsa_sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_ok(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature), message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def rfc3339(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(CHINA).isoformat(timespec="seconds")


def nonce() -> str:
    return secrets.token_hex(16).upper()


def sign_headers(
    key: rsa.RSAPrivateKey, serial: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """WeChat's five signature headers over `timestamp\\nnonce\\nbody\\n`."""
    stamp, once = str(int(time.time()) if timestamp is None else timestamp), nonce()
    message = f"{stamp}\n{once}\n".encode() + body + b"\n"
    return {
        "Wechatpay-Timestamp": stamp,
        "Wechatpay-Nonce": once,
        "Wechatpay-Signature": rsa_sign(key, message),
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature-Type": SCHEME,
    }


def encrypt_resource(
    apiv3_key: str, original_type: str, plain: dict[str, Any], associated_data: str | None = None
) -> dict[str, str]:
    """AEAD_AES_256_GCM under the APIv3 key: 12-character nonce, tag appended, base64."""
    once = secrets.token_hex(6)  # 12 characters, like WeChat's
    ad = original_type if associated_data is None else associated_data
    data = json.dumps(plain, ensure_ascii=False, separators=(",", ":")).encode()
    sealed = AESGCM(apiv3_key.encode()).encrypt(once.encode(), data, ad.encode())
    return {
        "original_type": original_type,
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": base64.b64encode(sealed).decode(),
        "associated_data": ad,
        "nonce": once,
    }


@dataclass
class Seen:
    """A request that passed the signature check, as WeChat received it."""

    method: str
    target: str  # path?query exactly as sent
    body: dict[str, Any] | None
    serial_no: str
    headers: dict[str, str]


class FakeWechatPay:
    def __init__(
        self,
        *,
        mchid: str,
        appid: str,
        apiv3_key: str,
        merchant_keys: dict[str, rsa.RSAPublicKey],
        platform_keys: dict[str, rsa.RSAPrivateKey],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mchid = mchid
        self.appid = appid
        self.apiv3_key = apiv3_key
        self.merchant_keys = merchant_keys  # merchant serial_no -> merchant API public key
        self.platform_keys = platform_keys  # Wechatpay-Serial -> the key WeChat signs with
        self.default_serial = next(iter(platform_keys))
        self.clock = clock
        self.transactions: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.seen: list[Seen] = []
        self.refused: list[tuple[str, str]] = []  # (path, why) of requests failing the check
        self.refund_outcome = "SUCCESS"
        self.balance: int | None = None
        self.response_signing = "valid"  # "none", "wrong-key" or "stale" to misbehave
        self.outage: int | None = None  # 500 (SYSTEM_ERROR) or 429 (FREQUENCY_LIMITED) to all
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- life --------------------------------------------------------------------------------
    @contextmanager
    def running(self) -> Iterator[FakeWechatPay]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self)

            def do_POST(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- the ledger as the tests drive it ----------------------------------------------------
    def pay(
        self, out_trade_no: str, *, openid: str = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    ) -> dict[str, Any]:
        """The buyer pays: the transaction becomes SUCCESS, as the query will answer it."""
        with self.lock:
            trade = self.transactions[out_trade_no]
            total = trade["amount"]["total"]
            trade.update(
                transaction_id=f"4200{next(_ids):024d}",
                trade_state="SUCCESS",
                trade_state_desc="支付成功",
                bank_type="OTHERS",
                attach="",
                success_time=rfc3339(),
                payer={"openid": openid},
                amount={
                    "total": total,
                    "payer_total": total,
                    "currency": "CNY",
                    "payer_currency": "CNY",
                },
            )
            return dict(trade)

    def finish_refund(self, out_refund_no: str, status: str = "SUCCESS") -> dict[str, Any]:
        with self.lock:
            refund = self.refunds[out_refund_no]
            refund["status"] = status
            if status == "SUCCESS":
                refund["success_time"] = rfc3339()
                self.transactions[refund["out_trade_no"]]["trade_state"] = "REFUND"
            return dict(refund)

    def refunded(self, out_trade_no: str) -> int:
        """Money that left (or is leaving) for this trade: each refund counted once."""
        return sum(
            r["amount"]["refund"]
            for r in self.refunds.values()
            if r["out_trade_no"] == out_trade_no and r["status"] in ("SUCCESS", "PROCESSING")
        )

    # -- the notifier ------------------------------------------------------------------------
    def notification(
        self,
        event_type: str,
        resource: dict[str, Any],
        *,
        timestamp: int | None = None,
        serial: str | None = None,
        key: rsa.RSAPrivateKey | None = None,
        apiv3_key: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """A callback exactly as WeChat sends it: the envelope, `resource` AES-GCM-encrypted
        under the APIv3 key, the body signed with the platform key named by Wechatpay-Serial."""
        original = "refund" if event_type.startswith("REFUND.") else "transaction"
        summary = {"TRANSACTION.SUCCESS": "支付成功", "REFUND.SUCCESS": "退款成功"}
        envelope = {
            "id": f"EV-{next(_ids):018d}",
            "create_time": rfc3339(),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary.get(event_type, "退款异常"),
            "resource": encrypt_resource(apiv3_key or self.apiv3_key, original, resource),
        }
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
        serial = serial or self.default_serial
        signer = key or self.platform_keys[serial]
        return {
            "Content-Type": "application/json",
            **sign_headers(signer, serial, body, timestamp=timestamp),
        }, body

    def refund_resource(self, out_refund_no: str) -> dict[str, Any]:
        """The decrypted payload of a REFUND.* callback for a refund in the ledger."""
        r = self.refunds[out_refund_no]
        return {
            "mchid": self.mchid,
            "out_trade_no": r["out_trade_no"],
            "transaction_id": r["transaction_id"],
            "out_refund_no": out_refund_no,
            "refund_id": r["refund_id"],
            "refund_status": r["status"],
            "success_time": r.get("success_time", rfc3339()),
            "user_received_account": r["user_received_account"],
            "amount": {
                "total": r["amount"]["total"],
                "refund": r["amount"]["refund"],
                "payer_total": r["amount"]["payer_total"],
                "payer_refund": r["amount"]["payer_refund"],
            },
        }

    # -- the API -----------------------------------------------------------------------------
    def _handle(self, http: BaseHTTPRequestHandler) -> None:
        length = int(http.headers.get("Content-Length") or 0)
        raw = http.rfile.read(length) if length else b""
        why, serial = self._authenticate(
            http.command, http.path, http.headers.get("Authorization", ""), raw
        )
        if why:
            self.refused.append((http.path, why))
            self._send(
                http, 401, {"code": "SIGN_ERROR", "message": f"签名错误: {why}"}, signed=False
            )
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send(http, 400, {"code": "PARAM_ERROR", "message": "body is not JSON"})
            return
        self.seen.append(Seen(http.command, http.path, body, serial, dict(http.headers.items())))
        with self.lock:
            if self.outage == 429:
                status, answer = 429, {"code": "FREQUENCY_LIMITED", "message": "频率超限"}
            elif self.outage is not None:
                status, answer = self.outage, {"code": "SYSTEM_ERROR", "message": "系统错误"}
            else:
                status, answer = self._route(http.command, http.path, body)
        want = http.headers.get("Wechatpay-Serial")
        self._send(http, status, answer, serial=want if want in self.platform_keys else None)

    def _authenticate(self, method: str, target: str, header: str, body: bytes) -> tuple[str, str]:
        scheme, _, rest = header.partition(" ")
        if scheme != SCHEME:
            return "not WECHATPAY2-SHA256-RSA2048", ""
        fields: dict[str, str] = {}
        for item in rest.split(","):
            name, sep, value = item.strip().partition("=")
            if not sep or len(value) < 2 or value[0] != '"' or value[-1] != '"':
                return f"bad item {name!r}", ""
            fields[name] = value[1:-1]
        needed = ("mchid", "nonce_str", "signature", "timestamp", "serial_no")
        if any(not fields.get(n) for n in needed):
            return "an Authorization field is missing", ""
        if fields["mchid"] != self.mchid:
            return "mchid is not this merchant", ""
        key = self.merchant_keys.get(fields["serial_no"])
        if key is None:
            return "serial_no names no merchant certificate", ""
        if not fields["timestamp"].isdigit() or abs(int(fields["timestamp"]) - self.clock()) > 300:
            return "timestamp more than 5 minutes away", ""
        message = (
            f"{method}\n{target}\n{fields['timestamp']}\n{fields['nonce_str']}\n".encode()
            + body
            + b"\n"
        )
        if not rsa_ok(key, message, fields["signature"]):
            return "signature does not verify", ""
        return "", fields["serial_no"]

    def _send(
        self,
        http: BaseHTTPRequestHandler,
        status: int,
        answer: dict[str, Any],
        *,
        signed: bool = True,
        serial: str | None = None,
    ) -> None:
        body = json.dumps(answer, ensure_ascii=False).encode()
        http.send_response(status)
        http.send_header("Content-Type", "application/json; charset=utf-8")
        http.send_header("Content-Length", str(len(body)))
        http.send_header("Request-ID", f"08{next(_ids):020d}")
        if signed and self.response_signing != "none":
            serial = serial or self.default_serial
            key = new_key() if self.response_signing == "wrong-key" else self.platform_keys[serial]
            stamp = int(self.clock()) - (600 if self.response_signing == "stale" else 0)
            for name, value in sign_headers(key, serial, body, timestamp=stamp).items():
                http.send_header(name, value)
        http.end_headers()
        http.wfile.write(body)

    def _route(self, method: str, target: str, body: Any) -> tuple[int, dict[str, Any]]:
        url = urlsplit(target)
        query = dict(parse_qsl(url.query))
        parts = url.path.split("/")
        if method == "POST" and url.path.startswith("/v3/pay/transactions/") and len(parts) == 5:
            return self._order(parts[4], body)
        if method == "GET" and url.path.startswith("/v3/pay/transactions/out-trade-no/"):
            if query.get("mchid") != self.mchid:
                return 400, {"code": "PARAM_ERROR", "message": "mchid 与请求方不符"}
            trade = self.transactions.get(unquote(parts[5]))
            if trade is None:
                return 404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"}
            return 200, trade
        if method == "POST" and url.path == "/v3/refund/domestic/refunds":
            return self._refund(body)
        if method == "GET" and url.path.startswith("/v3/refund/domestic/refunds/"):
            refund = self.refunds.get(unquote(parts[5]))
            if refund is None:
                return 404, {"code": "RESOURCE_NOT_EXISTS", "message": "退款单不存在"}
            return 200, refund
        return 404, {"code": "NOT_FOUND", "message": f"no API {method} {url.path}"}

    def _order(self, product: str, body: Any) -> tuple[int, dict[str, Any]]:
        def bad(message: str) -> tuple[int, dict[str, Any]]:
            return 400, {"code": "PARAM_ERROR", "message": message}

        if product not in ("native", "h5", "jsapi") or not isinstance(body, dict):
            return bad("unknown product or no JSON object")
        if body.get("appid") != self.appid or body.get("mchid") != self.mchid:
            return 400, {"code": "APPID_MCHID_NOT_MATCH", "message": "appid和mch_id不匹配"}
        no, description = body.get("out_trade_no"), body.get("description")
        if not isinstance(no, str) or not 6 <= len(no) <= 32:
            return bad("out_trade_no must be 6 to 32 characters")
        if not isinstance(description, str) or not 0 < len(description.encode()) <= 127:
            return bad("description must be 1 to 127 bytes")
        amount = body.get("amount") or {}
        if not isinstance(amount.get("total"), int) or amount["total"] <= 0:
            return bad("amount.total must be a positive integer of fen")
        if amount.get("currency", "CNY") != "CNY":
            return bad("currency must be CNY")
        notify = body.get("notify_url")
        if (
            not isinstance(notify, str)
            or not notify.startswith(("https://", "http://"))
            or "?" in notify
        ):
            return bad("notify_url must be an absolute URL without a query")
        try:
            expires = datetime.fromisoformat(body["time_expire"])
        except (KeyError, TypeError, ValueError):
            return bad("time_expire must be RFC3339")
        if expires.utcoffset() is None:
            return bad("time_expire needs a time zone")
        scene = body.get("scene_info") or {}
        if product == "h5" and (
            not scene.get("payer_client_ip") or not scene.get("h5_info", {}).get("type")
        ):
            return bad("scene_info.payer_client_ip and h5_info.type are required for H5")
        if product == "jsapi" and not (body.get("payer") or {}).get("openid"):
            return bad("payer.openid is required for JSAPI")
        trade = self.transactions.get(no)
        if trade is not None and trade["trade_state"] != "NOTPAY":
            return 400, {"code": "ORDERPAID", "message": "该订单已支付"}
        token = secrets.token_urlsafe(8)
        self.transactions[no] = {
            "appid": self.appid,
            "mchid": self.mchid,
            "out_trade_no": no,
            "trade_type": {"native": "NATIVE", "h5": "MWEB", "jsapi": "JSAPI"}[product],
            "trade_state": "NOTPAY",
            "trade_state_desc": "订单未支付",
            "amount": {"total": amount["total"], "payer_currency": "CNY"},
            "description": description,
            "time_expire": body["time_expire"],
            "notify_url": notify,
            "scene_info": scene,
            "payer": body.get("payer") or {},
            "promotion_detail": [],
        }
        prepay = f"wx{datetime.now(CHINA):%d%H%M%S}{secrets.token_hex(12)}"
        if product == "native":
            return 200, {"code_url": f"weixin://wxpay/bizpayurl?pr={token}"}
        if product == "h5":
            url = "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb"
            return 200, {"h5_url": f"{url}?prepay_id={prepay}&package={next(_ids)}"}
        return 200, {"prepay_id": prepay}

    def _refund(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("out_refund_no"), str):
            return 400, {"code": "PARAM_ERROR", "message": "out_refund_no is required"}
        prior = self.refunds.get(body["out_refund_no"])
        if prior is not None:  # the idempotency key: the first refund, no money moved again
            return 200, prior
        trade = self.transactions.get(body.get("out_trade_no") or "")
        if trade is None:
            return 404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"}
        if trade["trade_state"] not in ("SUCCESS", "REFUND"):
            return 400, {"code": "INVALID_REQUEST", "message": "订单未支付"}
        amount = body.get("amount") or {}
        refund, total = amount.get("refund"), amount.get("total")
        if total != trade["amount"]["total"] or amount.get("currency") != "CNY":
            return 400, {"code": "INVALID_REQUEST", "message": "订单金额或币种与原订单不一致"}
        if not isinstance(refund, int) or refund <= 0:
            return 400, {"code": "PARAM_ERROR", "message": "amount.refund must be positive"}
        if self.refunded(trade["out_trade_no"]) + refund > total:
            return 400, {"code": "INVALID_REQUEST", "message": "申请退款金额超过订单可退金额"}
        if self.balance is not None:
            if refund > self.balance:
                return 403, {"code": "NOT_ENOUGH", "message": "基本账户余额不足，请充值后重新发起"}
            self.balance -= refund
        record = {
            "refund_id": f"50{next(_ids):030d}",
            "out_refund_no": body["out_refund_no"],
            "transaction_id": trade["transaction_id"],
            "out_trade_no": trade["out_trade_no"],
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            "create_time": rfc3339(),
            "status": self.refund_outcome,
            "funds_account": "AVAILABLE",
            "reason": body.get("reason", ""),
            "notify_url": body.get("notify_url", ""),
            "amount": {
                "total": total,
                "refund": refund,
                "from": [],
                "payer_total": total,
                "payer_refund": refund,
                "settlement_refund": refund,
                "settlement_total": total,
                "discount_refund": 0,
                "currency": "CNY",
            },
            "promotion_detail": [],
        }
        if self.refund_outcome == "SUCCESS":
            record["success_time"] = rfc3339()
            trade["trade_state"] = "REFUND"
        self.refunds[record["out_refund_no"]] = record
        return 200, record
