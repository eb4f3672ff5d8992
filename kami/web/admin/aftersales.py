"""The admin's after-sales API: the review queue, its resolutions, and defective keys per
import batch. Owners and operators review, replace and reject; only the owner and finance
refund (money moves)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from kami import accounts, catalog, fulfilment, orders, vault
from kami.kernel.errors import Forbidden, NotFound
from kami.web.api.aftersales import ReportOut, report_out
from kami.web.deps import AdminDep, ShopDep
from kami.web.inputs import CheckedRoute

router = APIRouter(prefix="/api/admin", tags=["admin"], route_class=CheckedRoute)

REVIEW_ROLES = frozenset({accounts.Role.OWNER, accounts.Role.OPERATOR})
MONEY_ROLES = frozenset({accounts.Role.OWNER, accounts.Role.FINANCE})


def _role(admin: accounts.AdminView, allowed: frozenset[accounts.Role], what: str) -> None:
    if admin.role not in allowed:
        names = " and ".join(sorted(r.value for r in allowed))
        raise Forbidden(
            f"a {admin.role} may not {what}; that is for the {names}",
            where="role",
            slug="role-forbidden",
        )


class AdminReportOut(ReportOut):
    order_no: str
    masked: str | None = Field(description="the reported key, masked")
    batch: str | None = Field(description="the import batch the key came from")
    supplier: str | None
    origin_position: int
    resolution: str | None
    resolved_by: str | None
    resolution_note: str | None


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(default=None, max_length=500)


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500, description="told to the buyer")


class BatchDefectsOut(BaseModel):
    batch: str
    sku_id: int
    supplier: str
    unit_cost_minor: int | None
    cost_currency: str | None
    created_at: datetime
    imported: int
    sold: int
    defective: int
    replaced: int
    refunded: int
    refunded_minor: int
    rate: float = Field(description="defective keys per key sold")


def _describe(s: Session, reports: list[fulfilment.ReportView]) -> list[AdminReportOut]:
    key_ids = [r.key_id for r in reports if r.key_id is not None]
    origins = vault.key_origins(s, key_ids)
    masked = {m.key_id: m.masked for m in vault.masked_keys(s, key_ids)}
    out = []
    for r in reports:
        order = orders.find_order_by_id(s, r.order_id)
        assert order is not None
        origin = origins.get(r.key_id) if r.key_id is not None else None
        out.append(
            AdminReportOut(
                **report_out(r).model_dump(),
                order_no=order.order_no,
                masked=masked.get(r.key_id) if r.key_id is not None else None,
                batch=origin.batch if origin else None,
                supplier=origin.supplier if origin else None,
                origin_position=r.origin_position,
                resolution=r.resolution,
                resolved_by=r.resolved_by,
                resolution_note=r.resolution_note,
            )
        )
    return out


def _one(shop: fulfilment.Shop, report_no: str) -> AdminReportOut:
    with shop.db.read() as s:
        report = fulfilment.find_report(s, report_no)
        if report is None:
            raise NotFound(f"no report {report_no}", where="report_no", slug="unknown-report")
        return _describe(s, [report])[0]


@router.get("/aftersales", response_model=list[AdminReportOut])
def review_queue(
    shop: ShopDep,
    _: AdminDep,
    status: fulfilment.ReportStatus | None = fulfilment.ReportStatus.OPEN,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[AdminReportOut]:
    """Reports oldest first; by default the open ones, waiting for review."""
    with shop.db.read() as s:
        return _describe(s, fulfilment.list_reports(s, status=status, limit=limit, offset=offset))


@router.get("/aftersales/{report_no}", response_model=AdminReportOut)
def report_detail(report_no: str, shop: ShopDep, _: AdminDep) -> AdminReportOut:
    return _one(shop, report_no)


@router.post("/aftersales/{report_no}/replace", response_model=AdminReportOut)
def replace(report_no: str, body: ResolveIn, shop: ShopDep, admin: AdminDep) -> AdminReportOut:
    """Replace the item with a fresh key of its SKU from stock (card keys only)."""
    _role(admin, REVIEW_ROLES, "resolve after-sales reports")
    fulfilment.replace_reported(shop, report_no, admin.username, body.note)
    return _one(shop, report_no)


@router.post("/aftersales/{report_no}/refund", response_model=AdminReportOut)
def refund(report_no: str, body: ResolveIn, shop: ShopDep, admin: AdminDep) -> AdminReportOut:
    """Refund the item's share (its unit price); the item is withdrawn and its key voided."""
    _role(admin, MONEY_ROLES, "move money")
    fulfilment.refund_reported(shop, report_no, admin.username, body.note)
    return _one(shop, report_no)


@router.post("/aftersales/{report_no}/reject", response_model=AdminReportOut)
def reject(report_no: str, body: RejectIn, shop: ShopDep, admin: AdminDep) -> AdminReportOut:
    _role(admin, REVIEW_ROLES, "resolve after-sales reports")
    fulfilment.reject_report(shop, report_no, admin.username, body.reason)
    return _one(shop, report_no)


@router.get("/batches/defects", response_model=list[BatchDefectsOut])
def batch_defects(
    shop: ShopDep,
    _: AdminDep,
    sku: Annotated[str | None, Query(max_length=64, description="SKU code")] = None,
) -> list[BatchDefectsOut]:
    """Each import batch's defective rate: keys found defective per key sold."""
    with shop.db.read() as s:
        sku_id = catalog.get_sku(s, sku).id if sku is not None else None
        rates = vault.defect_rates(s, sku_id)
    return [
        BatchDefectsOut(
            batch=b.batch,
            sku_id=b.sku_id,
            supplier=b.supplier,
            unit_cost_minor=b.unit_cost_minor,
            cost_currency=b.cost_currency,
            created_at=b.created_at,
            imported=b.imported,
            sold=b.sold,
            defective=b.defective,
            replaced=b.replaced,
            refunded=b.refunded,
            refunded_minor=b.refunded_minor,
            rate=b.rate,
        )
        for b in rates
    ]
