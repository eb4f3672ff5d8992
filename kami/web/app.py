"""The FastAPI application: routers, problem handlers, security headers, in-process worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from kami import __version__, bootstrap
from kami.config import Settings
from kami.web import problems
from kami.web.admin.api import router as admin_router
from kami.web.api.public import router as public_router
from kami.web.ratelimit import RateLimits
from kami.web.storefront.pages import router as storefront_router
from kami.worker import runner

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
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
    app.state.rate_limits = RateLimits(
        s.redis_url,
        {"orders": s.rate_limit_orders, "reveals": s.rate_limit_reveals},
        namespace=s.redis_namespace,
    )
    problems.install(app)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(public_router)
    app.include_router(admin_router)
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
