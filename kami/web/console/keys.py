"""Keys: stock per SKU and batch, import by upload with its report, and finding a pasted key
by its fingerprint (the pool is never decrypted to search it)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from kami import catalog, fulfilment, orders, vault
from kami.kernel.errors import InvalidInput
from kami.web.admin.api import MAX_UPLOAD, parse_batch_info, upload_name, upload_suffix
from kami.web.console.frame import (
    PREFIX,
    ConsoleRoute,
    form_of,
    render,
    signed_in,
    upload_of,
)
from kami.web.deps import shop

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


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
    return {"stock": rows, "skus": skus}


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request) -> Response:
    admin = signed_in(request)
    return render(request, "keys.html", admin=admin, report=None, found=None, **_stock(request))


@router.post("/keys/import", response_class=HTMLResponse)
async def import_keys(request: Request) -> Response:
    admin = signed_in(request)
    form = await form_of(request)
    upload = upload_of((await request.form()).get("file"))
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
    with tempfile.TemporaryDirectory(prefix="kami-import-") as tmp:
        # The client's file name labels the batch; it never makes a path.
        path = Path(tmp) / f"upload{upload_suffix(name)}"
        with path.open("wb") as out:
            shutil.copyfileobj(upload.file, out, length=1024 * 1024)
        if path.stat().st_size > MAX_UPLOAD:
            raise InvalidInput("the file is larger than 512 MiB", where="file")
        rows, _progress = vault.open_rows(path, None, form.get("separator") or None)
        report = fulfilment.import_and_serve(s, sku.id, rows, info)
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
async def find_key(request: Request) -> Response:
    """A POST, so the pasted key stays out of URLs, history and access logs."""
    admin = signed_in(request)
    form = await form_of(request)
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
