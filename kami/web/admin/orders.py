"""The admin JSON API for orders, notifications and jobs, behind admin bearer tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import BaseModel

from kami import fulfilment, orders, payments
from kami.kernel import outbox
from kami.kernel.errors import NotFound
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
