"""Catalog write operations. They never commit: the request or command boundary does."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kami.catalog.goods import DeliveryKind, check_config, check_input_fields, config_of
from kami.catalog.models import Category, Product, Sku
from kami.catalog.queries import category_view, product_view, sku_view
from kami.catalog.schemas import (
    CategoryIn,
    CategoryPatch,
    CategoryView,
    ProductIn,
    ProductPatch,
    ProductView,
    SkuIn,
    SkuPatch,
    SkuView,
)
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, NotFound
from kami.kernel.money import check_currency


def _category(session: Session, slug: str, *, where: str) -> Category:
    cat = session.execute(select(Category).where(Category.slug == slug)).scalar_one_or_none()
    if cat is None:
        raise NotFound(f"no category with slug {slug!r}", where=where)
    return cat


def _product(session: Session, slug: str, *, where: str) -> Product:
    prod = session.execute(select(Product).where(Product.slug == slug)).scalar_one_or_none()
    if prod is None:
        raise NotFound(f"no product with slug {slug!r}", where=where)
    return prod


def _sku(session: Session, code: str) -> Sku:
    sku = session.execute(select(Sku).where(Sku.code == code)).scalar_one_or_none()
    if sku is None:
        raise NotFound(f"no SKU with code {code!r}", where="sku")
    return sku


def create_category(session: Session, data: CategoryIn) -> CategoryView:
    if session.execute(select(Category.id).where(Category.slug == data.slug)).first():
        raise Conflict(f"category {data.slug!r} already exists", where="slug")
    parent = _category(session, data.parent, where="parent") if data.parent else None
    cat = Category(
        slug=data.slug,
        name=data.name,
        parent_id=parent.id if parent else None,
        position=data.position,
        created_at=utcnow(),
    )
    session.add(cat)
    session.flush()
    return category_view(session, cat)


def update_category(session: Session, slug: str, data: CategoryPatch) -> CategoryView:
    cat = _category(session, slug, where="slug")
    if data.name is not None:
        cat.name = data.name
    if data.position is not None:
        cat.position = data.position
    if data.move_to_root:
        cat.parent_id = None
    elif data.parent is not None:
        parent = _category(session, data.parent, where="parent")
        # Walk up from the new parent: meeting the category itself would make a cycle.
        node: Category | None = parent
        while node is not None:
            if node.id == cat.id:
                raise InvalidInput("a category cannot be moved under itself", where="parent")
            node = session.get(Category, node.parent_id) if node.parent_id else None
        cat.parent_id = parent.id
    session.flush()
    return category_view(session, cat)


def delete_category(session: Session, slug: str) -> None:
    cat = _category(session, slug, where="slug")
    children = session.scalar(select(func.count()).where(Category.parent_id == cat.id))
    products = session.scalar(select(func.count()).where(Product.category_id == cat.id))
    if children or products:
        raise Conflict(
            f"category {slug!r} still has {children} sub-categories and {products} products",
            where="slug",
        )
    session.delete(cat)
    session.flush()


def create_product(session: Session, data: ProductIn) -> ProductView:
    if session.execute(select(Product.id).where(Product.slug == data.slug)).first():
        raise Conflict(f"product {data.slug!r} already exists", where="slug")
    cat = _category(session, data.category, where="category")
    prod = Product(
        slug=data.slug,
        category_id=cat.id,
        name=data.name,
        description=data.description,
        benefits=list(data.benefits),
        validity_days=data.validity_days,
        redemption=data.redemption,
        position=data.position,
        active=data.active,
        created_at=utcnow(),
    )
    session.add(prod)
    session.flush()
    return product_view(session, prod)


def update_product(session: Session, slug: str, data: ProductPatch) -> ProductView:
    prod = _product(session, slug, where="slug")
    fields = data.model_dump(exclude_unset=True)
    if "category" in fields:
        if data.category is None:
            raise InvalidInput("a product must belong to a category", where="category")
        prod.category_id = _category(session, data.category, where="category").id
    for name in (
        "name",
        "description",
        "benefits",
        "validity_days",
        "redemption",
        "position",
        "active",
    ):
        if name in fields:
            value = fields[name]
            if value is None and name not in ("validity_days",):
                raise InvalidInput(f"{name} cannot be null", where=name)
            setattr(prod, name, value)
    session.flush()
    return product_view(session, prod)


def create_sku(session: Session, data: SkuIn) -> SkuView:
    if session.execute(select(Sku.id).where(Sku.code == data.code)).first():
        raise Conflict(f"SKU {data.code!r} already exists", where="code")
    prod = _product(session, data.product, where="product")
    check_currency(data.currency)
    sku = Sku(
        code=data.code,
        product_id=prod.id,
        name=data.name,
        price_minor=data.price_minor,
        currency=data.currency,
        delivery_kind=data.delivery_kind,
        min_quantity=data.min_quantity,
        max_quantity=data.max_quantity,
        active=data.active,
        stock_display=data.stock_display,
        low_stock_threshold=data.low_stock_threshold,
        position=data.position,
        gateways=sorted(set(data.gateways)) if data.gateways is not None else None,
        delivery_config=data.delivery_config,
        input_fields=data.input_fields,
        created_at=utcnow(),
    )
    _check_goods(session, sku)
    session.add(sku)
    session.flush()
    return sku_view(session, sku)


def _check_goods(session: Session, sku: Sku) -> None:
    """The kind's settings and the buyer's fields, checked and normalised in place; a bundle's
    components must exist, be sold in its currency, not be bundles, and share its price."""
    kind = DeliveryKind(sku.delivery_kind)
    sku.delivery_config = check_config(kind, sku.delivery_config)
    sku.input_fields = check_input_fields(sku.input_fields)
    if kind is DeliveryKind.RECHARGE:
        config = config_of(kind, sku.delivery_config)
        if config.account_field not in {f["name"] for f in sku.input_fields or []}:
            raise InvalidInput(
                f"a recharge SKU needs an input field named {config.account_field!r} "
                "(the account to recharge)",
                where="input_fields",
            )
    if kind is not DeliveryKind.BUNDLE:
        return
    total = 0
    asked = {f["name"] for f in sku.input_fields or []}
    for n, component in enumerate(config_of(kind, sku.delivery_config).components):
        where = f"delivery_config.components.{n}.sku"
        part = session.execute(select(Sku).where(Sku.code == component.sku)).scalar_one_or_none()
        if part is None:
            raise InvalidInput(f"no SKU {component.sku!r}", where=where)
        # The bundle's buyer fills in what each component needs (a recharge's account).
        needed = {f["name"] for f in part.input_fields or [] if f.get("required", True)}
        if needed - asked:
            raise InvalidInput(
                f"component {component.sku} needs the buyer's {', '.join(sorted(needed - asked))}: "
                "add the same input fields to the bundle",
                where="input_fields",
            )
        if part.delivery_kind == DeliveryKind.BUNDLE or part.id == sku.id:
            raise InvalidInput("a bundle cannot contain a bundle", where=where)
        if part.currency != sku.currency:
            raise InvalidInput(
                f"{component.sku} is sold in {part.currency}, the bundle in {sku.currency}",
                where=where,
            )
        total += component.share_minor * component.quantity
    if total != sku.price_minor:
        raise InvalidInput(
            f"the components' shares add up to {total}, the bundle's price is {sku.price_minor}: "
            "they must be equal, so a failed component's share can be refunded",
            where="delivery_config.components",
        )


def update_sku(session: Session, code: str, data: SkuPatch) -> SkuView:
    sku = _sku(session, code)
    fields = data.model_dump(exclude_unset=True)
    for name, value in fields.items():
        if name == "gateways":  # null is meaningful here: every enabled account
            sku.gateways = sorted(set(value)) if value is not None else None
            continue
        if value is None:
            raise InvalidInput(f"{name} cannot be null", where=name)
        if name == "currency":
            check_currency(value)
        setattr(sku, name, value)
    if sku.min_quantity > sku.max_quantity:
        raise InvalidInput("min_quantity must not exceed max_quantity", where="min_quantity")
    _check_goods(session, sku)
    session.flush()
    return sku_view(session, sku)
