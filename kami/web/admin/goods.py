"""The admin JSON API for goods that are not pre-loaded keys: the operator's queue of manual
goods, a line's retry or failure, a webhook SKU's signing secret, a license SKU's policy."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from kami import accounts, catalog, fulfilment, licenses, vault
from kami.kernel.clock import utcnow
from kami.kernel.errors import Forbidden, InvalidInput
from kami.web.deps import AdminDep, ShopDep
from kami.web.inputs import CheckedRoute

router = APIRouter(prefix="/api/admin", tags=["admin"], route_class=CheckedRoute)

LineId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
SkuCode = Annotated[str, PathParam(max_length=64)]


class LineOut(BaseModel):
    id: int
    order_no: str
    position: int
    sku: str
    kind: str
    quantity: int
    status: str
    attempts: int
    detail: str | None
    due_at: datetime | None


class ManualTaskOut(BaseModel):
    line: LineOut
    email: str
    buyer_input: dict[str, str]
    instructions: str
    paid_at: datetime | None


@router.get("/manual-queue", response_model=list[ManualTaskOut])
def manual_queue(shop: ShopDep, _: AdminDep) -> list[ManualTaskOut]:
    """Manual goods waiting for an operator, oldest first, with what the buyer filled in."""
    return [
        ManualTaskOut(
            line=LineOut(
                id=t.line.id,
                order_no=t.order_no,
                position=t.line.position,
                sku=t.line.sku_code,
                kind=t.line.kind,
                quantity=t.line.quantity,
                status=t.line.status.value,
                attempts=t.line.attempts,
                detail=t.line.detail,
                due_at=t.line.due_at,
            ),
            email=t.email,
            buyer_input=t.buyer_input,
            instructions=t.instructions,
            paid_at=t.paid_at,
        )
        for t in fulfilment.manual_queue(shop)
    ]


class GoodsItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    card: str = Field(min_length=1, max_length=2000)
    password: str | None = Field(default=None, max_length=2000)


class FulfilIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[GoodsItemIn] = Field(min_length=1, max_length=1000)


class FailIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=400)


class Done(BaseModel):
    line_id: int
    status: str


@router.post("/lines/{line_id}/fulfil", response_model=Done)
def fulfil_line(line_id: LineId, body: FulfilIn, shop: ShopDep, admin: AdminDep) -> Done:
    """Hand over the goods of a line (stored encrypted; the buyer reveals them)."""
    goods = [vault.Secret(i.card.strip(), i.password or None) for i in body.items]
    if any(not g.card for g in goods):
        raise InvalidInput("an item's card is empty", where="items")
    fulfilment.fulfil_by_hand(shop, line_id, goods, admin.username)
    return Done(line_id=line_id, status="delivered")


@router.post("/lines/{line_id}/fail", response_model=Done)
def fail_line(line_id: LineId, body: FailIn, shop: ShopDep, admin: AdminDep) -> Done:
    """Give up on a line: its share of the order is refunded through the payment channel."""
    fulfilment.fail_by_hand(shop, line_id, body.reason, admin.username)
    return Done(line_id=line_id, status="failed")


@router.post("/lines/{line_id}/retry", response_model=Done)
def retry_line(line_id: LineId, shop: ShopDep, _: AdminDep) -> Done:
    """Attempt a webhook line now instead of at its next turn."""
    now = utcnow()
    fulfilment.make_due(shop, line_id, now)
    line = fulfilment.attempt_line(shop, line_id, now=now)
    return Done(line_id=line_id, status=line.status.value)


class SecretOut(BaseModel):
    sku: str
    secret: str
    header: str = "X-Kami-Signature: v1=<hex HMAC-SHA256 of '<X-Kami-Timestamp>.<body>'>"


@router.get("/skus/{code}/webhook-secret", response_model=SecretOut)
def webhook_secret(code: SkuCode, shop: ShopDep, admin: AdminDep) -> SecretOut:
    """The secret a webhook SKU's endpoint checks Kami's requests with (owner only)."""
    if admin.role is not accounts.Role.OWNER:
        raise Forbidden(
            "only the owner may read signing secrets", where="role", slug="role-forbidden"
        )
    with shop.db.read() as s:
        sku = catalog.get_sku(s, code)
    if sku.delivery_kind != catalog.DeliveryKind.WEBHOOK:
        raise InvalidInput(f"{code} is not delivered by webhook", where="code")
    return SecretOut(sku=code, secret=fulfilment.webhook_secret(shop, code))


@router.put("/skus/{code}/license-policy", response_model=licenses.PolicyView)
def set_license_policy(
    code: SkuCode, body: licenses.PolicyIn, shop: ShopDep, _: AdminDep
) -> licenses.PolicyView:
    """How a license SKU's keys look and how many machines each may activate."""
    with shop.db.write() as s:
        sku = catalog.get_sku(s, code)
        if sku.delivery_kind != catalog.DeliveryKind.LICENSE:
            raise InvalidInput(f"{code} does not deliver licenses", where="code")
        return licenses.set_policy(s, sku.id, body)


@router.get("/skus/{code}/license-policy", response_model=licenses.PolicyView)
def get_license_policy(code: SkuCode, shop: ShopDep, _: AdminDep) -> licenses.PolicyView:
    with shop.db.read() as s:
        sku = catalog.get_sku(s, code)
        return licenses.get_policy(s, sku.id)
