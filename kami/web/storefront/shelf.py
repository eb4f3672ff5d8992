"""The catalog as the storefront shows it: the public tree, and finding a product or SKU in it."""

from __future__ import annotations

from collections.abc import Iterator

from kami import catalog, fulfilment, vault
from kami.kernel.errors import NotFound


def public_tree(shop: fulfilment.Shop) -> list[catalog.PublicCategory]:
    with shop.db.read() as s:
        return catalog.public_tree(s, vault.count_available(s), shop.gateways.currencies())


def walk(
    tree: list[catalog.PublicCategory],
) -> Iterator[tuple[catalog.PublicCategory, catalog.PublicProduct]]:
    for cat in tree:
        for p in cat.products:
            yield cat, p
        yield from walk(cat.children)


def find_product(
    shop: fulfilment.Shop, slug: str
) -> tuple[catalog.PublicCategory, catalog.PublicProduct]:
    for cat, product in walk(public_tree(shop)):
        if product.slug == slug:
            return cat, product
    raise NotFound(f"no product {slug!r} on sale", where="slug", slug="product-not-found")


def find_sku(shop: fulfilment.Shop, code: str) -> tuple[catalog.PublicProduct, catalog.PublicSku]:
    for _, product in walk(public_tree(shop)):
        for sku in product.skus:
            if sku.code == code:
                return product, sku
    raise NotFound(f"no SKU {code!r} on sale", where="sku", slug="sku-not-found")
