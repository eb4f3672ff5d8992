"""Supplier callbacks: `POST` (and `GET`, for protocols that call back that way)
`/api/v1/suppliers/{name}/callback`. The raw request goes to the account's adapter untouched;
it is verified there and applied the way a poll is, and the answer is the adapter's own
acknowledgement (the one that stops the supplier's retries)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from kami import fulfilment, suppliers
from kami.web.inputs import CheckedRoute

router = APIRouter(prefix="/api/v1", tags=["suppliers"], route_class=CheckedRoute)

MAX_CALLBACK_BODY = 256 * 1024
# Account names are configured; anything else is refused before it is looked up or logged.
SupplierName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="account")]


async def _callback(name: str, request: Request) -> Response:
    body = await request.body()
    raw = suppliers.SupplierCallback(
        method=request.method,
        headers={k.lower(): v for k, v in request.headers.items()},
        query=dict(request.query_params),
        body=body[:MAX_CALLBACK_BODY],
    )
    shop = request.app.state.container.shop
    status, content, media_type = await run_in_threadpool(
        fulfilment.handle_callback, shop, name, raw
    )
    return Response(content, status_code=status, media_type=media_type)


@router.post(
    "/suppliers/{name}/callback",
    responses={
        200: {"description": "acknowledged in the supplier's own format"},
        400: {"description": "rejected (bad signature, malformed); the supplier retries"},
        404: {"description": "no supplier account of that name"},
    },
)
async def callback_post(name: SupplierName, request: Request) -> Response:
    return await _callback(name, request)


@router.get("/suppliers/{name}/callback", include_in_schema=False)
async def callback_get(name: SupplierName, request: Request) -> Response:
    return await _callback(name, request)
