"""Orders: filters and search, an order's page with its timeline, and its actions (ask the
channel, redeliver, refund for the owner and finance, deliver a manual line by hand)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from kami import delivery, fulfilment, orders, vault
from kami.kernel.errors import InvalidInput
from kami.kernel.ids import new_token
from kami.kernel.money import parse_major
from kami.web.console.frame import (
    MONEY,
    PREFIX,
    Admin,
    ConsoleRoute,
    Form,
    as_int,
    redirect,
    render,
    require,
    signed_in,
)
from kami.web.deps import shop

router = APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False)

PAGE = 50
MAX_ID = 2**31 - 1


@router.get("/orders", response_class=HTMLResponse)
def orders_page(request: Request) -> Response:
    admin = signed_in(request)
    q = request.query_params
    status = q.get("status", "")
    if status and status != "undelivered" and status not in set(orders.OrderStatus):
        raise InvalidInput(f"unknown status {status[:40]!r}", where="status")
    search = q.get("q", "").strip()[:254]
    sku = q.get("sku", "").strip()[:64]
    page = max(0, min(as_int(q.get("page"), "page") or 0, 100_000))
    with shop(request).db.read() as s:
        if status == "undelivered":
            found = orders.list_undelivered(s)
        else:
            found = orders.list_orders(
                s,
                status=status or None,
                email=search if "@" in search else None,
                order_no=search if search and "@" not in search else None,
                sku=sku or None,
                limit=PAGE,
                offset=page * PAGE,
            )
    return render(
        request,
        "orders.html",
        admin=admin,
        orders=found,
        status=status,
        q=search,
        sku=sku,
        page=page,
        statuses=[st.value for st in orders.OrderStatus],
        more=len(found) == PAGE and status != "undelivered",
    )


@router.get("/orders/{order_no}", response_class=HTMLResponse)
def order_page(order_no: str, request: Request) -> Response:
    admin = signed_in(request)
    detail = fulfilment.admin_detail(shop(request), order_no)
    manual = [
        line
        for line in detail.lines
        if line.kind == "manual" and line.status == delivery.LineStatus.PENDING
    ]
    return render(
        request,
        "order.html",
        admin=admin,
        d=detail,
        o=detail.order,
        manual=manual,
        refund_key=new_token(16),  # one refund per page view, however often it is submitted
        done=request.query_params.get("done", ""),
    )


@router.post("/orders/{order_no}/sync")
def sync_order(order_no: str, request: Request, _admin: Admin, _form: Form) -> Response:
    fulfilment.sync_order(shop(request), order_no)
    return redirect(f"{PREFIX}/orders/{order_no}?done=sync")


@router.post("/orders/{order_no}/redeliver")
def redeliver(order_no: str, request: Request, _admin: Admin, _form: Form) -> Response:
    fulfilment.redeliver(shop(request), order_no)
    return redirect(f"{PREFIX}/orders/{order_no}?done=redeliver")


@router.post("/orders/{order_no}/refund")
def refund(order_no: str, request: Request, admin: Admin, form: Form) -> Response:
    require(admin, MONEY, "move money")  # enforced here whatever the page showed
    amount_text = form.get("amount", "").strip()
    amount = None
    if amount_text:
        with shop(request).db.read() as s:
            currency = orders.get_order(s, order_no).currency
        amount = parse_major(amount_text, currency, where="amount")
    keys = form.get("keys", "keep")
    if keys not in fulfilment.KEY_ACTIONS:
        raise InvalidInput(f"keys must be one of {sorted(fulfilment.KEY_ACTIONS)}", where="keys")
    fulfilment.request_refund(
        shop(request),
        order_no,
        amount_minor=amount,
        reason=form.get("reason", "").strip()[:500],
        request_key="console-" + form.get("refund_key", "")[:64],
        keys=keys,
        actor=admin.username,
    )
    return redirect(f"{PREFIX}/orders/{order_no}?done=refund")


@router.post("/orders/{order_no}/lines/{line_id}/deliver")
def deliver_by_hand(
    order_no: str, line_id: int, request: Request, admin: Admin, form: Form
) -> Response:
    if not 1 <= line_id <= MAX_ID:
        raise InvalidInput("no such line", where="line_id")
    goods = [vault.Secret(x.strip()) for x in form.get("goods", "").splitlines() if x.strip()]
    fulfilment.fulfil_by_hand(shop(request), line_id, goods, admin.username)
    return redirect(f"{PREFIX}/orders/{order_no}?done=deliver")
