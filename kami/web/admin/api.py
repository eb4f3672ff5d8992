"""The admin JSON API for the catalog, keys and stock, behind admin bearer tokens."""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel

from kami import catalog, fulfilment, vault
from kami.kernel.errors import InvalidInput, KamiError
from kami.kernel.money import check_currency, parse_major
from kami.web.deps import AdminDep, ShopDep
from kami.web.inputs import CheckedRoute, check_text

router = APIRouter(prefix="/api/admin", tags=["admin"], route_class=CheckedRoute)

MAX_UPLOAD = 512 * 1024 * 1024


class ImportsBusy(KamiError):
    status = 429
    slug = "imports-busy"
    title = "Too many key imports at once"


class ImportSlots:
    """At most `limit` key imports at once in one server process, by the admin API and the
    console together. Each holds its file's keys while they are encrypted, a read-ahead thread,
    and on SQLite the database's one writer (decision 0004): more at once only wait for each
    other and add up their memory (an import of a million keys peaked at 188 MB,
    docs/benchmarks.md). One more is refused at once, before any of its keys is read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self._running >= self.limit:
                raise ImportsBusy(
                    f"this server process is already running {self._running} key import"
                    f"{'' if self._running == 1 else 's'}, its most at once; start this one "
                    "when one has finished",
                    where="file",
                )
            self._running += 1

    def give(self) -> None:
        with self._lock:
            if self._running == 0:  # a slot given back twice would let a third import in
                raise RuntimeError("an import slot was given back that was not taken")
            self._running -= 1


IMPORTS = ImportSlots(2)


# -- catalog -----------------------------------------------------------------------------------
@router.get("/categories", response_model=list[catalog.CategoryView])
def list_categories(shop: ShopDep, _: AdminDep) -> list[catalog.CategoryView]:
    with shop.db.read() as s:
        return catalog.list_categories(s)


@router.post("/categories", status_code=201, response_model=catalog.CategoryView)
def create_category(body: catalog.CategoryIn, shop: ShopDep, _: AdminDep) -> catalog.CategoryView:
    with shop.db.write() as s:
        return catalog.create_category(s, body)


@router.patch("/categories/{slug}", response_model=catalog.CategoryView)
def update_category(
    slug: str, body: catalog.CategoryPatch, shop: ShopDep, _: AdminDep
) -> catalog.CategoryView:
    with shop.db.write() as s:
        return catalog.update_category(s, slug, body)


@router.delete("/categories/{slug}", status_code=204)
def delete_category(slug: str, shop: ShopDep, _: AdminDep) -> None:
    with shop.db.write() as s:
        catalog.delete_category(s, slug)


@router.get("/products", response_model=list[catalog.ProductView])
def list_products(shop: ShopDep, _: AdminDep) -> list[catalog.ProductView]:
    with shop.db.read() as s:
        return catalog.list_products(s)


@router.post("/products", status_code=201, response_model=catalog.ProductView)
def create_product(body: catalog.ProductIn, shop: ShopDep, _: AdminDep) -> catalog.ProductView:
    with shop.db.write() as s:
        return catalog.create_product(s, body)


@router.patch("/products/{slug}", response_model=catalog.ProductView)
def update_product(
    slug: str, body: catalog.ProductPatch, shop: ShopDep, _: AdminDep
) -> catalog.ProductView:
    with shop.db.write() as s:
        return catalog.update_product(s, slug, body)


@router.get("/skus", response_model=list[catalog.SkuView])
def list_skus(shop: ShopDep, _: AdminDep) -> list[catalog.SkuView]:
    with shop.db.read() as s:
        return catalog.list_skus(s)


@router.post("/skus", status_code=201, response_model=catalog.SkuView)
def create_sku(body: catalog.SkuIn, shop: ShopDep, _: AdminDep) -> catalog.SkuView:
    with shop.db.write() as s:
        sku = catalog.create_sku(s, body)
        fulfilment.check_download_sku(s, sku.delivery_kind, sku.delivery_config)
        return sku


@router.patch("/skus/{code}", response_model=catalog.SkuView)
def update_sku(code: str, body: catalog.SkuPatch, shop: ShopDep, _: AdminDep) -> catalog.SkuView:
    with shop.db.write() as s:
        sku = catalog.update_sku(s, code, body)
        fulfilment.check_download_sku(s, sku.delivery_kind, sku.delivery_config)
        return sku


@router.put("/skus/{code}/flash-sale", response_model=catalog.FlashSaleView)
def set_flash_sale(
    code: str, body: catalog.FlashSaleIn, shop: ShopDep, _: AdminDep
) -> catalog.FlashSaleView:
    """Create or change the SKU's flash sale: window, sale price, quota, per-buyer limit. A
    window that starts after the last sale ended, set once it has ended, starts a new sale with
    its own quota and counts; a sale that is selling cannot be moved past its own end (409)."""
    with shop.db.write() as s:
        return catalog.set_flash_sale(s, code, body)


# -- keys and stock ----------------------------------------------------------------------------
class ImportReportOut(BaseModel):
    batch: str
    sku: str
    imported: int
    duplicates_in_file: int
    duplicates_in_stock: int
    invalid: int
    invalid_lines: list[dict[str, Any]]
    duplicate_lines_in_file: list[int]
    duplicate_lines_in_stock: list[int]
    delivered_waiting_orders: int = 0


class BatchOut(BaseModel):
    batch: str
    supplier: str
    unit_cost_minor: int | None
    cost_currency: str | None
    expires_at: datetime | None
    source_name: str
    created_at: datetime
    imported: int
    available: int
    sold: int
    void: int
    expired: int


class SkuStockOut(BaseModel):
    sku: str
    name: str
    available: int
    low_stock_threshold: int
    low: bool
    batches: list[BatchOut]


def report_out(sku: str, r: vault.ImportReport) -> ImportReportOut:
    return ImportReportOut(
        batch=r.batch,
        sku=sku,
        imported=r.imported,
        duplicates_in_file=r.duplicates_in_file,
        duplicates_in_stock=r.duplicates_in_stock,
        invalid=r.invalid,
        invalid_lines=[{"line": n, "reason": why} for n, why in r.invalid_lines],
        duplicate_lines_in_file=r.duplicate_lines_in_file,
        duplicate_lines_in_stock=r.duplicate_lines_in_stock,
    )


def upload_name(filename: str | None) -> str:
    """The client's file name as a label: its last component, printable, at most 255 characters."""
    name = "".join(ch for ch in Path(filename or "").name if ch.isprintable())[:255]
    return name if name.strip(" .") else "upload.txt"


def upload_suffix(name: str) -> str:
    """The extension `vault.open_rows` guesses the format from, if it looks like one."""
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


def parse_batch_info(
    source_name: str,
    supplier: str,
    unit_cost: str | None,
    cost_currency: str,
    expires_at: str | None,
) -> vault.BatchInfo:
    cost = parse_major(unit_cost, cost_currency, where="unit_cost") if unit_cost else None
    expiry = None
    if expires_at:
        try:
            expiry = datetime.fromisoformat(expires_at)
        except ValueError:
            raise InvalidInput(
                f"{expires_at!r} is not an ISO date or datetime", where="expires_at"
            ) from None
        if expiry.tzinfo is None:
            raise InvalidInput(
                "expires_at needs a timezone, e.g. 2027-01-01T00:00:00+08:00", where="expires_at"
            )
        try:  # stored in UTC: 0001-01-01T00:00+14:00 has no UTC equivalent
            expiry = expiry.astimezone(UTC)
        except OverflowError:
            raise InvalidInput(f"{expires_at!r} is out of range", where="expires_at") from None
    return vault.BatchInfo(
        supplier=supplier[:200],
        unit_cost_minor=cost,
        cost_currency=check_currency(cost_currency, where="cost_currency")
        if cost is not None
        else None,
        expires_at=expiry,
        source_name=source_name,
    )


@router.post("/skus/{code}/keys", status_code=201, response_model=ImportReportOut)
def import_keys(
    code: str,
    shop: ShopDep,
    _: AdminDep,
    file: Annotated[UploadFile, File(description="text, CSV or XLSX file of keys")],
    format: Annotated[vault.SourceFormat | None, Form()] = None,
    separator: Annotated[str | None, Form(max_length=8)] = None,
    supplier: Annotated[str, Form(max_length=200)] = "",
    unit_cost: Annotated[
        str | None, Form(max_length=32, description="in major units, e.g. 12.50")
    ] = None,
    cost_currency: Annotated[str, Form(max_length=3)] = "CNY",
    expires_at: Annotated[str | None, Form(max_length=40)] = None,
) -> ImportReportOut:
    with shop.db.read() as s:
        sku = catalog.get_sku(s, code)
    fields = {"separator": separator, "supplier": supplier, "unit_cost": unit_cost}
    fields |= {"cost_currency": cost_currency, "expires_at": expires_at}
    for where, value in fields.items():
        if value is not None:
            check_text(value, where)
    name = upload_name(file.filename)
    info = parse_batch_info(name, supplier, unit_cost, cost_currency, expires_at)
    IMPORTS.take()
    try:
        report = _import_upload(shop, sku.id, file, name, info, format, separator)
    finally:
        IMPORTS.give()
    return report_out(code, report)


def _import_upload(
    shop: fulfilment.Shop,
    sku_id: int,
    file: UploadFile,
    name: str,
    info: vault.BatchInfo,
    format: vault.SourceFormat | None,
    separator: str | None,
) -> vault.ImportReport:
    with tempfile.TemporaryDirectory(prefix="kami-import-") as tmp:
        # The client's file name labels the batch and hints at the format; it never makes a path.
        path = Path(tmp) / f"upload{upload_suffix(name)}"
        with path.open("wb") as out:
            shutil.copyfileobj(file.file, out, length=1024 * 1024)
        if path.stat().st_size > MAX_UPLOAD:
            raise InvalidInput("the file is larger than 512 MiB", where="file")
        rows, _progress = vault.open_rows(path, format, separator or None)
        return fulfilment.import_and_serve(shop, sku_id, rows, info)


@router.get("/stock", response_model=list[SkuStockOut])
def stock(shop: ShopDep, _: AdminDep, sku: str | None = None) -> list[SkuStockOut]:
    with shop.db.read() as s:
        skus = [catalog.get_sku(s, sku)] if sku else catalog.list_skus(s)
        counts = vault.count_available(s)
        batches = vault.stock_by_batch(s)
    out = []
    for v in skus:
        avail = counts.get(v.id, 0)
        out.append(
            SkuStockOut(
                sku=v.code,
                name=f"{v.product_name} · {v.name}",
                available=avail,
                low_stock_threshold=v.low_stock_threshold,
                low=avail <= v.low_stock_threshold,
                batches=[
                    BatchOut(
                        batch=b.batch,
                        supplier=b.supplier,
                        unit_cost_minor=b.unit_cost_minor,
                        cost_currency=b.cost_currency,
                        expires_at=b.expires_at,
                        source_name=b.source_name,
                        created_at=b.created_at,
                        imported=b.imported,
                        available=b.available,
                        sold=b.sold,
                        void=b.void,
                        expired=b.expired,
                    )
                    for b in batches
                    if b.sku_id == v.id
                ],
            )
        )
    return out
