"""Catalog reads."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from kami.catalog.models import CURRENT_SALE, Category, FlashSale, Product, Sku
from kami.catalog.rules import DeliveryKind, StockDisplay, display_stock
from kami.catalog.schemas import (
    CategoryView,
    ProductView,
    PublicCategory,
    PublicFlashSale,
    PublicProduct,
    PublicSku,
    SkuView,
)
from kami.kernel.clock import utcnow
from kami.kernel.errors import NotFound
from kami.kernel.prepared import Prepared


def category_view(session: Session, cat: Category) -> CategoryView:
    parent = session.get(Category, cat.parent_id) if cat.parent_id else None
    return CategoryView(
        slug=cat.slug, name=cat.name, parent=parent.slug if parent else None, position=cat.position
    )


def product_view(session: Session, prod: Product) -> ProductView:
    cat = session.get(Category, prod.category_id)
    assert cat is not None
    return ProductView(
        slug=prod.slug,
        category=cat.slug,
        name=prod.name,
        description=prod.description,
        benefits=[str(b) for b in prod.benefits],
        validity_days=prod.validity_days,
        redemption=prod.redemption,
        position=prod.position,
        active=prod.active,
    )


def _sku_view(sku: Any, prod: Any) -> SkuView:
    """From ORM objects, or from a row and the product's columns (`sku_row_view`)."""
    return SkuView(
        id=sku.id,
        code=sku.code,
        product_slug=prod.slug,
        product_name=prod.name,
        name=sku.name,
        price_minor=sku.price_minor,
        currency=sku.currency,
        delivery_kind=DeliveryKind(sku.delivery_kind),
        min_quantity=sku.min_quantity,
        max_quantity=sku.max_quantity,
        active=sku.active and prod.active,
        stock_display=StockDisplay(sku.stock_display),
        low_stock_threshold=sku.low_stock_threshold,
        validity_days=prod.validity_days,
        redemption=prod.redemption,
        gateways=list(sku.gateways) if sku.gateways is not None else None,
        delivery_config=dict(sku.delivery_config or {}),
        input_fields=list(sku.input_fields or []),
    )


def sku_view(session: Session, sku: Sku) -> SkuView:
    prod = session.get(Product, sku.product_id)
    assert prod is not None
    return _sku_view(sku, prod)


# Built once and run as Core: every checkout looks its SKU up by code.
_S, _P = Sku.__table__, Product.__table__


def sku_by_code_select() -> Select[Any]:
    """The SKU of code `:code` with its product's columns, as `sku_row_view` reads them."""
    return (
        select(
            _S,
            _P.c.slug.label("product_slug"),
            _P.c.name.label("product_name"),
            _P.c.active.label("product_active"),
            _P.c.validity_days.label("product_validity_days"),
            _P.c.redemption.label("product_redemption"),
        )
        .join(_P, _P.c.id == _S.c.product_id)
        .where(_S.c.code == bindparam("code"))
    )


_SKU_BY_CODE = Prepared(sku_by_code_select())


def sku_row_view(r: Any) -> SkuView:
    product = SimpleNamespace(
        slug=r.product_slug,
        name=r.product_name,
        active=r.product_active,
        validity_days=r.product_validity_days,
        redemption=r.product_redemption,
    )
    return _sku_view(r, product)


def get_sku(session: Session, code: str) -> SkuView:
    found = find_sku(session, code)
    if found is None:
        raise NotFound(f"no SKU with code {code!r}", where="sku")
    return found


def find_sku(session: Session, code: str) -> SkuView | None:
    row = _SKU_BY_CODE.run(session, {"code": code}).first()
    return sku_row_view(row) if row else None


def list_skus(session: Session) -> list[SkuView]:
    rows = session.execute(
        select(Sku, Product)
        .join(Product, Product.id == Sku.product_id)
        .order_by(Product.position, Product.id, Sku.position, Sku.id)
    )
    return [_sku_view(s, p) for s, p in rows.tuples()]


def list_categories(session: Session) -> list[CategoryView]:
    cats = (
        session.execute(select(Category).order_by(Category.position, Category.id)).scalars().all()
    )
    slugs = {c.id: c.slug for c in cats}
    return [
        CategoryView(
            slug=c.slug,
            name=c.name,
            parent=slugs.get(c.parent_id) if c.parent_id else None,
            position=c.position,
        )
        for c in cats
    ]


def list_products(session: Session) -> list[ProductView]:
    prods = session.execute(select(Product).order_by(Product.position, Product.id)).scalars().all()
    return [product_view(session, p) for p in prods]


def is_empty(session: Session) -> bool:
    return session.execute(select(Sku.id).limit(1)).first() is None


def public_tree(
    session: Session,
    available: Mapping[int, int],
    gateways: Mapping[str, frozenset[str] | None] | None = None,
) -> list[PublicCategory]:
    """The active catalog as buyers see it; `available` maps SKU id to sellable stock,
    `gateways` maps the enabled payment accounts to the currencies they take (None: any); each
    SKU lists those it may be paid through.

    Categories are ordered by position; a category is shown when anything below it is active.
    """
    cats = (
        session.execute(select(Category).order_by(Category.position, Category.id)).scalars().all()
    )
    prods = (
        session.execute(
            select(Product).where(Product.active.is_(True)).order_by(Product.position, Product.id)
        )
        .scalars()
        .all()
    )
    skus = (
        session.execute(select(Sku).where(Sku.active.is_(True)).order_by(Sku.position, Sku.id))
        .scalars()
        .all()
    )

    now = utcnow()
    sales = {
        f.sku_id: PublicFlashSale(
            starts_at=f.starts_at,
            ends_at=f.ends_at,
            price_minor=f.price_minor,
            per_buyer_limit=f.per_buyer_limit,
            remaining=max(0, f.quota - f.taken),
            selling=f.starts_at <= now,
        )
        for f in session.execute(
            select(FlashSale).where(FlashSale.ends_at > now, CURRENT_SALE)
        ).scalars()
    }
    skus_by_product: dict[int, list[PublicSku]] = defaultdict(list)
    for s in skus:
        skus_by_product[s.product_id].append(
            PublicSku(
                code=s.code,
                name=s.name,
                price_minor=s.price_minor,
                currency=s.currency,
                min_quantity=s.min_quantity,
                max_quantity=s.max_quantity,
                stock=display_stock(
                    StockDisplay(s.stock_display), available.get(s.id, 0), s.low_stock_threshold
                ),
                gateways=[
                    g
                    for g, takes in (gateways or {}).items()
                    if (s.gateways is None or g in s.gateways)
                    and (takes is None or s.currency in takes)
                ],
                delivery_kind=DeliveryKind(s.delivery_kind),
                input_fields=list(s.input_fields or []),
                flash_sale=sales.get(s.id),
            )
        )
    products_by_cat: dict[int, list[PublicProduct]] = defaultdict(list)
    for p in prods:
        if skus_by_product.get(p.id):
            products_by_cat[p.category_id].append(
                PublicProduct(
                    slug=p.slug,
                    name=p.name,
                    description=p.description,
                    benefits=[str(b) for b in p.benefits],
                    validity_days=p.validity_days,
                    redemption=p.redemption,
                    skus=skus_by_product[p.id],
                )
            )
    children: dict[int | None, list[Category]] = defaultdict(list)
    for c in cats:
        children[c.parent_id].append(c)

    def build(cat: Category) -> PublicCategory | None:
        kids = [k for k in (build(ch) for ch in children.get(cat.id, [])) if k is not None]
        products = products_by_cat.get(cat.id, [])
        if not kids and not products:
            return None
        return PublicCategory(slug=cat.slug, name=cat.name, products=products, children=kids)

    return [t for t in (build(c) for c in children.get(None, [])) if t is not None]
