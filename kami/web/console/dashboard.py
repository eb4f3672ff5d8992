"""The dashboard: today's sales, orders by status, paid-but-undelivered, stock alerts, 30 days
of sales as plain HTML bars, top SKUs."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from kami import catalog, orders, vault
from kami.kernel.clock import utcnow
from kami.web.console.frame import PREFIX, ConsoleRoute, render, signed_in
from kami.web.deps import shop

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

DAYS = 30


def bars(days: list[orders.DaySales]) -> list[dict[str, object]]:
    """Each day's bar height in percent of the busiest day, by the first currency seen."""
    currency = next((c for d in days for c in d.amounts), "CNY")
    peak = max((d.amounts.get(currency, 0) for d in days), default=0) or 1
    return [
        {
            "day": d.day,
            "orders": d.orders,
            "amount": d.amounts.get(currency, 0),
            "currency": currency,
            "height": round(100 * d.amounts.get(currency, 0) / peak),
        }
        for d in days
    ]


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request) -> Response:
    admin = signed_in(request)
    s = shop(request)
    now = utcnow()
    # The shop's calendar day: its time zone's (KAMI_TIMEZONE), at its offset today.
    shop_day = now.astimezone(s.timezone).utcoffset() or timedelta(0)
    with s.db.read() as session:
        days = orders.sales_by_day(session, now, DAYS, shop_day)
        by_status = orders.count_by_status(session)
        undelivered = orders.count_undelivered(session)
        top = orders.top_skus(session, now - timedelta(days=DAYS))
        skus = catalog.list_skus(session)
        available = vault.count_available(session)
    alerts = [
        {"sku": v, "available": available.get(v.id, 0)}
        for v in skus
        if v.active
        and v.delivery_kind == catalog.DeliveryKind.CARD_KEY
        and available.get(v.id, 0) <= v.low_stock_threshold
    ]
    return render(
        request,
        "dashboard.html",
        admin=admin,
        today=days[-1],
        by_status=sorted(by_status.items()),
        undelivered=undelivered,
        alerts=alerts,
        bars=bars(days),
        top=top,
    )
