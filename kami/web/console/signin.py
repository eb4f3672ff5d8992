"""Signing in (password, then the TOTP code when 2FA is on), signing out, enrolling 2FA."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from kami import accounts
from kami.kernel.errors import KamiError, Unauthorized
from kami.web.console.frame import (
    PREFIX,
    SESSION_COOKIE,
    Admin,
    ConsoleRoute,
    Form,
    redirect,
    render,
    signed_in,
    written,
)
from kami.web.deps import rate_limit, shop
from kami.web.storefront import rendering

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


def totp_key(request: Request) -> bytes:
    s = shop(request)
    with s.db.read() as session:
        return s.cipher.named_secret(session, accounts.TOTP_SECRET)


def _sign_in(session: Session, username: str, password: str, key: bytes, code: str) -> str:
    admin = accounts.check_password(session, username, password)
    if accounts.totp_enabled(session, admin.id):
        accounts.check_totp(session, admin.id, key, code)
    return accounts.open_session(session, admin.id)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    return render(request, "login.html", admin=None, error=None, username="")


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, form: Form) -> Response:
    rate_limit(request, "reveals")  # guesses per address are limited like reveals
    username = form.get("username", "")[:64]
    s = shop(request)
    key = totp_key(request)
    try:
        sid = written(s, _sign_in, username, form.get("password", ""), key, form.get("code", ""))
    except Unauthorized as exc:
        t = rendering.translator(request)
        message = (
            t.gettext("Wrong or already used two-factor code.")
            if exc.where == "code"
            else t.gettext("Wrong username or password.")
        )
        return render(
            request, "login.html", admin=None, error=message, username=username, status_code=401
        )
    response = redirect(f"{PREFIX}/")
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        max_age=int(accounts.SESSION_TTL.total_seconds()),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=rendering.secure_cookies(request, s),
    )
    return response


@router.post("/logout")
def logout(request: Request, _form: Form) -> Response:
    sid = request.cookies.get(SESSION_COOKIE, "")
    if sid:
        written(shop(request), accounts.close_session, sid)
    response = redirect(f"{PREFIX}/login")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


@router.get("/2fa", response_class=HTMLResponse)
def two_factor_page(request: Request) -> Response:
    admin = signed_in(request)
    return _two_factor(request, admin, error=None)


def _two_factor(
    request: Request, admin: accounts.AdminView, error: str | None, status_code: int = 200
) -> Response:
    s = shop(request)
    key = totp_key(request)
    with s.db.read() as session:
        enabled = accounts.totp_enabled(session, admin.id)
        secret = None if enabled else accounts.pending_secret(session, admin.id, key)
    uri = accounts.otpauth_uri(secret, admin.username, s.shop_name) if secret else None
    return render(
        request,
        "twofactor.html",
        admin=admin,
        enabled=enabled,
        secret=secret,
        uri=uri,
        error=error,
        status_code=status_code,
    )


@router.post("/2fa/begin")
def two_factor_begin(request: Request, admin: Admin, _form: Form) -> Response:
    key = totp_key(request)
    written(shop(request), accounts.begin_totp, admin.id, key)
    return redirect(f"{PREFIX}/2fa")


@router.post("/2fa/confirm")
def two_factor_confirm(request: Request, admin: Admin, form: Form) -> Response:
    key = totp_key(request)
    try:
        written(shop(request), accounts.confirm_totp, admin.id, key, form.get("code", ""))
    except KamiError:
        t = rendering.translator(request)
        return _two_factor(
            request,
            admin,
            t.gettext("That code is not right; type the code your app shows now."),
            422,
        )
    return redirect(f"{PREFIX}/2fa")
