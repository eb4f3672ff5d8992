"""Checkout and payment pages: the buyer's form, the pay page, the sandbox channel's page.

Checkout is a plain HTML form (it works without script, as some in-app browsers need). A
placed order goes to its pay page with the access token in the URL fragment; the sandbox page's
form redirects to the order page, and the browser carries the fragment over the redirect.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from kami import catalog, fulfilment, orders, payments
from kami.kernel.errors import KamiError, NotFound
from kami.kernel.ids import new_token
from kami.web import ordering
from kami.web.deps import ShopDep, client_ip, device_id, rate_limit_on_loop
from kami.web.i18n import Translator
from kami.web.inputs import CheckedRoute, check_text
from kami.web.storefront.rendering import CSRF_FIELD, check_csrf, render, translator
from kami.web.storefront.shelf import find_sku

router = APIRouter(include_in_schema=False, route_class=CheckedRoute)

INPUT_PREFIX = "input."


def _checkout(
    request: Request,
    shop: fulfilment.Shop,
    product: catalog.PublicProduct,
    sku: catalog.PublicSku,
    *,
    values: dict[str, str] | None = None,
    error: str | None = None,
    detail: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "checkout.html",
        shop,
        product=product,
        sku=sku,
        values=values or {"quantity": str(sku.min_quantity)},
        error=error,
        detail=detail,
        idempotency=new_token(16),
        status_code=status_code,
        input_prefix=INPUT_PREFIX,
    )


@router.get("/checkout/{sku_code}", response_class=HTMLResponse)
def checkout_page(sku_code: str, request: Request, shop: ShopDep) -> HTMLResponse:
    product, sku = find_sku(shop, sku_code)
    return _checkout(request, shop, product, sku)


def _problem_text(t: Translator, sku: catalog.PublicSku, where: str, slug: str) -> str:
    """The buyer's language for what went wrong; the domain's own words go beside it."""
    if where.startswith("buyer_input."):
        name = where.removeprefix("buyer_input.")
        label = next((f.get("label", name) for f in sku.input_fields if f["name"] == name), name)
        return t.gettext("Please check “%(field)s”.", field=label)
    known = {
        "email": t.gettext("Enter a valid e-mail address."),
        "quantity": t.gettext(
            "Choose a quantity from %(low)s to %(high)s.",
            low=sku.min_quantity,
            high=sku.max_quantity,
        ),
        "gateway": t.gettext("Choose one of the payment methods offered."),
        "sku": t.gettext("Sorry, this item is sold out or no longer on sale."),
        "too-many-open-orders": t.gettext(
            "You already have unpaid orders of this item: pay or cancel one first."
        ),
        "limit-reached": t.gettext("You have reached the limit per buyer for this item."),
        "rate-limited": t.gettext("Too many attempts. Please wait a minute and try again."),
    }
    return known.get(slug) or known.get(where) or t.gettext("The order could not be placed.")


@router.post("/checkout/{sku_code}", response_class=HTMLResponse)
async def checkout_submit(sku_code: str, request: Request, shop: ShopDep) -> Response:
    """The form's checkout goes the way the JSON API's does (`web.ordering`): on the event loop,
    a flash sale's first and placed together with the others of its pass. The
    pages themselves are built on a worker thread, as every page is."""
    form = await request.form()
    fields = {k: check_text(str(v), k) for k, v in form.items() if isinstance(v, str)}
    check_csrf(request, fields.get(CSRF_FIELD))
    product, sku = await run_in_threadpool(find_sku, shop, sku_code)
    t = translator(request)
    buyer_input = {
        k.removeprefix(INPUT_PREFIX): v.strip()
        for k, v in fields.items()
        if k.startswith(INPUT_PREFIX) and v.strip()
    }
    try:
        quantity = int(fields.get("quantity") or sku.min_quantity)
    except ValueError:
        quantity = 0
    try:
        data = orders.OrderIn(
            sku=sku.code,
            quantity=quantity,
            email=fields.get("email", "").strip(),
            gateway=fields.get("gateway", ""),
            buyer_input=buyer_input or None,
        )
        await rate_limit_on_loop(request, "orders")
        placed = await ordering.place_order(
            shop,
            data,
            idempotency_key=fields.get("idempotency") or None,
            buyer_ip=client_ip(request),
            device_id=device_id(request),
        )
    except ValidationError as exc:
        where = ".".join(str(p) for p in exc.errors()[0]["loc"])
        message = _problem_text(t, sku, where, "")
        return await run_in_threadpool(
            partial(_checkout, values=fields, error=message, status_code=422),
            request,
            shop,
            product,
            sku,
        )
    except KamiError as exc:
        message = _problem_text(t, sku, exc.where or "", exc.slug or "")
        return await run_in_threadpool(
            partial(
                _checkout, values=fields, error=message, detail=exc.detail, status_code=exc.status
            ),
            request,
            shop,
            product,
            sku,
        )
    return await run_in_threadpool(_placed, request, shop, placed)


def _placed(request: Request, shop: fulfilment.Shop, placed: fulfilment.PlacedOrder) -> Response:
    order, token = placed.order, placed.access_token
    if order.gateway == "sandbox" and placed.payment.url:
        return RedirectResponse(f"/pay/sandbox/{order.order_no}#t={token}", status_code=303)
    # A real channel: the pay page keeps the token in the browser before the buyer leaves.
    return render(
        request,
        "pay.html",
        shop,
        order=order,
        payment=placed.payment,
        order_link=f"/orders/{order.order_no}#t={token}",
        no_store=True,
    )


def _sandbox(shop: fulfilment.Shop) -> payments.SandboxGateway:
    gateway = shop.gateways.get("sandbox")
    if not isinstance(gateway, payments.SandboxGateway):
        raise NotFound("the sandbox channel is not enabled", where="gateway")
    return gateway


@router.get("/pay/sandbox/{order_no}", response_class=HTMLResponse)
def sandbox_page(order_no: str, request: Request, shop: ShopDep) -> HTMLResponse:
    _sandbox(shop)
    with shop.db.read() as s:
        order = orders.get_order(s, order_no)
    return render(request, "pay_sandbox.html", shop, order=order)


def sandbox_pay(
    shop: fulfilment.Shop, order_no: str, request: Request, *, notify: bool = True
) -> dict[str, str]:
    """Plays the channel: books the payment, then signs a notification and sends it through the
    one notify path. `notify=False` loses the callback, as real channels sometimes do; the
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


@router.post("/pay/sandbox/{order_no}")
def sandbox_pay_api(
    order_no: str, request: Request, shop: ShopDep, notify: bool = True
) -> dict[str, str]:
    """The channel's side for scripts and tests (JSON); the page posts its form to /confirm."""
    return sandbox_pay(shop, order_no, request, notify=notify)


@router.post("/pay/sandbox/{order_no}/confirm")
async def sandbox_confirm(order_no: str, request: Request, shop: ShopDep) -> Response:
    form = await request.form()
    token: Any = form.get(CSRF_FIELD)
    check_csrf(request, token if isinstance(token, str) else None)
    await run_in_threadpool(sandbox_pay, shop, order_no, request)
    # No fragment here: the browser keeps the one the form was posted with (#t=…).
    return RedirectResponse(f"/orders/{order_no}", status_code=303)
