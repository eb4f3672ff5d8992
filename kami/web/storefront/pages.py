"""Server-rendered storefront pages: home, product, order. The router of the whole storefront.

Pages never put a key or an order's contents in their HTML: the order page's script reads the
access token from the URL fragment (never sent to the server) and asks the JSON API.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from kami.web.deps import ShopDep
from kami.web.inputs import CheckedRoute
from kami.web.storefront.rendering import render
from kami.web.storefront.shelf import find_product, public_tree

router = APIRouter(include_in_schema=False, route_class=CheckedRoute)


@router.get("/", response_class=HTMLResponse)
def home(request: Request, shop: ShopDep) -> HTMLResponse:
    return render(request, "home.html", shop, tree=public_tree(shop))


@router.get("/p/{slug}", response_class=HTMLResponse)
def product_page(
    slug: str, request: Request, shop: ShopDep, sku: str | None = None
) -> HTMLResponse:
    category, product = find_product(shop, slug)
    chosen = next((s for s in product.skus if s.code == sku), None)
    if chosen is None:
        chosen = next((s for s in product.skus if s.stock.available), product.skus[0])
    return render(request, "product.html", shop, category=category, product=product, chosen=chosen)


@router.get("/orders/{order_no}", response_class=HTMLResponse)
def order_page(order_no: str, request: Request, shop: ShopDep) -> HTMLResponse:
    # The page holds no order data: its script reads the token from the URL fragment and asks
    # the API, so the page itself reveals nothing to whoever knows only the order number.
    return render(request, "order.html", shop, order_no=order_no, no_store=True)


def _include_all() -> None:
    from kami.web.storefront import checkout, lookup

    router.include_router(checkout.router)
    router.include_router(lookup.router)


_include_all()
