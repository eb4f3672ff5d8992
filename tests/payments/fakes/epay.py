"""A loopback 易支付 (彩虹易支付) gateway for tests, V1 and V2, written from the protocol's rules
(payments.md §4 and the V2 document it cites), not from Kami's code: the signing rules are
restated here, so a mistake in Kami's signing fails a test instead of agreeing with itself.

V1: `GET /api.php?act=order` (merchant key in the query) and `POST /api.php?act=refund` (pid, key,
trade_no or out_trade_no, money → `{"code":1}`; no refund number, so a repeat refunds again, as
the real one does).
V2: `POST /api/pay/{create,query,refund,refundquery}`, every request checked like the platform
does: `sign_type` RSA, SHA256WithRSA over the sorted non-empty `k=v&…` with the merchant's public
key, the pid, and a `timestamp` within five minutes. Answers carry `code` 0 on success, a
`timestamp` and the platform's signature. The page payment (`GET /api/pay/submit`) is verified
the same way through `verify_submit()`.

The ledger keeps trades by `out_trade_no` and refunds; V2 refunds are keyed by `out_refund_no`
(the idempotency key): a repeat answers the first refund and refunds nothing more (or, with
`repeat_refund = "error"`, is refused the way some builds do). No refund may exceed what is
left of the trade. `notification()` plays the notifier: the GET parameters, signed exactly as
the platform signs them.

Switches for failure tests: `answer_signing` ("platform", "none", "other-key", "tampered"),
`sign_errors`, `answer_skew` (seconds added to answer timestamps), `drop_next` (do the work,
then close the connection without an answer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import threading
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

TOLERANCE = 300


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey, *, pkcs8: bool = False) -> str:
    fmt = (
        serialization.PrivateFormat.PKCS8
        if pkcs8
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def public_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def bare_base64(pem: str) -> str:
    """A key as the merchant console shows it: the PEM body on one line, no markers."""
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def php_string(value: Any) -> str | None:
    """How PHP prints a value into the signed string; None for what it leaves out."""
    if value is None or value is False or isinstance(value, list | dict):
        return None
    if value is True:
        return "1"
    return str(value)


def content(params: dict[str, Any]) -> str:
    """The 彩虹 rule: skip sign, sign_type and empty values; ksort; `k=v` joined with `&`."""
    pairs = []
    for k in sorted(params, key=lambda k: k.encode()):
        text = php_string(params[k])
        if k in ("sign", "sign_type") or text is None or text == "":
            continue
        pairs.append(f"{k}={text}")
    return "&".join(pairs)


def md5_sign(params: dict[str, str], key: str) -> str:
    return hashlib.md5((content(params) + key).encode()).hexdigest()


def rsa_sign(params: dict[str, Any], key: rsa.RSAPrivateKey) -> str:
    data = content(params).encode()
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_ok(params: dict[str, Any], key: rsa.RSAPublicKey) -> bool:
    try:
        signature = base64.b64decode(str(params.get("sign", "")), validate=True)
        key.verify(signature, content(params).encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def to_fen(money: str) -> int | None:
    try:
        value = Decimal(money)
    except InvalidOperation:
        return None
    if not value.is_finite() or value != value.quantize(Decimal("0.01")):
        return None
    return int(value * 100)


def to_yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


@dataclass
class Trade:
    out_trade_no: str
    trade_no: str
    money_fen: int
    status: int  # 0 unpaid, 1 paid, 2 fully refunded
    type: str = "alipay"
    name: str = "商品"
    refunded_fen: int = 0


@dataclass
class Refund:
    refund_no: str  # the platform's number
    out_refund_no: str | None  # the merchant's (V2 only): the idempotency key
    trade_no: str
    out_trade_no: str
    money_fen: int
    version: int


class EpayFake:
    def __init__(
        self,
        *,
        pid: str,
        key: str | None = None,
        merchant_public_key: rsa.RSAPublicKey | None = None,
        platform_key: rsa.RSAPrivateKey | None = None,
        v1_refund: bool = True,
    ) -> None:
        self.pid = pid
        self.key = key
        self.merchant_public_key = merchant_public_key
        self.platform_key = platform_key
        self.v1_refund = v1_refund
        self.trades: dict[str, Trade] = {}
        self.refunds: list[Refund] = []
        self.accepted: list[tuple[str, dict[str, str]]] = []  # requests that passed the checks
        self.refused: list[tuple[str, str]] = []  # (path, why) of requests refused
        self.answer_signing = "platform"
        self.sign_errors = True
        self.answer_skew = 0
        self.drop_next = False
        self.repeat_refund = "same"
        self.create_answer = ("qrcode", "weixin://wxpay/bizpayurl?pr=FAKE")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> EpayFake:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- what tests do ---------------------------------------------------------------------------
    def pay(self, out_trade_no: str, money_fen: int, trade_no: str | None = None) -> Trade:
        """The buyer pays (the notification may or may not follow)."""
        with self._lock:
            trade = self.trades.get(out_trade_no)
            if trade is None:
                trade = Trade(out_trade_no, trade_no or self._number("2026"), money_fen, 0)
                self.trades[out_trade_no] = trade
            trade.status = 1
            trade.money_fen = money_fen
            return trade

    def refunds_of(self, out_trade_no: str) -> list[Refund]:
        return [r for r in self.refunds if r.out_trade_no == out_trade_no]

    def notification(
        self, out_trade_no: str, money: str, *, key: rsa.RSAPrivateKey | None = None, **extra: Any
    ) -> dict[str, str]:
        """The V2 notify GET parameters, signed as the platform signs them."""
        trade = self.trades.get(out_trade_no)
        params: dict[str, Any] = {
            "pid": self.pid,
            "trade_no": trade.trade_no if trade else f"T{out_trade_no}",
            "out_trade_no": out_trade_no,
            "type": "alipay",
            "trade_status": "TRADE_SUCCESS",
            "name": "腾讯视频 VIP",
            "money": money,
            "param": "",
            "buyer": "buyer@example.com",
            "timestamp": str(int(time.time())),
            **extra,
        }
        signer = key or self.platform_key
        assert signer is not None
        params["sign"] = rsa_sign(params, signer)
        params["sign_type"] = "RSA"
        return {k: str(v) for k, v in params.items()}

    def verify_submit(self, url: str) -> dict[str, str]:
        """Check a page-payment URL as the platform would when the browser opens it."""
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        assert parts.path == "/api/pay/submit", parts.path
        problem = self._v2_problem(params)
        assert problem is None, problem
        return params

    # -- the platform ----------------------------------------------------------------------------
    def _number(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    def _v2_problem(self, params: dict[str, str]) -> str | None:
        if params.get("sign_type") not in ("RSA", "SHA256WithRSA"):
            return "sign_type must be RSA"
        if params.get("pid") != self.pid:
            return "pid is not a merchant here"
        ts = params.get("timestamp", "")
        if not ts.isdigit() or abs(int(ts) - time.time()) > TOLERANCE:
            return "timestamp missing or not fresh"
        assert self.merchant_public_key is not None
        if not rsa_ok(params, self.merchant_public_key):
            return "signature does not verify with the merchant public key"
        return None

    def _answer(self, fields: dict[str, Any]) -> dict[str, Any]:
        ok = fields.get("code") == 0
        answer = {**fields, "timestamp": str(int(time.time()) + self.answer_skew)}
        if not ok and not self.sign_errors:
            return answer
        if self.answer_signing == "none":
            return answer
        assert self.platform_key is not None
        signer = new_key() if self.answer_signing == "other-key" else self.platform_key
        answer["sign"] = rsa_sign(answer, signer)
        answer["sign_type"] = "RSA"
        if self.answer_signing == "tampered":
            answer["msg"] = f"{answer.get('msg', '')}!"
        return answer

    def _trade_of(self, params: dict[str, str]) -> Trade | None:
        if params.get("trade_no"):
            return next((t for t in self.trades.values() if t.trade_no == params["trade_no"]), None)
        return self.trades.get(params.get("out_trade_no", ""))

    def _refund(
        self, trade: Trade | None, money: str, out_refund_no: str | None, version: int
    ) -> Refund | str:
        fen = to_fen(money)
        if trade is None:
            return "订单编号不存在"
        if trade.status == 0:
            return "订单未支付，无法退款"
        if fen is None or fen <= 0:
            return "退款金额不合法"
        if trade.refunded_fen + fen > trade.money_fen:
            return "退款金额超出订单可退金额"
        refund = Refund(
            self._number("RF"), out_refund_no, trade.trade_no, trade.out_trade_no, fen, version
        )
        trade.refunded_fen += fen
        if trade.refunded_fen == trade.money_fen:
            trade.status = 2
        self.refunds.append(refund)
        return refund

    def _v1(self, params: dict[str, str]) -> dict[str, Any]:
        if params.get("pid") != self.pid or not hmac.compare_digest(
            params.get("key", "").encode(), (self.key or "").encode()
        ):
            return {"code": -1, "msg": "KEY校验失败"}
        trade = self._trade_of(params)
        if params.get("act") == "order":
            if trade is None:
                return {"code": -1, "msg": "订单编号不存在"}
            return {
                "code": 1,
                "msg": "查询订单号成功！",
                "trade_no": trade.trade_no,
                "out_trade_no": trade.out_trade_no,
                "type": trade.type,
                "pid": self.pid,
                "name": trade.name,
                "money": to_yuan(trade.money_fen),
                "status": 1 if trade.status else 0,
            }
        if params.get("act") == "refund" and self.v1_refund:
            refund = self._refund(trade, params.get("money", ""), None, 1)
            if isinstance(refund, str):
                return {"code": -1, "msg": refund}
            return {"code": 1, "msg": "退款成功！"}
        return {"code": -5, "msg": "No Act!"}

    def _v2(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        if path == "/api/pay/create":
            for name in ("type", "method", "out_trade_no", "notify_url", "name", "money"):
                if not params.get(name):
                    return {"code": -1, "msg": f"{name}不能为空"}
            fen = to_fen(params["money"])
            if fen is None:
                return {"code": -1, "msg": "金额不合法"}
            new = Trade(params["out_trade_no"], self._number("2026"), fen, 0, params["type"])
            created = self.trades.setdefault(new.out_trade_no, new)
            kind, info = self.create_answer
            return {
                "code": 0,
                "msg": "succ",
                "trade_no": created.trade_no,
                "pay_type": kind,
                "pay_info": info,
            }
        if path == "/api/pay/query":
            trade = self._trade_of(params)
            if trade is None:
                return {"code": -1, "msg": "订单编号不存在"}
            return {
                "code": 0,
                "msg": "succ",
                "trade_no": trade.trade_no,
                "out_trade_no": trade.out_trade_no,
                "api_trade_no": f"API{trade.trade_no}",
                "type": trade.type,
                "status": trade.status,
                "pid": int(self.pid) if self.pid.isdigit() else self.pid,
                "addtime": "2026-07-19 10:00:00",
                "endtime": "2026-07-19 10:00:30" if trade.status else "",
                "name": trade.name,
                "money": to_yuan(trade.money_fen),
                "refundmoney": to_yuan(trade.refunded_fen),
                "param": "",
                "buyer": "",
                "clientip": "127.0.0.1",
            }
        if path == "/api/pay/refund":
            out_refund_no = params.get("out_refund_no") or None
            prior = next((r for r in self.refunds if r.out_refund_no == out_refund_no), None)
            if prior is not None and out_refund_no is not None:
                if self.repeat_refund == "error":
                    return {"code": -1, "msg": "退款单号已存在"}
                return self._refund_answer(prior)
            refund = self._refund(self._trade_of(params), params.get("money", ""), out_refund_no, 2)
            if isinstance(refund, str):
                return {"code": -1, "msg": refund}
            return self._refund_answer(refund)
        if path == "/api/pay/refundquery":
            found = next(
                (
                    r
                    for r in self.refunds
                    if r.version == 2
                    and (
                        r.out_refund_no == params.get("out_refund_no")
                        or r.refund_no == params.get("refund_no")
                    )
                ),
                None,
            )
            if found is None:
                return {"code": -1, "msg": "退款记录不存在"}
            return {
                **self._refund_answer(found),
                "out_trade_no": found.out_trade_no,
                "status": 1,
                "addtime": "2026-07-19 11:00:00",
            }
        return {"code": -1, "msg": "接口不存在"}

    def _refund_answer(self, refund: Refund) -> dict[str, Any]:
        trade = self.trades[refund.out_trade_no]
        return {
            "code": 0,
            "msg": "退款成功",
            "refund_no": refund.refund_no,
            "out_refund_no": refund.out_refund_no,
            "trade_no": refund.trade_no,
            "money": to_yuan(refund.money_fen),
            "reducemoney": to_yuan(trade.refunded_fen),
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, data: dict[str, Any]) -> None:
                body = json.dumps(data, ensure_ascii=False).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _serve(self, params: dict[str, str]) -> None:
                path = urlsplit(self.path).path
                with fake._lock:
                    if path == "/api.php":
                        answer = fake._v1(params)
                    elif path.startswith("/api/pay/"):
                        problem = fake._v2_problem(params)
                        if problem is not None:
                            fake.refused.append((path, problem))
                            answer = fake._answer({"code": -1, "msg": f"签名校验失败: {problem}"})
                        else:
                            fake.accepted.append((path, params))
                            answer = fake._answer(fake._v2(path, params))
                    else:
                        answer = {"code": -1, "msg": "not found"}
                    drop, fake.drop_next = fake.drop_next, False
                if drop:
                    self.close_connection = True  # the work is done; the answer is lost
                    return
                self._reply(answer)

            def do_GET(self) -> None:
                self._serve(dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True)))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = self.rfile.read(length).decode()
                params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
                params.update(parse_qsl(form, keep_blank_values=True))
                self._serve(params)

        return Handler
