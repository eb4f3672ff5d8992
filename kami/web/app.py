"""The FastAPI application: routers, problem handlers, security headers, in-process worker."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kami import __version__, bootstrap, fulfilment
from kami.config import Settings
from kami.kernel import prepared
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


def settle_heap() -> None:
    """Put what start-up made out of the garbage collector's sight, for this process's life.

    A server process holds some 200,000 objects from start-up (SQLAlchemy's mappers and
    compiled statements, FastAPI's routes, pydantic's validators, the message catalogs) that
    live as long as it does. Python's full collection scans them all, about 120 ms on this
    kind of machine with nothing answered meanwhile, and it comes whenever enough new objects
    have outlived two younger collections: every second or so while the console imports keys.
    Measured with `kami bench console_import` (200,000 keys, alternating runs): the longest
    /healthz answer during the import was 78-112 ms, 11-18 ms with the heap frozen. Frozen
    objects are never scanned again; the younger collections, which find the requests'
    garbage, run as before, and nothing else changed in the purchase and flash-sale runs."""
    gc.collect()
    gc.freeze()


class TypeOnly(logging.Filter):
    """A failure's type in the log, never its message or trace (invariant 5): either could
    carry a key, a card password or a secret. For uvicorn's own logger, which logs the whole
    trace of any exception that leaves the app (Starlette's last-resort handler answers 500 and
    raises it again, after `problems` has logged its type)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage().strip()}: {type(record.exc_info[1]).__name__}"
            record.args = None
            record.exc_info = record.exc_text = record.stack_info = None
        return True


def keep_traces_out_of_logs() -> TypeOnly:
    """Put `TypeOnly` on uvicorn's error logger (once per process); returns it."""
    logger = logging.getLogger("uvicorn.error")
    for present in logger.filters:
        if isinstance(present, TypeOnly):
            return present
    kept = TypeOnly()
    logger.addFilter(kept)
    return kept


# FastAPI looks for a configured OpenTelemetry on every request, through os.environ: 3.4 µs a
# request (measured), a few hundredths of a flash sale's sold-out answer. Kami configures none
# itself, so the check is left on only where the environment asks for OpenTelemetry.
_TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}


def telemetry(environ: Mapping[str, str]) -> Any:
    """FastAPI's `telemetry` setting: its default (spans, metrics and logs to the OpenTelemetry
    providers configured in the process) when the environment configures OpenTelemetry, an
    `OTEL_…` variable or FASTAPI_OTEL_AUTO_CONFIGURE=true; otherwise off. OpenTelemetry set up
    in code alone, without such a variable, does not get FastAPI's spans."""
    auto = environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true"
    wanted = auto or any(k.startswith("OTEL_") for k in environ)
    return None if wanted else dict(_TELEMETRY_OFF)


def create_app(
    container: bootstrap.Container, *, worker: bool | None = None, server: bool = False
) -> FastAPI:
    """`server`: this process serves only this app until it ends (`kami serve`): its start-up
    heap is frozen once it has started (`settle_heap`). Tests, which build many apps in one
    process, leave it off."""
    run_worker = container.settings.inprocess_worker if worker is None else worker

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = None
        if run_worker:
            _thread, stop = runner.start_thread(container)
        if server:
            # Flash-sale checkouts placed together (decisions 0020, 0023), and every other
            # statement: compiled now, not in the first buyers' requests (decision 0024).
            fulfilment.ready_together(container.db.engine.dialect)
            prepared.ready_all(container.db.engine.dialect)
            settle_heap()
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
        telemetry=telemetry(os.environ),
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
    keep_traces_out_of_logs()
    return create_app(bootstrap.build(settings), server=True)
