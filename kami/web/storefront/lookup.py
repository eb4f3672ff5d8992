"""Order look-up without the e-mailed link: the address plus a one-time code sent to it.

An address alone never shows anything: the page answers the same whether or not the address
has orders, and the orders (with their links) are listed only after the code from the mailbox
is entered. The code goes out at once rather than through the outbox: nothing is owed if it is
lost (the buyer asks again), and the outbox would have to hold the code in plaintext.
"""

from __future__ import annotations

import logging
import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from kami import delivery, fulfilment, orders
from kami.kernel.errors import KamiError
from kami.web.deps import ShopDep, client_ip
from kami.web.i18n import Translator
from kami.web.inputs import CheckedRoute, check_text
from kami.web.storefront.lookup_codes import (
    CODE_TTL,
    code_refused,
    issue_code,
    normalise_email,
    redeem_code,
)
from kami.web.storefront.rendering import CSRF_FIELD, check_csrf, render, translator

router = APIRouter(include_in_schema=False, route_class=CheckedRoute)
log = logging.getLogger("kami.storefront")

_EMAIL = re.compile(r"^[^@\s\x00-\x1f]{1,64}@[^@\s\x00-\x1f]{1,189}\.[^@\s\x00-\x1f.]+$")
MAX_LISTED = 50


async def _form(request: Request) -> dict[str, str]:
    form = await request.form()
    fields = {k: check_text(str(v), k) for k, v in form.items() if isinstance(v, str)}
    check_csrf(request, fields.get(CSRF_FIELD))
    return fields


@router.get("/lookup", response_class=HTMLResponse)
def lookup_page(request: Request, shop: ShopDep) -> HTMLResponse:
    return render(request, "lookup.html", shop, step="email", email="", ticket="")


def _orders_of(shop: fulfilment.Shop, email: str) -> list[orders.OrderView]:
    found: dict[str, orders.OrderView] = {}
    with shop.db.read() as s:
        for spelling in dict.fromkeys([email.strip(), normalise_email(email)]):
            for o in orders.list_orders(s, email=spelling, limit=MAX_LISTED):
                found[o.order_no] = o
    return sorted(found.values(), key=lambda o: o.created_at, reverse=True)[:MAX_LISTED]


def _send_code(shop: fulfilment.Shop, t: Translator, email: str, ip: str | None) -> str:
    with shop.db.write() as s:
        issued = issue_code(s, shop, email, ip)
    if not _orders_of(shop, email):
        return issued.ticket  # same answer, no mail: an address without orders learns nothing
    minutes = int(CODE_TTL.total_seconds() // 60)
    text = t.gettext(
        "Your code to look up your orders is %(code)s. It is valid for %(minutes)s minutes "
        "and can be used once. If you did not ask for it, ignore this message.",
        code=issued.code,
        minutes=minutes,
    )
    subject = t.gettext("Your order look-up code")
    if shop.mailer is None:
        log.info("SMTP is not configured; look-up code not sent")
    else:
        shop.mailer.send(
            delivery.Email(to=email.strip(), subject=f"[{shop.shop_name}] {subject}", text=text)
        )
    return issued.ticket


@router.post("/lookup", response_class=HTMLResponse)
async def lookup_send(request: Request, shop: ShopDep) -> HTMLResponse:
    fields = await _form(request)
    t = translator(request)
    email = fields.get("email", "").strip()
    if not _EMAIL.match(email) or len(email) > 254:
        return render(
            request,
            "lookup.html",
            shop,
            step="email",
            email=email,
            ticket="",
            error=t.gettext("Enter a valid e-mail address."),
            status_code=422,
        )
    try:
        ticket = await run_in_threadpool(_send_code, shop, t, email, client_ip(request))
    except KamiError as exc:
        return render(
            request,
            "lookup.html",
            shop,
            step="email",
            email=email,
            ticket="",
            error=t.gettext("Too many codes were asked for. Please try again later."),
            detail=exc.detail,
            status_code=exc.status,
        )
    return render(request, "lookup.html", shop, step="code", email=email, ticket=ticket)


def _verify(shop: fulfilment.Shop, ticket: str, email: str, code: str) -> list[orders.OrderView]:
    with shop.db.write() as s:
        ok = redeem_code(s, shop, ticket, email, code)
    if not ok:
        raise code_refused()
    return _orders_of(shop, email)


@router.post("/lookup/verify", response_class=HTMLResponse)
async def lookup_verify(request: Request, shop: ShopDep) -> HTMLResponse:
    fields = await _form(request)
    t = translator(request)
    email, ticket = fields.get("email", ""), fields.get("ticket", "")
    try:
        found = await run_in_threadpool(_verify, shop, ticket, email, fields.get("code", ""))
    except KamiError:
        return render(
            request,
            "lookup.html",
            shop,
            step="code",
            email=email,
            ticket=ticket,
            error=t.gettext("The code is wrong, expired or already used."),
            status_code=422,
        )
    secret = shop.token_secret()
    listed = [
        (o, f"/orders/{o.order_no}#t={orders.access_token(secret, o.order_no)}") for o in found
    ]
    return render(request, "lookup_result.html", shop, found=listed, no_store=True)
