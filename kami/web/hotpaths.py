"""The three requests of every purchase, answered in front of FastAPI's router (decision 0011).

A purchase is three requests: POST /api/v1/orders, POST /api/v1/payments/{gateway}/notify and
POST /api/v1/orders/{order_no}/reveal. Through FastAPI each paid about 0.2 ms of CPU before its
own work began: the router's walk over the routes, dependency solving, parsing the body into its
model, validating the answer against the response model and serialising it (measured in
process: a reveal refused for its token, which never touches the database, 217 µs; a bare ASGI
answer 6 µs). For a sold-out answer in a flash sale that was most of the request.

This middleware answers those three itself, with the endpoint functions of `api/public.py`
(what FastAPI would call), the same input checks (`inputs.check_request`), the same problem
answers (`problems`) and the response models' own JSON. It answers only the plain case: a body
that is not JSON, does not fit its model or is larger than a real one, and a header or path
parameter out of bounds, go on to FastAPI with the bytes already read. So every refusal of
malformed input is FastAPI's own, word for word, and the routes in `public.py` stay the
documented API (OpenAPI) and the answer to those cases.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kami import fulfilment, orders
from kami.kernel.errors import KamiError
from kami.web import problems
from kami.web.api import public
from kami.web.inputs import check_request

ORDERS = "/api/v1/orders"
NOTIFY_PREFIX = "/api/v1/payments/"
NOTIFY_SUFFIX = "/notify"
REVEAL_SUFFIX = "/reveal"
GATEWAY = re.compile(r"[A-Za-z0-9_-]{1,32}")  # public.GatewayName's pattern
ORDER_BODY_LIMIT = 64 * 1024  # an order is a few hundred bytes; buyer input at most ~5 KB

Handler = Callable[[Request, bytes], Awaitable[Response | None]]


class HotPaths:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _route(scope) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        handler, limit, path_params = found
        body, rest = await _read(receive, limit)
        if not rest:
            scope["path_params"] = path_params
            answer = await handler(Request(scope, _replay(body, rest, receive)), body)
            if answer is not None:
                await answer(scope, receive, send)
                return
        # FastAPI answers it, from the same bytes (handed out anew: the handler may have read them)
        await self.app(scope, _replay(body, rest, receive), send)


def _route(scope: Scope) -> tuple[Handler, int, dict[str, str]] | None:
    method: str = scope["method"]
    path: str = scope["path"]
    if method == "POST" and path == ORDERS:
        return _create_order, ORDER_BODY_LIMIT, {}
    if method == "POST" and path.startswith(ORDERS + "/") and path.endswith(REVEAL_SUFFIX):
        order_no = path[len(ORDERS) + 1 : -len(REVEAL_SUFFIX)]
        if order_no and "/" not in order_no:
            return _reveal, ORDER_BODY_LIMIT, {"order_no": order_no}
    notify = path.startswith(NOTIFY_PREFIX) and path.endswith(NOTIFY_SUFFIX)
    if method in ("POST", "GET") and notify:
        gateway = path[len(NOTIFY_PREFIX) : -len(NOTIFY_SUFFIX)]
        if GATEWAY.fullmatch(gateway):
            return _notify, public.MAX_NOTIFY_BODY, {"gateway": gateway}
    return None


async def _read(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The body, up to `limit` bytes; and whether more is left unread."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), True  # a disconnect: FastAPI sees it too
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False
        if size > limit:
            return b"".join(chunks), True


def _replay(body: bytes, rest: bool, receive: Receive) -> Receive:
    """A receive that hands out the bytes already read, then whatever the client still sends."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": rest}
        return await receive()

    return replay


def _json(model: BaseModel, status: int, headers: Response) -> Response:
    answer = Response(model.model_dump_json().encode(), status, media_type="application/json")
    for name, value in headers.headers.items():
        if name != "content-length":
            answer.headers[name] = value
    return answer


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def _create_order(request: Request, body: bytes) -> Response | None:
    key = request.headers.get("idempotency-key")
    if not _is_json(request) or (key is not None and len(key) > 128):
        return None
    try:
        await check_request(request, has_body=True)
        data = orders.OrderIn.model_validate_json(body)
    except KamiError as exc:
        return problems.kami_problem(exc)
    except ValidationError:
        return None
    headers = Response()
    try:
        created = await public.create_order(data, request, headers, _shop(request), key)
    except KamiError as exc:
        return problems.kami_problem(exc)
    return _json(created, 201, headers)


async def _reveal(request: Request, _body: bytes) -> Response | None:
    headers = Response()
    try:
        await check_request(request, has_body=False)
        revealed = await public.reveal_order(
            request.path_params["order_no"], request, headers, _shop(request)
        )
    except KamiError as exc:
        return problems.kami_problem(exc)
    return _json(revealed, 200, headers)


async def _notify(request: Request, _body: bytes) -> Response | None:
    try:
        await check_request(request, has_body=False)
        return await public.answer_notification(request.path_params["gateway"], request)
    except KamiError as exc:
        return problems.kami_problem(exc)


def _shop(request: Request) -> fulfilment.Shop:
    shop: fulfilment.Shop = request.app.state.container.shop
    return shop
