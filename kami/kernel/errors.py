"""Errors every layer raises; the HTTP edge turns them into application/problem+json.

`slug` is the stable machine-readable part (the problem `type` is `/problems/<slug>`), `detail`
says what was wrong and `where` points at the offending field, header or line.
"""

from __future__ import annotations


class KamiError(Exception):
    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, *, where: str | None = None, slug: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.where = where
        if slug is not None:
            self.slug = slug

    def __str__(self) -> str:
        return f"{self.detail} (at {self.where})" if self.where else self.detail


class InvalidInput(KamiError):
    status = 422
    slug = "invalid-input"
    title = "Invalid input"


class NotFound(KamiError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(KamiError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class Unauthorized(KamiError):
    status = 401
    slug = "unauthorized"
    title = "Unauthorized"


class Forbidden(KamiError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class Unavailable(KamiError):
    status = 503
    slug = "unavailable"
    title = "Service unavailable"
