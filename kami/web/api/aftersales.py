"""The buyer's after-sales API: report a delivered item that does not work, follow the report.

Authorised like the reveal: the order's access token as a bearer token, checked before the
database is touched, so a wrong token learns nothing, not even whether the order exists.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from kami import fulfilment
from kami.web.deps import ShopDep, bearer, container, rate_limit
from kami.web.inputs import CheckedRoute

router = APIRouter(prefix="/api/v1", tags=["shop"], route_class=CheckedRoute)

MAX_POSITION = 2**31 - 1


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    position: int = Field(ge=1, le=MAX_POSITION, description="the item's number in the order")
    problem: Literal["key_invalid", "redemption_failed"]
    note: str | None = Field(default=None, max_length=1000, description="what went wrong")


class ReportOut(BaseModel):
    report_no: str
    position: int
    problem: str
    note: str | None
    status: str = Field(description="open (with the seller), replaced, refunded or rejected")
    review_reason: str | None = Field(description="why the report waits for the seller")
    replacement_position: int | None = Field(description="the new item, when replaced")
    refund_minor: int | None
    seller_reason: str | None = Field(description="the seller's reason, when rejected")
    created_at: datetime
    resolved_at: datetime | None


def report_out(r: fulfilment.ReportView) -> ReportOut:
    rejected = r.status is fulfilment.ReportStatus.REJECTED
    return ReportOut(
        report_no=r.report_no,
        position=r.position,
        problem=r.problem,
        note=r.note,
        status=r.status.value,
        review_reason=r.review_reason if r.status is fulfilment.ReportStatus.OPEN else None,
        replacement_position=r.replacement_position,
        refund_minor=r.refund_minor,
        seller_reason=r.resolution_note if rejected else None,
        created_at=r.created_at,
        resolved_at=r.resolved_at,
    )


def policy(request: Request) -> fulfilment.AftersalesPolicy:
    s = container(request).settings
    return fulfilment.AftersalesPolicy(s.aftersales_policy, dict(s.aftersales_policy_by_sku))


@router.post("/orders/{order_no}/reports", status_code=201, response_model=ReportOut)
def report_item(order_no: str, body: ReportIn, request: Request, shop: ShopDep) -> ReportOut:
    """Report "key invalid / redemption failed" for one item: it is replaced at once when the
    shop's policy allows it and stock is there (status `replaced`), otherwise the seller
    reviews it (status `open`). Either way the buyer gets an e-mail."""
    rate_limit(request, "reveals")
    report = fulfilment.report_item(
        shop,
        order_no,
        bearer(request),
        position=body.position,
        problem=body.problem,
        note=body.note,
        policy=policy(request),
    )
    return report_out(report)


@router.get("/orders/{order_no}/reports", response_model=list[ReportOut])
def order_reports(order_no: str, request: Request, shop: ShopDep) -> list[ReportOut]:
    return [report_out(r) for r in fulfilment.buyer_reports(shop, order_no, bearer(request))]
