"""The sandbox channel's books: trades it took, so a query can find a payment whose
notification was lost, as a real channel's query would."""

from __future__ import annotations

import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kami.kernel.clock import utcnow
from kami.kernel.ids import new_token
from kami.payments.gateways.base import (
    PaymentNotice,
    RefundRequest,
    RefundResult,
    RefundStatus,
    TradeStatus,
)
from kami.payments.models import SandboxRefund, SandboxTrade


def record_sandbox_trade(session: Session, order_no: str, amount_minor: int, currency: str) -> str:
    """The buyer paid in the sandbox: book it once; returns the trade number."""
    existing = session.execute(
        select(SandboxTrade.trade_no).where(SandboxTrade.order_no == order_no)
    ).scalar_one_or_none()
    if existing:
        return existing
    trade_no = "SBX" + new_token(12)
    session.add(
        SandboxTrade(
            order_no=order_no,
            trade_no=trade_no,
            amount_minor=amount_minor,
            currency=currency,
            paid_at=utcnow(),
        )
    )
    session.flush()
    return trade_no


def find_sandbox_trade(session: Session, order_no: str) -> PaymentNotice | None:
    trade = session.execute(
        select(SandboxTrade).where(SandboxTrade.order_no == order_no)
    ).scalar_one_or_none()
    if trade is None:
        return None
    return PaymentNotice(
        gateway="sandbox",
        order_no=trade.order_no,
        trade_no=trade.trade_no,
        amount_minor=trade.amount_minor,
        currency=trade.currency,
        status=TradeStatus.PAID,
    )


def _refund_result(refund: SandboxRefund) -> RefundResult:
    raw: dict[str, object] = {"refund_no": refund.refund_no, "order_no": refund.order_no}
    raw |= {"amount_minor": refund.amount_minor, "status": "succeeded"}
    return RefundResult(
        refund.refund_no,
        RefundStatus.SUCCEEDED,
        refund.amount_minor,
        f"SBR{refund.id}",
        json.dumps(raw),
    )


def _failed(request: RefundRequest, detail: str) -> RefundResult:
    raw = json.dumps({"refund_no": request.refund_no, "status": "failed", "message": detail})
    return RefundResult(
        request.refund_no, RefundStatus.FAILED, request.amount_minor, None, raw, detail
    )


def book_sandbox_refund(session: Session, request: RefundRequest) -> RefundResult:
    """The sandbox's side of a refund: idempotent on the refund number, and never more back
    than the trade took, as a real channel behaves."""
    existing = session.execute(
        select(SandboxRefund).where(SandboxRefund.refund_no == request.refund_no)
    ).scalar_one_or_none()
    if existing is not None:
        return _refund_result(existing)
    trade = session.execute(
        select(SandboxTrade).where(SandboxTrade.order_no == request.order_no)
    ).scalar_one_or_none()
    if trade is None:
        return _failed(request, f"the sandbox took no payment for {request.order_no}")
    refunded = session.execute(
        select(func.coalesce(func.sum(SandboxRefund.amount_minor), 0)).where(
            SandboxRefund.order_no == request.order_no
        )
    ).scalar_one()
    if int(refunded) + request.amount_minor > trade.amount_minor:
        return _failed(
            request,
            f"refunds would total {int(refunded) + request.amount_minor}, more than the "
            f"{trade.amount_minor} paid",
        )
    refund = SandboxRefund(
        refund_no=request.refund_no,
        order_no=request.order_no,
        amount_minor=request.amount_minor,
        refunded_at=utcnow(),
    )
    session.add(refund)
    session.flush()
    return _refund_result(refund)


def find_sandbox_refund(session: Session, request: RefundRequest) -> RefundResult:
    refund = session.execute(
        select(SandboxRefund).where(SandboxRefund.refund_no == request.refund_no)
    ).scalar_one_or_none()
    if refund is None:
        return _failed(request, f"the sandbox has no refund {request.refund_no}")
    return _refund_result(refund)
