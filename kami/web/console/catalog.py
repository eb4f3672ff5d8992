"""The catalog: the category tree with its ordering, and editing products and SKUs."""

from __future__ import annotations

from datetime import tzinfo
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from kami import catalog, fulfilment
from kami.kernel.clock import offset_label, utcnow
from kami.kernel.errors import NotFound
from kami.kernel.money import EXPONENTS, parse_major
from kami.web import localtime
from kami.web.console.frame import (
    OWNER,
    PREFIX,
    Admin,
    ConsoleRoute,
    Form,
    as_int,
    model,
    redirect,
    render,
    require,
    signed_in,
    written,
)
from kami.web.deps import shop

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)


def major(minor: int, currency: str) -> str:
    return str(Decimal(minor).scaleb(-EXPONENTS.get(currency, 2)))


def tree(categories: list[catalog.CategoryView]) -> list[tuple[int, catalog.CategoryView]]:
    """Categories in display order, each with its depth, parents before children."""
    children: dict[str | None, list[catalog.CategoryView]] = {}
    for c in categories:
        children.setdefault(c.parent, []).append(c)
    out: list[tuple[int, catalog.CategoryView]] = []

    def walk(parent: str | None, depth: int) -> None:
        for c in sorted(children.get(parent, []), key=lambda c: (c.position, c.slug)):
            out.append((depth, c))
            walk(c.slug, depth + 1)

    walk(None, 0)
    return out


@router.get("/catalog", response_class=HTMLResponse)
def catalog_page(request: Request) -> Response:
    admin = signed_in(request)
    with shop(request).db.read() as s:
        categories = catalog.list_categories(s)
        products = catalog.list_products(s)
        skus = catalog.list_skus(s)
    by_product: dict[str, list[catalog.SkuView]] = {}
    for v in skus:
        by_product.setdefault(v.product_slug, []).append(v)
    by_category: dict[str, list[catalog.ProductView]] = {}
    for p in sorted(products, key=lambda p: (p.position, p.slug)):
        by_category.setdefault(p.category, []).append(p)
    return render(
        request,
        "catalog.html",
        admin=admin,
        tree=tree(categories),
        categories=categories,
        by_category=by_category,
        by_product=by_product,
    )


@router.post("/catalog/categories")
def create_category(request: Request, _admin: Admin, form: Form) -> Response:
    data = model(
        catalog.CategoryIn,
        slug=form.get("slug", ""),
        name=form.get("name", ""),
        parent=form.get("parent") or None,
        position=as_int(form.get("position"), "position") or 0,
    )
    written(shop(request), catalog.create_category, data)
    return redirect(f"{PREFIX}/catalog")


@router.post("/catalog/categories/{slug}")
def update_category(slug: str, request: Request, _admin: Admin, form: Form) -> Response:
    parent = form.get("parent", "")
    data = model(
        catalog.CategoryPatch,
        name=form.get("name") or None,
        position=as_int(form.get("position"), "position"),
        parent=parent or None,
        move_to_root=not parent,
    )
    written(shop(request), catalog.update_category, slug, data)
    return redirect(f"{PREFIX}/catalog")


@router.get("/catalog/products/{slug}", response_class=HTMLResponse)
def product_page(slug: str, request: Request) -> Response:
    admin = signed_in(request)
    with shop(request).db.read() as s:
        product = next((p for p in catalog.list_products(s) if p.slug == slug), None)
        categories = catalog.list_categories(s)
    if product is None:
        raise catalog_not_found("product", slug)
    return render(request, "product.html", admin=admin, product=product, tree=tree(categories))


def catalog_not_found(what: str, name: str) -> Exception:
    return NotFound(f"no {what} {name!r}", where=what)


@router.post("/catalog/products/{slug}")
def update_product(slug: str, request: Request, _admin: Admin, form: Form) -> Response:
    data = model(
        catalog.ProductPatch,
        name=form.get("name") or None,
        category=form.get("category") or None,
        description=form.get("description", ""),
        redemption=form.get("redemption", ""),
        benefits=[b.strip() for b in form.get("benefits", "").splitlines() if b.strip()],
        position=as_int(form.get("position"), "position"),
        active=form.get("active") == "on",
    )
    written(shop(request), catalog.update_product, slug, data)
    return redirect(f"{PREFIX}/catalog/products/{slug}")


def _sku_context(s: Any, code: str, zone: tzinfo) -> dict[str, Any]:
    """What the SKU's page shows: the SKU, and its current flash sale (None: it has none), its
    times in the shop's zone."""
    sku, sale = catalog.get_sku_on_sale(s, code)
    return {
        "sku": sku,
        "price": major(sku.price_minor, sku.currency),
        "webhook": sku.delivery_kind == catalog.DeliveryKind.WEBHOOK,
        "sale": sale,
        "sale_price": major(sale.price_minor, sku.currency) if sale else "",
        "field_value": lambda moment: localtime.field_value(moment, zone),
        "zone": offset_label(sale.starts_at if sale else utcnow(), zone),
    }


@router.get("/catalog/skus/{code}", response_class=HTMLResponse)
def sku_page(code: str, request: Request) -> Response:
    admin = signed_in(request)
    with shop(request).db.read() as s:
        context = _sku_context(s, code, shop(request).timezone)
    return render(request, "sku.html", admin=admin, secret=None, **context)


@router.post("/catalog/skus/{code}")
def update_sku(code: str, request: Request, _admin: Admin, form: Form) -> Response:
    with shop(request).db.read() as s:
        current = catalog.get_sku(s, code)
    price = form.get("price", "").strip()
    data = model(
        catalog.SkuPatch,
        name=form.get("name") or None,
        price_minor=parse_major(price, current.currency, where="price") if price else None,
        low_stock_threshold=as_int(form.get("low_stock_threshold"), "low_stock_threshold"),
        max_quantity=as_int(form.get("max_quantity"), "max_quantity"),
        position=as_int(form.get("position"), "position"),
        active=form.get("active") == "on",
    )
    written(shop(request), catalog.update_sku, code, data)
    return redirect(f"{PREFIX}/catalog/skus/{code}")


@router.post("/catalog/skus/{code}/flash-sale")
def set_flash_sale(code: str, request: Request, _admin: Admin, form: Form) -> Response:
    """Create or change the SKU's flash sale (`catalog.set_flash_sale`: a window after the
    last sale ended starts a new one)."""
    with shop(request).db.read() as s:
        current = catalog.get_sku(s, code)
    price = (form.get("sale_price") or "").strip()
    zone = shop(request).timezone  # the page says which zone its times are in
    data = model(
        catalog.FlashSaleIn,
        starts_at=localtime.read_field(form, "starts_at", zone),
        ends_at=localtime.read_field(form, "ends_at", zone),
        price_minor=parse_major(price, current.currency, where="sale_price") if price else None,
        quota=as_int(form.get("quota"), "quota"),
        **{  # left empty: the sale's defaults (one per buyer, five minutes to pay)
            name: value
            for name in ("per_buyer_limit", "reservation_minutes")
            if (value := as_int(form.get(name), name)) is not None
        },
    )
    written(shop(request), catalog.set_flash_sale, code, data)
    return redirect(f"{PREFIX}/catalog/skus/{code}")


@router.post("/catalog/skus/{code}/webhook-secret", response_class=HTMLResponse)
def webhook_secret(code: str, request: Request, admin: Admin, _form: Form) -> Response:
    """Shows a webhook SKU's signing secret: the owner only, checked here, not by the button."""
    require(admin, OWNER, "read signing secrets")
    with shop(request).db.read() as s:
        context = _sku_context(s, code, shop(request).timezone)
    if not context["webhook"]:
        raise catalog_not_found("webhook SKU", code)
    secret = fulfilment.webhook_secret(shop(request), code)
    return render(request, "sku.html", admin=admin, secret=secret, **context)
