"""The sandbox channel's books: trades it took, so a query can find a payment whose
notification was lost, as a real channel's query would."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from kami.kernel.clock import utcnow
from kami.kernel.ids import new_token
from kami.payments.gateways.base import PaymentNotice, TradeStatus
from kami.payments.models import SandboxTrade


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
