"""A loopback Alipay open platform (gateway.do) for tests, written from Alipay's rules, not Kami's.

It verifies every request the way the gateway does (RSA2 over all parameters except `sign` and
empty ones, `sign_type` included, with the app's public key), answers with the
`<method>_response` object signed by its own "Alipay platform" key over the exact inner JSON
text, and keeps a ledger: trades by `out_trade_no`, refunds by (`out_trade_no`,
`out_request_no`), Alipay's refund idempotency key. Like Alipay it refuses to refund more than
was paid, answers a repeated refund request with `fund_change=N` and refunds once, and closes a
fully refunded trade. It also plays Alipay's notifier: `notification()` and
`refund_notification()` return form parameters signed exactly as Alipay signs them.

The real SDK (`python-alipay-sdk`) talks to it unchanged: `ali._gateway = fake.url`.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

BEIJING = timezone(timedelta(hours=8))
SELLER_ID = "2088721033871945"


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


def public_base64(key: rsa.RSAPrivateKey) -> str:
    """The public key as Alipay's console shows it: bare base64 of the DER, one line."""
    return "".join(public_pem(key).strip().splitlines()[1:-1])


def rsa2(key: rsa.RSAPrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa2_ok(key: rsa.RSAPublicKey, data: bytes, sign: str) -> bool:
    try:
        key.verify(base64.b64decode(sign), data, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_notification(
    params: dict[str, str], key: rsa.RSAPrivateKey, charset: str = "utf-8"
) -> dict[str, str]:
    """Alipay's notify rule: all parameters but sign/sign_type, sorted, raw `k=v&…`, in charset."""
    content = "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in ("sign", "sign_type"))
    return {**params, "sign": rsa2(key, content.encode(charset)), "sign_type": "RSA2"}


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def fen(money: str) -> int:
    return int(Decimal(money) * 100)


def now_text() -> str:
    return datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Trade:
    out_trade_no: str
    trade_no: str
    total: int  # fen
    subject: str
    status: str = "WAIT_BUYER_PAY"
    refunded: int = 0
    time_expire: str | None = None
    product_code: str | None = None


@dataclass
class Refund:
    out_trade_no: str
    out_request_no: str
    amount: int  # fen
    reason: str
    gmt_refund: str


@dataclass
class Call:
    method: str
    params: dict[str, str]
    signature_ok: bool
    http: str  # GET or POST


@dataclass
class FakeAlipay:
    app_id: str
    app_public_key: rsa.RSAPublicKey
    seller_id: str = SELLER_ID
    platform_key: rsa.RSAPrivateKey = field(default_factory=new_key)
    trades: dict[str, Trade] = field(default_factory=dict)
    refunds: dict[tuple[str, str], Refund] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    # Faults for the next answer: "drop" (no HTTP answer), "garbage" (not JSON),
    # "tamper" (a signed answer changed after signing), "unsigned" (no sign member).
    fault: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- the server ------------------------------------------------------------------------------
    def start(self) -> FakeAlipay:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(b"")

            def do_POST(self) -> None:
                self._answer(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

            def _answer(self, body: bytes) -> None:
                url = urlsplit(self.path)
                status, ctype, payload = fake.handle(self.command, url.path, url.query, body)
                if status == 0:  # "drop": close without an HTTP answer
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/gateway.do"

    @property
    def platform_public_pem(self) -> str:
        return public_pem(self.platform_key)

    # -- request handling ------------------------------------------------------------------------
    def verify_request(self, params: dict[str, str]) -> bool:
        """The gateway's request rule: all but `sign` and empty values, sorted; app public key."""
        content = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v)
        charset = params.get("charset", "utf-8")
        return params.get("sign_type") == "RSA2" and rsa2_ok(
            self.app_public_key, content.encode(charset), params.get("sign", "")
        )

    def handle(self, http: str, path: str, query: str, body: bytes) -> tuple[int, str, bytes]:
        pairs = parse_qsl(query, keep_blank_values=True)
        charset = dict(pairs).get("charset", "utf-8")
        pairs += parse_qsl(body.decode("ascii"), keep_blank_values=True, encoding=charset)
        params = dict(pairs)
        method = params.get("method", "")
        ok = len(params) == len(pairs) and self.verify_request(params)
        with self.lock:
            self.calls.append(Call(method, params, ok, http))
            fault, self.fault = self.fault, None
        if path != "/gateway.do":
            return 404, "text/plain", b"not found"
        if fault == "drop":
            return 0, "", b""
        if fault == "garbage":
            return 200, "text/html", b"<html>502 Bad Gateway</html>"
        key = method.replace(".", "_") + "_response"
        if params.get("app_id") != self.app_id:
            error = {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-app-id"}
            return self._json({key: error | {"sub_msg": "无效的AppID参数"}})
        if not ok:
            error = {
                "code": "40002",
                "msg": "Invalid Arguments",
                "sub_code": "isv.invalid-signature",
            }
            return self._json({key: error | {"sub_msg": "验签出错"}})
        biz: dict[str, str] = json.loads(params.get("biz_content") or "{}")
        with self.lock:
            if method in ("alipay.trade.page.pay", "alipay.trade.wap.pay"):
                self._create(biz)
                page = f"<html><body>支付宝收银台 {biz['out_trade_no']}</body></html>"
                return 200, "text/html; charset=utf-8", page.encode()
            handlers = {
                "alipay.trade.precreate": self._precreate,
                "alipay.trade.query": self._query,
                "alipay.trade.refund": self._refund,
                "alipay.trade.fastpay.refund.query": self._refund_query,
            }
            if method not in handlers:
                error = {
                    "code": "40004",
                    "msg": "Business Failed",
                    "sub_code": "isv.invalid-method",
                }
                answer = error
            else:
                answer = handlers[method](biz)
        return self._signed(key, answer, fault)

    def _json(self, data: dict[str, Any]) -> tuple[int, str, bytes]:
        return 200, "text/html;charset=utf-8", json.dumps(data, ensure_ascii=False).encode()

    def _signed(
        self, key: str, answer: dict[str, Any], fault: str | None
    ) -> tuple[int, str, bytes]:
        inner = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
        sign = rsa2(self.platform_key, inner.encode())
        if fault == "tamper":
            inner = inner[:-1] + ',"tampered":"1"}'  # changed after it was signed
        if fault == "unsigned":
            text = f'{{"{key}":{inner}}}'
        else:
            text = f'{{"{key}":{inner},"sign":"{sign}"}}'
        return 200, "text/html;charset=utf-8", text.encode()

    @staticmethod
    def _failed(sub_code: str, sub_msg: str, **extra: str) -> dict[str, str]:
        return {
            "code": "40004",
            "msg": "Business Failed",
            "sub_code": sub_code,
            "sub_msg": sub_msg,
        } | extra

    def _create(self, biz: dict[str, str]) -> Trade:
        no = biz["out_trade_no"]
        if no not in self.trades:
            self.trades[no] = Trade(
                out_trade_no=no,
                trade_no=f"2026{next(self._numbers):024d}",
                total=fen(biz["total_amount"]),
                subject=biz.get("subject", ""),
                time_expire=biz.get("time_expire"),
                product_code=biz.get("product_code"),
            )
        return self.trades[no]

    def _precreate(self, biz: dict[str, str]) -> dict[str, str]:
        trade = self._create(biz)
        if trade.status != "WAIT_BUYER_PAY":
            return self._failed("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
        qr = f"https://qr.alipay.com/bax{trade.trade_no[-12:]}"
        return {
            "code": "10000",
            "msg": "Success",
            "out_trade_no": trade.out_trade_no,
            "qr_code": qr,
        }

    def _query(self, biz: dict[str, str]) -> dict[str, str]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None:
            return self._failed("ACQ.TRADE_NOT_EXIST", "交易不存在", buyer_pay_amount="0.00")
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "csq***@sandbox.com",
            "trade_status": trade.status,
            "total_amount": yuan(trade.total),
            "buyer_pay_amount": yuan(trade.total) if trade.status != "WAIT_BUYER_PAY" else "0.00",
        }

    def _refund(self, biz: dict[str, str]) -> dict[str, str]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None:
            return self._failed("ACQ.TRADE_NOT_EXIST", "交易不存在")
        amount, no = fen(biz["refund_amount"]), biz.get("out_request_no") or trade.out_trade_no
        done = {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "csq***@sandbox.com",
        }
        prior = self.refunds.get((trade.out_trade_no, no))
        if prior is not None:  # Alipay's idempotency: the same request refunds once
            if prior.amount != amount:
                return self._failed("ACQ.DISCORDANT_REPEAT_REQUEST", "不一致的请求重复")
            return done | {"fund_change": "N", "refund_fee": yuan(trade.refunded)}
        if trade.status == "WAIT_BUYER_PAY":
            return self._failed("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if trade.status == "TRADE_CLOSED":
            return self._failed("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
        if amount <= 0 or trade.refunded + amount > trade.total:
            return self._failed("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        trade.refunded += amount
        if trade.refunded == trade.total:
            trade.status = "TRADE_CLOSED"
        when = now_text()
        self.refunds[(trade.out_trade_no, no)] = Refund(
            trade.out_trade_no, no, amount, biz.get("refund_reason", ""), when
        )
        return done | {
            "fund_change": "Y",
            "refund_fee": yuan(trade.refunded),
            "gmt_refund_pay": when,
        }

    def _refund_query(self, biz: dict[str, str]) -> dict[str, str]:
        trade = self.trades.get(biz.get("out_trade_no", ""))
        if trade is None:
            return self._failed("ACQ.TRADE_NOT_EXIST", "交易不存在")
        refund = self.refunds.get((trade.out_trade_no, biz.get("out_request_no", "")))
        if refund is None:  # Alipay: success code, no refund fields
            return {"code": "10000", "msg": "Success"}
        return {
            "code": "10000",
            "msg": "Success",
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "out_request_no": refund.out_request_no,
            "total_amount": yuan(trade.total),
            "refund_amount": yuan(refund.amount),
            "refund_status": "REFUND_SUCCESS",
        }

    # -- Alipay's side of the buyer and the notifier ---------------------------------------------
    def pay(self, out_trade_no: str, total: int | None = None, subject: str = "") -> Trade:
        """The buyer pays: the trade is created if the cashier was never opened."""
        with self.lock:
            if out_trade_no not in self.trades:
                assert total is not None, "a trade never opened needs its total"
                self._create(
                    {"out_trade_no": out_trade_no, "total_amount": yuan(total), "subject": subject}
                )
            trade = self.trades[out_trade_no]
            trade.status = "TRADE_SUCCESS"
            return trade

    def refunded_total(self, out_trade_no: str) -> int:
        with self.lock:
            return sum(r.amount for r in self.refunds.values() if r.out_trade_no == out_trade_no)

    def notification(
        self, out_trade_no: str, *, charset: str = "utf-8", **overrides: str
    ) -> dict[str, str]:
        """The trade_status_sync notification Alipay posts for this trade, signed."""
        trade = self.trades[out_trade_no]
        amount = yuan(trade.total)
        params = {
            "gmt_create": now_text(),
            "charset": charset,
            "gmt_payment": now_text(),
            "notify_time": now_text(),
            "subject": trade.subject or "订单",
            "buyer_id": "2088722033871957",
            "invoice_amount": amount,
            "version": "1.0",
            "notify_id": f"2026{next(self._numbers):030d}",
            "fund_bill_list": json.dumps([{"amount": amount, "fundChannel": "ALIPAYACCOUNT"}]),
            "notify_type": "trade_status_sync",
            "out_trade_no": trade.out_trade_no,
            "total_amount": amount,
            "trade_status": trade.status,
            "trade_no": trade.trade_no,
            "auth_app_id": self.app_id,
            "receipt_amount": amount,
            "point_amount": "0.00",
            "buyer_pay_amount": amount,
            "app_id": self.app_id,
            "seller_id": self.seller_id,
        }
        params.update(overrides)
        return sign_notification(params, self.platform_key, charset)

    def refund_notification(self, out_trade_no: str, out_request_no: str) -> dict[str, str]:
        """The trade notify Alipay sends again after a refund: cumulative refund_fee, out_biz_no."""
        trade = self.trades[out_trade_no]
        refund = self.refunds[(out_trade_no, out_request_no)]
        extra = {
            "refund_fee": yuan(trade.refunded),
            "gmt_refund": refund.gmt_refund + ".123",
            "out_biz_no": out_request_no,
        }
        return self.notification(out_trade_no, **extra)


def form(params: dict[str, str], charset: str = "utf-8") -> bytes:
    """The notification body as Alipay posts it: form-urlencoded in the notification's charset."""
    return urlencode(params, encoding=charset).encode("ascii")
