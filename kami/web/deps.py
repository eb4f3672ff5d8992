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


def admin(request: Request) -> accounts.AdminView:
    token = bearer(request)
    if token is None:
        raise Unauthorized("an admin bearer token is required", where="Authorization")
    with shop(request).db.read() as s:
        return accounts.authenticate(s, token)


ShopDep = Annotated[Shop, Depends(shop)]
AdminDep = Annotated[accounts.AdminView, Depends(admin)]
