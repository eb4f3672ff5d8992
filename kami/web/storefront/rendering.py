"""Rendering storefront pages: templates in the request's language, cookies, CSRF.

Cookies are HttpOnly and SameSite=Lax, and Secure whenever the shop is served over HTTPS
(directly, or behind a proxy: the public URL says so). Every form carries a CSRF token that
must equal the `kami_csrf` cookie (double submit): a page on another site can make the browser
send the cookie but cannot read it to put it in the form.
"""

from __future__ import annotations

import hmac
from importlib import resources
from typing import Any

import jinja2
import segno
from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from kami import fulfilment
from kami.kernel.errors import Forbidden
from kami.kernel.ids import new_token
from kami.web import i18n, localtime
from kami.web.deps import DEVICE_COOKIE

CSRF_COOKIE = "kami_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
LANG_COOKIE = "kami_lang"
YEAR = 365 * 86400


def N_(message: str) -> str:
    """Marks a message for extraction; it is translated where it is shown."""
    return message


STATUS_LABELS = {
    "pending": N_("Waiting for payment"),
    "paid": N_("Paid, delivering"),
    "awaiting_stock": N_("Paid, waiting for stock"),
    "delivered": N_("Delivered"),
    "expired": N_("Expired"),
    "cancelled": N_("Cancelled"),
    "refunded": N_("Refunded"),
    "partially_refunded": N_("Partly refunded"),
    "failed": N_("Failed"),
}
# Payment accounts are named by the seller; the usual channel prefixes get a buyer's name.
GATEWAY_LABELS = {
    "alipay": N_("Alipay"),
    "wechat": N_("WeChat Pay"),
    "wxpay": N_("WeChat Pay"),
    "stripe": N_("Card (Stripe)"),
    "epay": N_("Alipay / WeChat Pay"),
    "sandbox": N_("Sandbox (test payment)"),
}

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("kami.web.storefront") / "templates")),
        autoescape=True,  # keys, product texts and buyer input are untrusted
        extensions=["jinja2.ext.i18n"],
    )
)


def qr_data_uri(text: str) -> str:
    """A QR code of `text` as an SVG data URI, for an <img> (the CSP allows data: images)."""
    uri: str = segno.make(text, error="m").svg_data_uri(scale=6, border=2)
    return uri


templates.env.filters["qr"] = qr_data_uri


def locale_of(request: Request) -> str:
    return i18n.pick(
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
    )


def translator(request: Request) -> i18n.Translator:
    return i18n.Translator(locale_of(request))


def secure_cookies(request: Request, shop: fulfilment.Shop) -> bool:
    return request.url.scheme == "https" or shop.public_url.startswith("https://")


def csrf_value(request: Request) -> str:
    """The request's CSRF token: the cookie's, or a new one that the response will set."""
    state = request.state
    if not getattr(state, "csrf", None):
        cookie = request.cookies.get(CSRF_COOKIE, "")
        state.csrf = cookie if _well_formed(cookie) else new_token(24)
    token: str = state.csrf
    return token


def _well_formed(value: str) -> bool:
    return 16 <= len(value) <= 64 and value.replace("-", "").replace("_", "").isalnum()


def check_csrf(request: Request, submitted: str | None) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = submitted or request.headers.get(CSRF_HEADER, "")
    # Bytes: compare_digest refuses a str that is not ASCII (a TypeError, and a 500 for anyone).
    if not (
        _well_formed(cookie) and given and hmac.compare_digest(cookie.encode(), given.encode())
    ):
        raise Forbidden(
            "the form's CSRF token is missing or does not match; reload the page and try again",
            where=CSRF_FIELD,
            slug="csrf-failed",
        )


def set_cookies(request: Request, response: Response, shop: fulfilment.Shop) -> None:
    secure = secure_cookies(request, shop)
    if DEVICE_COOKIE not in request.cookies:
        # Identifies the device for per-buyer caps on unpaid orders; it authorises nothing.
        response.set_cookie(
            DEVICE_COOKIE, new_token(16), max_age=YEAR, httponly=True, samesite="lax", secure=secure
        )
    token = csrf_value(request)
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(
            CSRF_COOKIE, token, max_age=YEAR, httponly=True, samesite="lax", secure=secure
        )
    chosen = request.query_params.get("lang")
    if chosen and i18n.pick(chosen) != request.cookies.get(LANG_COOKIE):
        response.set_cookie(
            LANG_COOKIE,
            i18n.pick(chosen),
            max_age=YEAR,
            httponly=True,
            samesite="lax",
            secure=secure,
        )


def gateway_label(t: i18n.Translator, name: str) -> str:
    for prefix, label in GATEWAY_LABELS.items():
        if name.lower().startswith(prefix):
            return t.gettext(label)
    return name


def render(
    request: Request,
    name: str,
    shop: fulfilment.Shop,
    *,
    status_code: int = 200,
    no_store: bool = False,
    **context: Any,
) -> HTMLResponse:
    t = translator(request)
    context.update(
        shop_name=shop.shop_name,
        locale=t.locale,
        html_lang=i18n.HTML_LANG[t.locale],
        locales=i18n.LOCALES,
        _=t.gettext,
        gettext=t.gettext,
        ngettext=t.ngettext,
        money=t.money,
        csrf_field=CSRF_FIELD,
        csrf_token=csrf_value(request),
        path=request.url.path,
        status_label=lambda status: (
            t.gettext(STATUS_LABELS[status]) if status in STATUS_LABELS else status
        ),
        gateway_label=lambda name: gateway_label(t, name),
        **localtime.helpers(shop.timezone),
    )
    response: HTMLResponse = templates.TemplateResponse(
        request, name, context, status_code=status_code
    )
    if no_store:
        response.headers["Cache-Control"] = "no-store"
    set_cookies(request, response, shop)
    return response
