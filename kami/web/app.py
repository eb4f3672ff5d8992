"""The FastAPI application: routers, problem handlers, security headers, in-process worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kami import __version__, bootstrap
from kami.config import Settings
from kami.web import problems
from kami.web.admin.aftersales import router as admin_aftersales_router
from kami.web.admin.api import router as admin_router
from kami.web.admin.files import router as admin_files_router
from kami.web.admin.goods import router as admin_goods_router
from kami.web.admin.orders import router as admin_orders_router
from kami.web.api.aftersales import router as aftersales_router
from kami.web.api.downloads import router as downloads_router
from kami.web.api.licenses import router as licenses_router
from kami.web.api.public import router as public_router
from kami.web.api.suppliers import router as suppliers_router
from kami.web.console import router as console_router
from kami.web.hotpaths import HotPaths
from kami.web.ratelimit import RateLimits
from kami.web.storefront.pages import router as storefront_router
from kami.worker import runner

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Adds the security headers to every response. A plain ASGI middleware: Starlette's
    `@app.middleware("http")` wraps each request in extra tasks and streams, a cost paid on
    every request (measured on the purchase bench)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in _SECURITY_HEADERS if n not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def rate_limits(s: Settings) -> RateLimits:
    return RateLimits(
        s.redis_url,
        {
            "orders": s.rate_limit_orders,
            "reveals": s.rate_limit_reveals,
            "licenses": s.rate_limit_licenses,
        },
        namespace=s.redis_namespace,
    )


def create_app(container: bootstrap.Container, *, worker: bool | None = None) -> FastAPI:
    run_worker = container.settings.inprocess_worker if worker is None else worker

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = None
        if run_worker:
            _thread, stop = runner.start_thread(container)
        try:
            yield
        finally:
            if stop is not None:
                stop.set()

    app = FastAPI(
        title="Kami",
        version=__version__,
        description="Self-hosted shop and automatic delivery engine for virtual goods.",
        docs_url=None,  # Swagger UI loads from a CDN; machines here are offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.container = container
    s = container.settings
    app.state.rate_limits = rate_limits(s)
    problems.install(app)

    # Added first, so it runs inside SecurityHeaders: its answers get the headers too.
    app.add_middleware(HotPaths)
    app.add_middleware(SecurityHeaders)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        # A coroutine: it answers from the event loop even when every worker thread is busy
        # (a plain function would queue for one), and it is the benchmarks' no-work baseline,
        # which must not include a hand-over to a thread that the hot requests no longer pay.
        return {"status": "ok"}

    app.include_router(public_router)
    app.include_router(licenses_router)
    app.include_router(suppliers_router)
    app.include_router(admin_router)
    app.include_router(admin_orders_router)
    app.include_router(aftersales_router)
    app.include_router(admin_aftersales_router)
    app.include_router(admin_goods_router)
    app.include_router(admin_files_router)
    app.include_router(downloads_router)
    app.include_router(console_router)
    app.include_router(storefront_router)
    app.mount(
        "/static",
        StaticFiles(directory=str(resources.files("kami.web.storefront") / "static")),
        name="static",
    )
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory`: each server process builds its own container."""
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return create_app(bootstrap.build(settings))
