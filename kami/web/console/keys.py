"""Keys: stock per SKU and batch, import by upload with its report, and finding a pasted key
by its fingerprint (the pool is never decrypted to search it)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from kami import accounts, catalog, fulfilment, orders, vault
from kami.kernel.errors import InvalidInput, KamiError
from kami.web.admin.api import (
    IMPORTS,
    MAX_UPLOAD,
    parse_batch_info,
    upload_name,
    upload_suffix,
)
from kami.web.console.frame import (
    PREFIX,
    Admin,
    Broken,
    ConsoleRoute,
    Form,
    Upload,
    page_for,
    render,
    signed_in,
)
from kami.web.deps import shop
from kami.web.storefront import rendering

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)
log = logging.getLogger("kami.console")

PROGRESS = "application/x-ndjson"  # what the console's script asks an import for
TICK = 0.25  # seconds between two progress lines


def _stock(request: Request) -> dict[str, Any]:
    with shop(request).db.read() as s:
        skus = catalog.list_skus(s)
        counts = vault.count_available(s)
        batches = vault.stock_by_batch(s)
    rows: list[dict[str, Any]] = []
    for v in skus:
        avail = counts.get(v.id, 0)
        rows.append(
            {
                "sku": v,
                "available": avail,
                "low": avail <= v.low_stock_threshold,
                "batches": [b for b in batches if b.sku_id == v.id],
            }
        )
    # SQLite's one writer is the import's until it commits (decision 0004): the seller is told.
    writes_wait = shop(request).db.dialect == "sqlite"
    return {"stock": rows, "skus": skus, "writes_wait_for_imports": writes_wait}


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request) -> Response:
    admin = signed_in(request)
    return render(request, "keys.html", admin=admin, report=None, found=None, **_stock(request))


@router.post("/keys/import", response_class=HTMLResponse)
def import_keys(request: Request, admin: Admin, form: Form, upload: Upload) -> Response:
    """Import an uploaded key file. The console's script asks for `application/x-ndjson` and
    gets the import's progress as it runs, one JSON line every `TICK` seconds, then the page
    with the report as the last line; a plain form post gets the page when the import is done.
    """
    if upload is None:
        raise InvalidInput("choose a file of keys to upload", where="file")
    code = form.get("sku", "")
    s = shop(request)
    with s.db.read() as session:
        sku = catalog.get_sku(session, code)
    name = upload_name(upload.filename)
    info = parse_batch_info(
        name,
        form.get("supplier", ""),
        form.get("unit_cost") or None,
        form.get("cost_currency") or "CNY",
        form.get("expires_at") or None,
    )
    IMPORTS.take()  # given back when the import ends (`_Import.work`), or below
    try:
        tmp = tempfile.TemporaryDirectory(prefix="kami-import-")
    except BaseException:
        IMPORTS.give()
        raise
    try:
        # The client's file name labels the batch; it never makes a path.
        path = Path(tmp.name) / f"upload{upload_suffix(name)}"
        with path.open("wb") as out:
            shutil.copyfileobj(upload.file, out, length=1024 * 1024)
        if path.stat().st_size > MAX_UPLOAD:
            raise InvalidInput("the file is larger than 512 MiB", where="file")
        rows, progress = vault.open_rows(path, None, form.get("separator") or None)
    except BaseException:
        _let_go(tmp)
        raise
    run = _Import(s, sku.id, rows, info, progress, tmp)
    if PROGRESS not in request.headers.get("accept", ""):
        return _report_page(request, admin, sku, run.work())
    # Started here, not when the answer's body is first asked for: a browser that has gone by
    # then still gets its keys imported.
    work = run.start()
    response = StreamingResponse(
        _progress_lines(request, admin, sku, run, work), media_type=PROGRESS
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # a proxy in front must pass each line on
    rendering.set_cookies(request, response, s)
    return response


def _let_go(tmp: tempfile.TemporaryDirectory[str]) -> None:
    """An import's end, however it ended: its files removed and its slot given back (even if
    removing them failed)."""
    try:
        tmp.cleanup()
    finally:
        IMPORTS.give()


class _Import:
    """One import, run once (`work`, on a worker thread), readable while it runs."""

    def __init__(
        self,
        shop: fulfilment.Shop,
        sku_id: int,
        rows: Iterable[vault.GoodLine | vault.BadLine],
        info: vault.BatchInfo,
        progress: vault.Progress,
        tmp: tempfile.TemporaryDirectory[str],
    ) -> None:
        self._args = (shop, sku_id, rows, info)
        self._tmp = tmp
        self.progress = progress
        self.report: vault.ImportReport | None = None  # as it grows, chunk by chunk

    def start(self) -> Future[vault.ImportReport]:
        """`work` on a thread of its own (an import can take longer than a request should hold
        one of the server's pool threads); its outcome in the future returned."""
        outcome: Future[vault.ImportReport] = Future()
        outcome.set_running_or_notify_cancel()  # running from now on: it cannot be cancelled

        def target() -> None:
            try:
                outcome.set_result(self.work())
            except BaseException as exc:
                outcome.set_exception(exc)

        try:
            threading.Thread(target=target, name="kami-import", daemon=True).start()
        except BaseException:
            _let_go(self._tmp)
            raise
        return outcome

    def work(self) -> vault.ImportReport:
        def grown(report: vault.ImportReport) -> None:
            self.report = report

        try:
            return fulfilment.import_and_serve(*self._args, on_chunk=grown)
        finally:
            _let_go(self._tmp)

    def line(self) -> bytes:
        """Where the import is: bytes (or rows of a workbook) read of how many (0: unknown),
        and the keys imported so far; they are committed together when it ends."""
        report = self.report
        return _json_line(
            {
                "done": self.progress.done,
                "total": self.progress.total,
                "imported": report.imported if report else 0,
                "lines": report.lines_read if report else 0,
            }
        )


async def _progress_lines(
    request: Request,
    admin: accounts.AdminView,
    sku: catalog.SkuView,
    run: _Import,
    started: Future[vault.ImportReport],
) -> AsyncIterator[bytes]:
    work = asyncio.wrap_future(started)
    try:
        while not work.done():
            yield run.line()
            await asyncio.wait({work}, timeout=TICK)
        failure: KamiError | None = None
        try:
            report = work.result()
        except KamiError as exc:
            failure = exc
        except Exception as exc:
            # The type only: a message or a trace of an import could carry a key (invariant 5).
            log.error("a console import failed: %s", type(exc).__name__)
            failure = Broken("the import failed and nothing was imported; see the server log")
        if failure is not None:
            page = await page_for(request, failure)
        else:
            try:  # the keys are in: a page that cannot be drawn does not say otherwise
                page = await run_in_threadpool(_report_page, request, admin, sku, report)
            except Exception as exc:
                log.error("the report of batch %s failed: %s", report.batch, type(exc).__name__)
                page = await page_for(request, Broken())
        yield run.line()
        yield _json_line({"status": page.status_code, "page": bytes(page.body).decode()})
    finally:
        if not started.done():  # the browser went away: the import goes on, and ends, by itself
            started.add_done_callback(_log_failure)


def _log_failure(work: Future[vault.ImportReport]) -> None:
    failure = work.exception()
    if failure is not None:
        log.error("a console import failed after its page was closed: %s", type(failure).__name__)


def _json_line(value: dict[str, object]) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode() + b"\n"


def _report_page(
    request: Request, admin: accounts.AdminView, sku: catalog.SkuView, report: vault.ImportReport
) -> Response:
    return render(
        request,
        "keys.html",
        admin=admin,
        report=report,
        report_sku=sku,
        found=None,
        **_stock(request),
    )


@router.post("/keys/find", response_class=HTMLResponse)
def find_key(request: Request, admin: Admin, form: Form) -> Response:
    """A POST, so the pasted key stays out of URLs, history and access logs."""
    card = form.get("key", "").strip()
    if not card:
        raise InvalidInput("paste the key to look for", where="key")
    password = form.get("password", "").strip() or None
    s = shop(request)
    with s.db.read() as session:
        places = vault.find_key(session, s.cipher, vault.Secret(card, password))
        skus = {v.id: v for v in catalog.list_skus(session)}
        found = []
        for p in places:
            order = orders.find_order_by_id(session, p.order_id) if p.order_id else None
            found.append({"place": p, "sku": skus.get(p.sku_id), "order": order})
    return render(request, "keys.html", admin=admin, report=None, found=found, **_stock(request))
