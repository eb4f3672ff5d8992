"""The admin console in the browser: server-rendered pages behind a session cookie."""

from fastapi import APIRouter

from kami.web.console import catalog, dashboard, keys, orders, signin, static, system

router = APIRouter(include_in_schema=False)
for module in (signin, dashboard, catalog, keys, orders, system, static):
    router.include_router(module.router)

__all__ = ["router"]
