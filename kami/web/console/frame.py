"""The console's frame: templates, the signed-in admin, roles, and errors as pages.

Every console route is a `ConsoleRoute`: its form fields are checked like the API's text (no
NUL), an unsigned request is sent to the sign-in page, and a domain error becomes an HTML page
with the error's status (a 403 stays a 403). Roles are checked on the server in each handler
(`require`), never by hiding a button alone.

Every handler is a plain function, so FastAPI runs it on a worker thread: the console's work
(its reads and writes, an import of a million keys, asking a payment channel about an order or
for a refund) never runs on the event loop that answers the buyers. What must be awaited comes
in as dependencies, resolved in the order of the handler's parameters: `Admin` (the session,
read on a worker thread), then `Form` (the posted fields, read on the loop, CSRF-checked), then
`Upload`. `tests/web/test_console_off_loop.py` holds every console route to both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from importlib import resources
from typing import Annotated, Any, TypeVar

import jinja2
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from kami import accounts, fulfilment
from kami.kernel.errors import Forbidden, InvalidInput, KamiError, Unauthorized
from kami.web import i18n, localtime
from kami.web.deps import shop as shop_of
from kami.web.inputs import CheckedRoute, check_text
from kami.web.storefront import rendering

log = logging.getLogger("kami.console")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
SESSION_COOKIE = "kami_console"
PREFIX = "/admin"
OWNER = frozenset({accounts.Role.OWNER})
MONEY = frozenset({accounts.Role.OWNER, accounts.Role.FINANCE})
STOCK = frozenset({accounts.Role.OWNER, accounts.Role.OPERATOR})


def N_(message: str) -> str:
    return message


ROLE_LABELS = {"owner": N_("Owner"), "operator": N_("Operator"), "finance": N_("Finance")}

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("kami.web.console") / "templates")),
        autoescape=True,  # keys, product texts and buyer input are untrusted here too
        extensions=["jinja2.ext.i18n"],
    )
)


def signed_in(request: Request) -> accounts.AdminView:
    """The admin of the request's console session; Unauthorized without a live one."""
    cached = getattr(request.state, "console_admin", None)
    if isinstance(cached, accounts.AdminView):
        return cached
    sid = request.cookies.get(SESSION_COOKIE, "")
    if not sid or len(sid) > 128:
        raise Unauthorized("sign in to the console", where="session")
    with shop_of(request).db.read() as s:
        admin = accounts.session_admin(s, sid)
    request.state.console_admin = admin
    return admin


def require(admin: accounts.AdminView, allowed: frozenset[accounts.Role], what: str) -> None:
    if admin.role not in allowed:
        names = " and ".join(sorted(r.value for r in allowed))
        raise Forbidden(
            f"a {admin.role} may not {what}; that is for the {names}",
            where="role",
            slug="role-forbidden",
        )


async def console_admin(request: Request) -> accounts.AdminView:
    """`signed_in`, read on a worker thread: the dependency form of it."""
    return await run_in_threadpool(signed_in, request)


Admin = Annotated[accounts.AdminView, Depends(console_admin)]


async def form_of(request: Request) -> dict[str, str]:
    """The posted form's text fields after the CSRF check (files are read by their handler)."""
    form = await request.form()
    values = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    for name, value in values.items():
        check_text(value, f"form.{name}")
    token = values.get(rendering.CSRF_FIELD)
    rendering.check_csrf(request, token)
    return values


Form = Annotated[dict[str, str], Depends(form_of)]


async def posted_file(request: Request) -> UploadFile | None:
    """The posted form's `file` (the form is parsed once; `Form` reads the same one)."""
    value = (await request.form()).get("file")
    return value if isinstance(value, UploadFile) else None


Upload = Annotated[UploadFile | None, Depends(posted_file)]


def render(
    request: Request,
    name: str,
    *,
    admin: accounts.AdminView | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    shop: fulfilment.Shop = shop_of(request)
    t = rendering.translator(request)
    context.update(
        shop_name=shop.shop_name,
        locale=t.locale,
        html_lang=i18n.HTML_LANG[t.locale],
        locales=i18n.LOCALES,
        _=t.gettext,
        gettext=t.gettext,
        ngettext=t.ngettext,
        money=t.money,
        csrf_field=rendering.CSRF_FIELD,
        csrf_token=rendering.csrf_value(request),
        path=request.url.path,
        admin=admin,
        role_label=lambda role: t.gettext(ROLE_LABELS[role]) if role in ROLE_LABELS else role,
        status_label=lambda status: (
            t.gettext(rendering.STATUS_LABELS[status])
            if status in rendering.STATUS_LABELS
            else status
        ),
        gateway_label=lambda gw: rendering.gateway_label(t, gw),
        **localtime.helpers(shop.timezone),
        can_refund=admin is not None and admin.role in MONEY,
        is_owner=admin is not None and admin.role in OWNER,
    )
    response: HTMLResponse = templates.TemplateResponse(
        request, name, context, status_code=status_code
    )
    response.headers["Cache-Control"] = "no-store"  # console pages hold orders and stock
    rendering.set_cookies(request, response, shop)
    return response


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


class ConsoleRoute(CheckedRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Unauthorized as exc:
                if exc.where == "session":
                    return redirect(f"{PREFIX}/login")
                return await page_for(request, exc)
            except KamiError as exc:
                return await page_for(request, exc)
            except (HTTPException, RequestValidationError):
                raise  # answered as problems, as everywhere (a malformed form, a bad path)
            except ClientDisconnect:
                return Response(status_code=400)  # the browser went away mid-upload: no one to tell
            except Exception as exc:
                # A page, not a JSON problem, for a person at a browser. The type only: a
                # message or a trace could carry a key or a secret (invariant 5).
                log.error("console %s %s failed: %s", request.method, self.path, type(exc).__name__)
                return await page_for(request, Broken())

        return guarded


BARE_ERROR = (
    '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>Kami</title></head>'
    '<body><main id="main"><p class="error">服务器出错，错误已记录。 '
    "The server failed; the error was logged.</p></main></body></html>"
)


async def page_for(request: Request, exc: KamiError) -> Response:
    """The error page of `exc`, drawn on a worker thread (it may read the session). If drawing
    it fails too (the database is down, say), a page that needs nothing, and the type of that
    failure in the log: its trace would carry the first failure's message with it."""
    try:
        return await run_in_threadpool(error_page, request, exc)
    except Exception as failed:
        log.error("console error page for %s failed: %s", exc.slug, type(failed).__name__)
        return HTMLResponse(BARE_ERROR, exc.status, headers={"Cache-Control": "no-store"})


class Broken(KamiError):
    """What the console says of a failure it did not expect (the log has its type)."""

    status = 500
    slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str = "the server failed; the error was logged") -> None:
        super().__init__(detail)


def error_page(request: Request, exc: KamiError) -> HTMLResponse:
    try:
        admin: accounts.AdminView | None = signed_in(request)
    except KamiError:
        admin = None
    return render(
        request,
        "error.html",
        admin=admin,
        status_code=exc.status,
        error=exc.detail,
        where=exc.where,
        slug=exc.slug,
        back=request.headers.get("referer") or f"{PREFIX}/",
    )


def model(cls: type[M], **data: Any) -> M:
    """A request model from form fields; a validation error is InvalidInput naming the field."""
    try:
        return cls(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "form"
        raise InvalidInput(f"{where}: {first.get('msg', 'invalid')}", where=where) from None


def as_int(value: str | None, where: str) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value.strip())
    except ValueError:
        raise InvalidInput(f"{where}: {value[:40]!r} is not a whole number", where=where) from None


def written(s: fulfilment.Shop, fn: Callable[..., T], *args: Any) -> T:
    """`fn(session, *args)` in a write transaction (handlers run on a worker thread, where
    waiting for SQLite's writer holds up no one else; decision 0015)."""
    with s.db.write() as session:
        return fn(session, *args)
