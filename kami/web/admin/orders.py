"""The admin JSON API for orders, notifications and jobs, behind admin bearer tokens."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from kami import accounts, fulfilment, orders, payments
from kami.kernel import outbox
from kami.kernel.errors import Forbidden, NotFound
from kami.kernel.money import MAX_MINOR
from kami.web.deps import AdminDep, ShopDep
from kami.web.inputs import CheckedRoute

router = APIRouter(prefix="/api/admin", tags=["admin"], route_class=CheckedRoute)

MAX_ID = 2**31 - 1  # row ids are 32-bit INTEGER columns; a larger one cannot exist


# -- orders ------------------------------------------------------------------------------------
class AdminOrderOut(BaseModel):
    order: orders.OrderView
    items: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    notifications: list[dict[str, Any]]
    reveals: list[dict[str, Any]]
    jobs: list[dict[str, Any]]
    refunds: list[dict[str, Any]]
    lines: list[dict[str, Any]]


@router.get("/orders", response_model=list[orders.OrderView])
def search_orders(
    shop: ShopDep,
    _: AdminDep,
    status: orders.OrderStatus | None = None,
    email: Annotated[str | None, Query(max_length=254)] = None,
    sku: Annotated[str | None, Query(max_length=64)] = None,
    order_no: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[orders.OrderView]:
    with shop.db.read() as s:
        return orders.list_orders(
            s, status=status, email=email, sku=sku, order_no=order_no, limit=limit, offset=offset
        )


@router.get("/orders/{order_no}", response_model=AdminOrderOut)
def order_detail(order_no: str, shop: ShopDep, _: AdminDep) -> AdminOrderOut:
    d = fulfilment.admin_detail(shop, order_no)
    return AdminOrderOut(
        order=d.order,
        refunds=[_refund_out(r).model_dump() for r in d.refunds],
        lines=[
            {
                "id": line.id,
                "position": line.position,
                "sku": line.sku_code,
                "kind": line.kind,
                "quantity": line.quantity,
                "share_minor": line.share_minor,
                "status": line.status.value,
                "attempts": line.attempts,
                "detail": line.detail,
            }
            for line in d.lines
        ],
        items=[{"position": i.position, "masked": i.masked} for i in d.items],
        timeline=[{"at": e.at.isoformat(), "event": e.event, **e.detail} for e in d.timeline],
        notifications=[
            {
                "received_at": n.received_at.isoformat(),
                "gateway": n.gateway,
                "verdict": n.verdict,
                "reason": n.reason,
                "detail": n.detail,
                "trade_no": n.trade_no,
                "body": n.body,
                "remote_addr": n.remote_addr,
            }
            for n in d.notifications
        ],
        reveals=[
            {"at": r.revealed_at.isoformat(), "ip": r.ip, "user_agent": r.user_agent}
            for r in d.reveals
        ],
        jobs=[
            {
                "id": j.id,
                "kind": j.kind,
                "status": j.status,
                "attempts": j.attempts,
                "last_error": j.last_error,
            }
            for j in d.jobs
        ],
    )


class RedeliverOut(BaseModel):
    order_no: str
    status: str
    action: str


@router.post("/orders/{order_no}/redeliver", response_model=RedeliverOut)
def redeliver(order_no: str, shop: ShopDep, _: AdminDep) -> RedeliverOut:
    return RedeliverOut(**fulfilment.redeliver(shop, order_no))


class SyncOut(BaseModel):
    order_no: str
    found: bool
    verdict: str | None
    status: str


@router.post("/orders/{order_no}/sync", response_model=SyncOut)
def sync_order(order_no: str, shop: ShopDep, _: AdminDep) -> SyncOut:
    """Ask the payment channel about an unpaid order and apply its answer like a notification."""
    r = fulfilment.sync_order(shop, order_no)
    return SyncOut(
        order_no=r.order_no,
        found=r.found,
        verdict=r.outcome.verdict if r.outcome else None,
        status=r.status,
    )


@router.get("/notifications")
def list_notifications(
    shop: ShopDep,
    _: AdminDep,
    verdict: payments.Verdict | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    with shop.db.read() as s:
        rows = payments.list_notifications(s, verdict=verdict, limit=limit)
    return [
        {
            "received_at": n.received_at.isoformat(),
            "gateway": n.gateway,
            "order_no": n.order_no,
            "trade_no": n.trade_no,
            "verdict": n.verdict,
            "reason": n.reason,
            "detail": n.detail,
            "body": n.body,
            "remote_addr": n.remote_addr,
        }
        for n in rows
    ]


@router.get("/jobs")
def list_jobs(
    shop: ShopDep,
    _: AdminDep,
    status: outbox.JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    with shop.db.read() as s:
        jobs = outbox.list_jobs(s, status=status, limit=limit)
    return [
        {
            "id": j.id,
            "kind": j.kind,
            "ref": j.ref,
            "status": j.status,
            "attempts": j.attempts,
            "run_after": j.run_after.isoformat(),
            "last_error": j.last_error,
        }
        for j in jobs
    ]


@router.post("/jobs/{job_id}/retry", status_code=204)
def retry_job(
    job_id: Annotated[int, PathParam(ge=1, le=MAX_ID, description="id from GET /api/admin/jobs")],
    shop: ShopDep,
    _: AdminDep,
) -> None:
    with shop.db.write() as s:
        if not outbox.retry_job(s, job_id):
            raise NotFound(f"no parked job {job_id}", where="job_id")


# -- refunds -----------------------------------------------------------------------------------
MONEY_ROLES = frozenset({accounts.Role.OWNER, accounts.Role.FINANCE})


def _money_role(admin: accounts.AdminView) -> None:
    if admin.role not in MONEY_ROLES:
        raise Forbidden(
            f"a {admin.role} may not move money; refunds are for the owner and finance",
            where="role",
            slug="role-forbidden",
        )


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount_minor: int | None = Field(
        default=None, ge=1, le=MAX_MINOR, description="minor units; omitted: all that is left"
    )
    reason: str = Field(min_length=1, max_length=500)
    keys: Literal["keep", "void", "restock"] = Field(
        default="keep", description="what becomes of the order's keys once the money is back"
    )
    positions: list[Annotated[int, Field(ge=1, le=10_000)]] | None = Field(
        default=None, max_length=10_000, description="items the key choice applies to; all"
    )


class RefundOut(BaseModel):
    refund_no: str
    order_no: str
    gateway: str
    amount_minor: int
    currency: str
    status: str
    origin: str
    reason: str
    keys: str
    channel_refund_id: str | None
    detail: str | None
    requested_by: str | None
    created_at: str
    settled_at: str | None


class RefundResultOut(BaseModel):
    refund: RefundOut
    order_status: str
    note: str | None


def _refund_out(r: payments.RefundView) -> RefundOut:
    return RefundOut(
        refund_no=r.refund_no,
        order_no=r.order_no,
        gateway=r.gateway,
        amount_minor=r.amount_minor,
        currency=r.currency,
        status=r.status.value,
        origin=r.origin,
        reason=r.reason,
        keys=r.keys,
        channel_refund_id=r.channel_refund_id,
        detail=r.detail,
        requested_by=r.requested_by,
        created_at=r.created_at.isoformat(),
        settled_at=r.settled_at.isoformat() if r.settled_at else None,
    )


def _result_out(o: fulfilment.RefundOutcome) -> RefundResultOut:
    return RefundResultOut(refund=_refund_out(o.refund), order_status=o.order_status, note=o.note)


@router.post("/orders/{order_no}/refunds", response_model=RefundResultOut)
def refund_order(
    order_no: str,
    body: RefundIn,
    shop: ShopDep,
    admin: AdminDep,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=128)],
) -> RefundResultOut:
    """Refund all or part of a paid order through its payment channel. Sending the same
    Idempotency-Key again returns the first refund; it never refunds twice."""
    _money_role(admin)
    outcome = fulfilment.request_refund(
        shop,
        order_no,
        amount_minor=body.amount_minor,
        reason=body.reason,
        request_key=idempotency_key,
        keys=body.keys,
        positions=body.positions,
        actor=admin.username,
    )
    return _result_out(outcome)


@router.get("/orders/{order_no}/refunds", response_model=list[RefundOut])
def order_refunds(order_no: str, shop: ShopDep, _: AdminDep) -> list[RefundOut]:
    return [_refund_out(r) for r in fulfilment.list_order_refunds(shop, order_no)]


@router.post("/refunds/{refund_no}/sync", response_model=RefundResultOut)
def sync_refund(
    refund_no: Annotated[str, PathParam(max_length=40)], shop: ShopDep, admin: AdminDep
) -> RefundResultOut:
    """Ask the channel what became of a refund that is still open."""
    _money_role(admin)
    return _result_out(fulfilment.sync_refund(shop, refund_no))


class KeysIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal["void", "restock"]
    positions: list[Annotated[int, Field(ge=1, le=10_000)]] | None = Field(
        default=None, max_length=10_000
    )


class KeysOut(BaseModel):
    order_no: str
    action: str
    keys_moved: int


@router.post("/orders/{order_no}/keys", response_model=KeysOut)
def dispose_keys(order_no: str, body: KeysIn, shop: ShopDep, admin: AdminDep) -> KeysOut:
    """After a refund: void the order's keys for good, or put them back on sale."""
    _money_role(admin)
    moved = fulfilment.dispose_keys(shop, order_no, body.action, body.positions)
    return KeysOut(order_no=order_no, action=body.action, keys_moved=len(moved))


class SettleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    succeeded: bool = Field(description="what the channel's merchant console shows")
    note: str = Field(min_length=1, max_length=500)


@router.post("/refunds/{refund_no}/settle", response_model=RefundResultOut)
def settle_refund(
    refund_no: Annotated[str, PathParam(max_length=40)],
    body: SettleIn,
    shop: ShopDep,
    admin: AdminDep,
) -> RefundResultOut:
    """Settle an open refund by hand, for a channel Kami cannot ask (易支付 V1)."""
    _money_role(admin)
    outcome = fulfilment.settle_by_hand(shop, refund_no, body.succeeded, body.note, admin.username)
    return _result_out(outcome)
