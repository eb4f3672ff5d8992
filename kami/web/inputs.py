"""Rules every request's text obeys before a handler sees it.

No name, code, e-mail address, order number or key in this API has a use for U+0000, and
PostgreSQL text cannot hold one: a NUL that reached a query failed there as a 500. So a NUL in a
path parameter, a query parameter or anywhere in a JSON body is refused up front with a 422
problem saying where it was. Routes opt in with `route_class=CheckedRoute`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from kami.kernel.errors import InvalidInput

NUL = "\x00"


def check_text(value: str, where: str) -> str:
    """`value` unchanged, or InvalidInput if it holds a NUL character."""
    if NUL in value:
        raise InvalidInput(f"{where}: must not contain a NUL (U+0000) character", where=where)
    return value


def _check_json(document: Any) -> None:
    """Every string in a parsed JSON document, keys too; iterative, as documents nest deeply."""
    todo: list[tuple[Any, str | None]] = [(document, None)]
    while todo:
        value, where = todo.pop()
        if isinstance(value, str):
            check_text(value, where or "body")
        elif isinstance(value, dict):
            for key, item in value.items():
                check_text(key, where or "body")
                todo.append((item, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            todo.extend((item, f"{where}.{n}" if where else str(n)) for n, item in enumerate(value))


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def check_request(request: Request, *, has_body: bool) -> None:
    for name, value in request.path_params.items():
        if isinstance(value, str):
            check_text(value, f"path.{name}")
    for name, value in request.query_params.multi_items():
        check_text(name, "query")
        check_text(value, f"query.{name}")
    if has_body and _is_json(request.headers.get("content-type", "")):
        # Starlette keeps the body on the request, so FastAPI reads these same bytes afterwards.
        raw = await request.body()
        # JSON can carry a NUL only as the escape \u0000 (raw control characters are not
        # allowed in its strings): a body with neither is not parsed a second time here.
        if b"\\u0000" not in raw and b"\x00" not in raw:
            return
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            return  # not JSON (or nested past Python's limit): FastAPI answers that itself
        _check_json(data)


class CheckedRoute(APIRoute):
    """An APIRoute that runs `check_request` before FastAPI parses and validates the request."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        has_body = self.body_field is not None

        async def checked(request: Request) -> Response:
            await check_request(request, has_body=has_body)
            return await handler(request)

        return checked
