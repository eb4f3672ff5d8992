from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kami import accounts
from kami.bootstrap import Container
from kami.fulfilment import Shop
from kami.kernel.errors import Unauthorized


def container(request: Request) -> Container:
    c: Container = request.app.state.container
    return c


def shop(request: Request) -> Shop:
    return container(request).shop


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


DEVICE_COOKIE = "kami_device"


def device_id(request: Request) -> str | None:
    """The buyer's device: the storefront's cookie, or an app's own X-Device-Id header."""
    value = request.cookies.get(DEVICE_COOKIE) or request.headers.get("x-device-id")
    if value and 8 <= len(value) <= 64 and value.replace("-", "").replace("_", "").isalnum():
        return value
    return None


def rate_limit(request: Request, name: str) -> None:
    request.app.state.rate_limits.hit(name, client_ip(request) or "unknown")


async def rate_limit_on_loop(request: Request, name: str) -> None:
    await request.app.state.rate_limits.hit_on_loop(name, client_ip(request) or "unknown")


def admin(request: Request) -> accounts.AdminView:
    token = bearer(request)
    if token is None:
        raise Unauthorized("an admin bearer token is required", where="Authorization")
    with shop(request).db.read() as s:
        return accounts.authenticate(s, token)


async def _shop_dependency(request: Request) -> Shop:
    # A coroutine on purpose: FastAPI runs a plain function dependency in the thread pool, one
    # more hand-over to a thread and back for every request, for a lookup of an attribute.
    return container(request).shop


ShopDep = Annotated[Shop, Depends(_shop_dependency)]
AdminDep = Annotated[accounts.AdminView, Depends(admin)]
