"""The buyer-facing JSON API and the payment notification endpoint."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response

from kami import catalog, delivery, fulfilment, orders, payments, vault
from kami.web import groups, ordering, running
from kami.web.api.schemas import (
    CreatedOrderOut,
    OrderOut,
    PaymentOut,
    RevealedItemOut,
    RevealOut,
    order_out,
)
from kami.web.deps import ShopDep, bearer, client_ip, device_id, rate_limit_on_loop
from kami.web.inputs import CheckedRoute

router = APIRouter(prefix="/api/v1", tags=["shop"], route_class=CheckedRoute)

MAX_NOTIFY_BODY = 256 * 1024
# Gateway names are registered in code; anything else is refused before it is looked up or logged.
GatewayName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="payment channel")]


@router.get("/catalog", response_model=list[catalog.PublicCategory])
def get_catalog(shop: ShopDep) -> list[catalog.PublicCategory]:
    with shop.db.read() as s:
        return catalog.public_tree(s, vault.count_available(s), shop.gateways.currencies())


# The buyer's endpoints are coroutines that run their work through `running.run`: on the event
# loop itself when nothing would make it wait, else on a worker thread (decision 0010).


@router.post("/orders", status_code=201, response_model=CreatedOrderOut)
async def create_order(
    body: orders.OrderIn,
    request: Request,
    response: Response,
    shop: ShopDep,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> CreatedOrderOut:
    await rate_limit_on_loop(request, "orders")
    placed = await ordering.place_order(
        shop,
        body,
        idempotency_key=idempotency_key,
        buyer_ip=client_ip(request),
        device_id=device_id(request),
    )
    o = placed.order
    response.headers["Location"] = f"/api/v1/orders/{o.order_no}"
    return CreatedOrderOut(
        order_no=o.order_no,
        access_token=placed.access_token,
        amount_minor=o.amount_minor,
        currency=o.currency,
        status=o.status,
        expires_at=o.expires_at,
        payment=PaymentOut(
            gateway=o.gateway,
            kind=placed.payment.kind,
            url=placed.payment.url,
            qr=placed.payment.qr,
        ),
    )


def _buyer_order(
    shop: fulfilment.Shop, order_no: str, token: str | None
) -> tuple[orders.OrderView, list[fulfilment.BuyerItem], list[delivery.LineView]]:
    order, items = fulfilment.buyer_view(shop, order_no, token)
    return order, items, fulfilment.buyer_parts(shop, order.id)


@router.get("/orders/{order_no}", response_model=OrderOut)
async def get_order(order_no: str, request: Request, shop: ShopDep) -> OrderOut:
    # The order page polls this until the order is delivered.
    return order_out(*await running.run(_buyer_order, shop, order_no, bearer(request)))


@router.post("/orders/{order_no}/reveal", response_model=RevealOut)
async def reveal_order(
    order_no: str, request: Request, response: Response, shop: ShopDep
) -> RevealOut:
    await rate_limit_on_loop(request, "reveals")
    order, items = await running.run(
        fulfilment.reveal,
        shop,
        order_no,
        bearer(request),
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
    response.headers["Cache-Control"] = "no-store"
    return RevealOut(
        order_no=order.order_no,
        redemption=order.redemption,
        items=[
            RevealedItemOut(
                position=i.position,
                card=i.card,
                password=i.password,
                kind=i.kind,
                name=i.name,
                expires_at=i.expires_at,
                downloads_left=i.downloads_left,
            )
            for i in items
        ],
    )


@router.post("/orders/{order_no}/cancel", response_model=OrderOut)
async def cancel_order(order_no: str, request: Request, shop: ShopDep) -> OrderOut:
    """Give up an unpaid order: its reserved keys go back on sale at once."""
    order = await running.run(fulfilment.cancel_order, shop, order_no, bearer(request))
    return order_out(order, [])


async def answer_notification(gateway: str, request: Request) -> Response:
    body = await request.body()
    if len(body) > MAX_NOTIFY_BODY:
        body = body[:MAX_NOTIFY_BODY]
    raw = payments.RawNotification(
        gateway=gateway,
        method=request.method,
        headers={k.lower(): v for k, v in request.headers.items()},
        query=dict(request.query_params),
        body=body,
        remote_addr=client_ip(request),
    )
    shop = request.app.state.container.shop
    # Verified once, here: what follows may run again after waiting for SQLite's writer.
    checked = fulfilment.check_notification(shop, raw)
    # Applied together with the notifications read in the same pass (decisions 0022, 0023).
    outcome = await groups.run_payment_together(
        "notify",
        checked,
        partial(fulfilment.handle_notifications_together, shop),
        partial(running.run_now, fulfilment.handle_notification, shop, checked),
        most=fulfilment.paid_together.MAX_GROUP,
    )
    ack = outcome.ack
    return Response(
        ack.body,
        status_code=ack.status_code,
        media_type=ack.content_type,
        headers=dict(ack.headers),
    )


@router.post(
    "/payments/{gateway}/notify",
    responses={
        200: {"description": "acknowledged in the channel's own format"},
        400: {"description": "rejected; the body says why"},
    },
)
async def notify_post(gateway: GatewayName, request: Request) -> Response:
    return await answer_notification(gateway, request)


@router.get("/payments/{gateway}/notify", include_in_schema=False)
async def notify_get(gateway: GatewayName, request: Request) -> Response:
    return await answer_notification(gateway, request)
