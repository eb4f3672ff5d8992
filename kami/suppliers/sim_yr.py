"""The simulator's 大猿人 platform (`/yr/yrapi.php/index/recharge|check|user`): checks the
upper-case MD5 signature, books orders, answers `{"errno","errmsg","data"}` and sends form
callbacks to each order's notify_url. `index/user` (balance) is the simulator's own."""

from __future__ import annotations

import hmac
import json
import urllib.parse
from typing import Any

from kami.suppliers.base import HttpAnswer, to_minor
from kami.suppliers.dayuanren import sign
from kami.suppliers.sim_callbacks import CallbackJob
from kami.suppliers.sim_ledger import Ledger, Reply, SimAccount, SimOrder, beijing, unit_price

PREFIX = "/yr/yrapi.php/"
REFUSALS = {
    "unknown_product": "产品不存在或已下架",
    "kind_mismatch": "产品类型错误",
    "price_above_max": "成本价超过限价",
    "insufficient_balance": "余额不足",
    "out_of_stock": "通道维护，下单失败",
}
_STATE = {"processing": "0", "succeeded": "1", "failed": "2"}


def _answer(errno: int, errmsg: str, data: Any = None, *, hang: bool = False) -> Reply:
    body = json.dumps({"errno": errno, "errmsg": errmsg, "data": data}, ensure_ascii=False)
    return Reply(200, body.encode(), hang=hang)


def order_fields(order: SimOrder) -> dict[str, str]:
    done = order.status == "succeeded"
    return {
        "order_number": order.supplier_order_no,
        "out_trade_num": order.customer_order_no,
        "create_time": beijing(order.created_at),
        "mobile": order.target or "",
        "product_id": order.product_id,
        "charge_amount": unit_price(order.amount_minor) if done else "0.00",
        "charge_kami": "\n".join(f"{c},{p}" for c, p in order.cards) if done else "",
        "state": _STATE[order.status],
        "total_price": unit_price(order.amount_minor),
    }


def handle(ledger: Ledger, path: str, body: bytes) -> Reply:
    action = path.removeprefix(PREFIX).strip("/")
    try:
        params = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
    except UnicodeDecodeError:
        return _answer(1, "参数错误")
    account = ledger.account("dayuanren", params.get("userid", ""))
    if account is None:
        return _answer(1, "商户不存在")
    if not hmac.compare_digest(params.get("sign", "").upper(), sign(params, account.secret)):
        return _answer(1, "签名错误")
    if action == "index/recharge":
        return _recharge(ledger, account, params)
    if action == "index/check":
        orders = []
        for no in params.get("out_trade_nums", "").split(","):
            order = ledger.find("dayuanren", no.strip())
            if order is not None and order.account == account.ref:
                orders.append(order_fields(order))
        return _answer(0, "ok", orders)
    if action == "index/user":
        return _answer(0, "ok", {"balance": unit_price(account.balance_minor)})
    return Reply(404, b'{"errno":404,"errmsg":"not found","data":null}')


def _recharge(ledger: Ledger, account: SimAccount, params: dict[str, str]) -> Reply:
    no = params.get("out_trade_num", "")
    product_id = params.get("product_id", "")
    if not 1 <= len(no) <= 50 or not product_id:
        return _answer(1, "out_trade_num或product_id错误")
    product = ledger.products.get(product_id)
    kind = product.kind if product else "recharge"
    target = params.get("mobile") or None
    if kind == "recharge" and not target:
        return _answer(1, "充值账号不能为空")
    max_cost = to_minor(params["price"]) if params.get("price") else None
    booking = ledger.book(
        account,
        no,
        product_id,
        1,
        target,
        kind,
        notify_url=params.get("notify_url") or None,
        max_cost_minor=max_cost,
    )
    if booking.duplicate:
        return _answer(1, "订单号重复")
    if booking.refusal is not None or booking.order is None:
        return _answer(1, REFUSALS[booking.refusal or "out_of_stock"], hang=booking.hang)
    order = booking.order
    data = {
        "order_number": order.supplier_order_no,
        "out_trade_num": no,
        "mobile": order.target or "",
        "product_id": product_id,
        "total_price": unit_price(order.amount_minor),
    }
    return _answer(0, "下单成功", data, hang=booking.hang)


def _acked(answer: HttpAnswer) -> bool:
    return answer.status == 200 and answer.body.strip().lower() == b"success"


def callback(ledger: Ledger, order: SimOrder, url: str) -> CallbackJob:
    account = ledger.account_of(order)
    fields = order_fields(order)
    params = {
        "userid": account.account_id,
        "order_number": fields["order_number"],
        "out_trade_num": fields["out_trade_num"],
        "otime": beijing(order.finished_at),
        "state": fields["state"],
        "mobile": fields["mobile"],
        "remark": "充值成功" if order.status == "succeeded" else "充值失败",
        "charge_amount": fields["charge_amount"],
        "voucher": "",
        "charge_kami": fields["charge_kami"],
        "total_price": fields["total_price"],
    }
    params["sign"] = sign(params, account.secret)
    return CallbackJob(
        url=url,
        body=urllib.parse.urlencode(params).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        acknowledged=_acked,
        on_attempt=lambda acked: ledger.note_callback(order, acked),
    )
