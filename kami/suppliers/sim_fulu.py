"""The simulator's Fulu gateway (`/fulu/api/getway`): checks the sorted-characters signature and
the timestamp, books orders in the ledger, answers like the open platform and sends callbacks.

The error codes below are the simulator's own (Fulu's are not in the reference); the adapter
relies only on code 0 and on the wording "订单不存在" for an unknown order.
"""

from __future__ import annotations

import hmac
import json
from datetime import datetime, timedelta
from typing import Any

from kami.kernel.clock import utcnow
from kami.suppliers.base import HttpAnswer
from kami.suppliers.fulu import (
    CARD_ADD,
    DIRECT_ADD,
    INFO_GET,
    USER_INFO_GET,
    RawNumber,
    compact,
    encrypt_card,
    loads,
    sign,
)
from kami.suppliers.sim_callbacks import CallbackJob
from kami.suppliers.sim_ledger import Ledger, Reply, SimAccount, SimOrder, beijing, unit_price

PATH = "/fulu/api/getway"
FRESHNESS = 600  # seconds; the simulator's choice
REFUSALS = {
    "unknown_product": (3002, "商品不存在"),
    "kind_mismatch": (3004, "商品类型与接口不符"),
    "price_above_max": (3005, "超过限价"),
    "insufficient_balance": (3001, "账户余额不足"),
    "out_of_stock": (3003, "库存不足，下单失败"),
}
_STATE = {"processing": "processing", "succeeded": "success", "failed": "failed"}


def _answer(account: SimAccount | None, code: int, message: str, result: Any = None) -> Reply:
    envelope: dict[str, Any] = {
        "code": code,
        "message": message,
        "result": compact(result) if result is not None else "",
    }
    envelope["sign"] = sign(envelope, account.secret if account else "")
    return Reply(200, compact(envelope).encode())


def _fresh(timestamp: Any) -> bool:
    try:
        then = datetime.strptime(str(timestamp), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    now = (utcnow() + timedelta(hours=8)).replace(tzinfo=None)
    return abs((now - then).total_seconds()) <= FRESHNESS


def order_json(order: SimOrder, secret: str, *, with_cards: bool) -> dict[str, Any]:
    unit = order.amount_minor // order.quantity
    cards = None
    if with_cards and order.status == "succeeded" and order.kind == "card":
        cards = [
            {
                "card_number": encrypt_card(number, secret),
                "card_pwd": encrypt_card(password, secret),
                "card_type": "0",
                "card_deadline": "2099-12-31 23:59:59",
            }
            for number, password in order.cards
        ]
    pid = order.product_id
    return {
        "order_id": order.supplier_order_no,
        "product_id": int(pid) if pid.isdigit() else pid,
        "product_name": order.product_name,
        "customer_order_no": order.customer_order_no,
        "charge_account": order.target or "",
        "buy_num": order.quantity,
        "order_type": 3 if order.kind == "card" else 4,
        "order_price": RawNumber(unit_price(unit, 4)),
        "order_state": _STATE[order.status],
        "create_time": beijing(order.created_at),
        "finish_time": beijing(order.finished_at),
        "area": "",
        "server": "",
        "type": "",
        "operator_serial_number": f"SIMOP{order.supplier_order_no}",
        "cards": cards,
    }


def handle(ledger: Ledger, body: bytes) -> Reply:
    try:
        data = loads(body.decode())
    except (UnicodeDecodeError, ValueError):
        return _answer(None, 1002, "参数格式错误: 不是JSON")
    if not isinstance(data, dict):
        return _answer(None, 1002, "参数格式错误")
    account = ledger.account("fulu", str(data.get("app_key", "")))
    if account is None:
        return _answer(None, 1003, "app_key无效")
    given = data.get("sign")
    if not isinstance(given, str) or not hmac.compare_digest(
        given.lower(), sign(data, account.secret)
    ):
        return _answer(account, 1001, "签名错误")
    if not _fresh(data.get("timestamp")):
        return _answer(account, 1004, "时间戳无效或已过期")
    try:
        biz = json.loads(str(data.get("biz_content")))
    except ValueError:
        biz = None
    if not isinstance(biz, dict):
        return _answer(account, 1002, "biz_content格式错误")
    method = data.get("method")
    if method in (DIRECT_ADD, CARD_ADD):
        return _add(ledger, account, biz, "recharge" if method == DIRECT_ADD else "card")
    if method == INFO_GET:
        order = ledger.find("fulu", str(biz.get("customer_order_no", "")))
        if order is None or order.account != account.ref:
            return _answer(account, 2002, "订单不存在")
        result = order_json(order, account.secret, with_cards=True)
        return _answer(account, 0, "接口调用成功", result)
    if method == USER_INFO_GET:
        balance = RawNumber(unit_price(account.balance_minor, 4))
        return _answer(account, 0, "接口调用成功", {"name": account.account_id, "balance": balance})
    return _answer(account, 1005, f"不支持的方法 {method}")


def _add(ledger: Ledger, account: SimAccount, biz: dict[str, Any], kind: str) -> Reply:
    no = biz.get("customer_order_no")
    product_id = biz.get("product_id")
    buy_num = biz.get("buy_num")
    target = biz.get("charge_account")
    if not isinstance(no, str) or not 1 <= len(no) <= 50:
        return _answer(account, 1002, "customer_order_no无效")
    if isinstance(product_id, bool) or not isinstance(product_id, int):
        return _answer(account, 1002, "product_id无效")
    if isinstance(buy_num, bool) or not isinstance(buy_num, int) or buy_num < 1:
        return _answer(account, 1002, "buy_num无效")
    if kind == "recharge" and (not isinstance(target, str) or not target):
        return _answer(account, 1002, "charge_account不能为空")
    booking = ledger.book(
        account, no, str(product_id), buy_num, target if kind == "recharge" else None, kind
    )
    if booking.duplicate:
        return _answer(account, 2001, "外部订单号已存在")
    if booking.refusal is not None or booking.order is None:
        code, message = REFUSALS[booking.refusal or "out_of_stock"]
        return _hang(_answer(account, code, message), booking.hang)
    result = order_json(booking.order, account.secret, with_cards=False)
    return _hang(_answer(account, 0, "接口调用成功", result), booking.hang)


def _hang(reply: Reply, hang: bool) -> Reply:
    return Reply(reply.status, reply.body, reply.content_type, reply.headers, hang)


def _acked(answer: HttpAnswer) -> bool:
    return answer.status == 200 and answer.body.strip() == b"success"


def callback(ledger: Ledger, order: SimOrder, url: str) -> CallbackJob:
    """The callback Fulu POSTs when an order is final (the observed field set; no cards)."""
    account = ledger.account_of(order)
    unit = order.amount_minor // order.quantity
    data: dict[str, Any] = {
        "order_id": order.supplier_order_no,
        "charge_finish_time": beijing(order.finished_at),
        "customer_order_no": order.customer_order_no,
        "order_status": _STATE[order.status],
        "recharge_description": "充值成功" if order.status == "succeeded" else "充值失败",
        "product_id": order.product_id,
        "price": unit_price(unit, 4),
        "buy_num": str(order.quantity),
        "operator_serial_number": f"SIMOP{order.supplier_order_no}",
    }
    data["sign"] = sign(data, account.secret)
    return CallbackJob(
        url=url,
        body=compact(data).encode(),
        headers={"Content-Type": "application/json"},
        acknowledged=_acked,
        on_attempt=lambda acked: ledger.note_callback(order, acked),
    )
