"""Server-rendered storefront pages: catalog, sandbox pay page, order page."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from kami import catalog, fulfilment, orders, payments, vault
from kami.kernel.errors import NotFound
from kami.kernel.ids import new_token
from kami.kernel.money import Money
from kami.web.deps import DEVICE_COOKIE, ShopDep, client_ip
from kami.web.inputs import CheckedRoute

router = APIRouter(include_in_schema=False, route_class=CheckedRoute)
templates = Jinja2Templates(directory=str(resources.files("kami.web.storefront") / "templates"))
templates.env.globals["money"] = lambda minor, currency: Money(minor, currency).format()


def _render(request: Request, name: str, shop: fulfilment.Shop, **context: Any) -> HTMLResponse:
    context.setdefault("shop_name", shop.shop_name)
    response = templates.TemplateResponse(request, name, context)
    if DEVICE_COOKIE not in request.cookies:
        # Identifies the device for per-buyer caps on unpaid orders; it authorises nothing.
        response.set_cookie(
            DEVICE_COOKIE,
            new_token(16),
            max_age=365 * 86400,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return response


@router.get("/", response_class=HTMLResponse)
def home(request: Request, shop: ShopDep) -> HTMLResponse:
    with shop.db.read() as s:
        tree = catalog.public_tree(s, vault.count_available(s), shop.gateways.currencies())
    return _render(request, "home.html", shop, tree=tree, gateways=shop.gateways.names())


@router.get("/orders/{order_no}", response_class=HTMLResponse)
def order_page(order_no: str, request: Request, shop: ShopDep) -> HTMLResponse:
    # The page holds no order data: its script reads the token from the URL fragment and asks
    # the API, so the page itself reveals nothing to whoever knows only the order number.
    return _render(request, "order.html", shop, order_no=order_no)


def _sandbox(shop: fulfilment.Shop) -> payments.SandboxGateway:
    gateway = shop.gateways.get("sandbox")
    assert isinstance(gateway, payments.SandboxGateway)
    return gateway


@router.get("/pay/sandbox/{order_no}", response_class=HTMLResponse)
def sandbox_page(order_no: str, request: Request, shop: ShopDep) -> HTMLResponse:
    _sandbox(shop)
    with shop.db.read() as s:
        order = orders.get_order(s, order_no)
    return _render(request, "pay_sandbox.html", shop, order=order)


@router.post("/pay/sandbox/{order_no}")
def sandbox_pay(
    order_no: str, request: Request, shop: ShopDep, notify: bool = True
) -> dict[str, str]:
    """Plays the channel: books the payment, then signs a notification and sends it through the
    one notify path. `?notify=false` loses the callback, as real channels sometimes do; the
    query-and-fix sweep then finds the payment in the sandbox's books."""
    gateway = _sandbox(shop)
    with shop.db.write() as s:
        order = orders.find_order(s, order_no)
        if order is None:
            raise NotFound(f"no order {order_no!r}", where="order_no", slug="order-not-found")
        trade_no = payments.record_sandbox_trade(
            s, order.order_no, order.amount_minor, order.currency
        )
    if not notify:
        return {"verdict": "not_notified", "reason": "", "trade_no": trade_no}
    body = json.dumps(
        {
            "order_no": order.order_no,
            "trade_no": trade_no,
            "amount_minor": order.amount_minor,
            "currency": order.currency,
            "status": "paid",
        }
    ).encode()
    raw = payments.RawNotification(
        gateway="sandbox",
        method="POST",
        headers={"x-sandbox-signature": gateway.sign(body), "content-type": "application/json"},
        query={},
        body=body,
        remote_addr=client_ip(request),
    )
    outcome = fulfilment.handle_notification(shop, raw)
    return {"verdict": outcome.verdict, "reason": outcome.reason or "", "trade_no": trade_no}
