"""Every error at the HTTP edge is application/problem+json with a stable `type`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kami.kernel.errors import KamiError

log = logging.getLogger("kami.web")

PROBLEM = "application/problem+json"

_HTTP_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    422: "invalid-input",
    429: "too-many-requests",
}


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def kami_problem(exc: KamiError) -> JSONResponse:
    """The answer to a domain error, wherever the request was answered."""
    if exc.status >= 500:
        log.error("%s: %s", exc.slug, exc)
    retry = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry)} if retry else None
    return problem(exc.status, exc.slug, exc.title, exc.detail, headers, where=exc.where)


def install(app: FastAPI) -> None:
    @app.exception_handler(KamiError)
    async def _kami(_: Request, exc: KamiError) -> JSONResponse:
        return kami_problem(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"where": _where(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"where": "body", "message": "invalid request"}
        return problem(
            422,
            "invalid-input",
            "Invalid input",
            f"{first['where']}: {first['message']}",
            where=first["where"],
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = _HTTP_SLUGS.get(exc.status_code, "http-error")
        return problem(exc.status_code, slug, slug.replace("-", " ").capitalize(), str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        # Log the type only: a message or trace could carry a secret (invariant 5).
        log.error("unhandled %s", type(exc).__name__)
        return problem(500, "internal", "Internal error", "the server failed; the error was logged")
