"""Refunds through the sandbox channel's books: full, partial, idempotent, the seller's choice
for the keys, an unknown outcome resolved by asking again, and concurrent requests."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from kami import fulfilment, orders, payments
from kami.kernel.errors import Conflict, InvalidInput, Unavailable
from kami.payments.models import SandboxRefund
from kami.vault.models import Key
from tests.conftest import add_keys, make_sku, place, raw_notification, sandbox_body


def paid_order(shop: fulfilment.Shop, code: str = "R-1", quantity: int = 1, keys: int = 3) -> str:
    sku = make_sku(shop, code, price=1000)
    if keys:
        add_keys(shop, sku, [f"{code}-KEY-{n}" for n in range(keys)])
    placed = place(shop, code, quantity)
    amount = placed.order.amount_minor
    with shop.db.write() as s:
        trade_no = payments.record_sandbox_trade(s, placed.order.order_no, amount, "CNY")
    body = sandbox_body(placed.order.order_no, amount, trade_no=trade_no)
    fulfilment.handle_notification(shop, raw_notification(body))
    return placed.order.order_no


def ledger(shop: fulfilment.Shop, order_no: str) -> list[tuple[str, int]]:
    with shop.db.read() as s:
        rows = s.execute(
            select(SandboxRefund.refund_no, SandboxRefund.amount_minor).where(
                SandboxRefund.order_no == order_no
            )
        ).all()
    return [(r, a) for r, a in rows]


def status(shop: fulfilment.Shop, order_no: str) -> str:
    with shop.db.read() as s:
        return orders.get_order(s, order_no).status


def key_statuses(shop: fulfilment.Shop, code_prefix: str) -> dict[str, int]:
    with shop.db.read() as s:
        rows = s.execute(select(Key.status, func.count()).group_by(Key.status)).all()
    return {st: n for st, n in rows}


def test_full_refund_round_trip_keeps_keys_sold(shop: fulfilment.Shop) -> None:
    order_no = paid_order(shop)
    assert status(shop, order_no) == "delivered"
    out = fulfilment.request_refund(
        shop, order_no, amount_minor=None, reason="buyer asked", request_key="k1"
    )
    assert out.status == "succeeded" and out.refund.amount_minor == 1000
    assert out.order_status == "refunded"
    assert ledger(shop, order_no) == [(out.refund_no, 1000)]
    # Never resold on its own: the key stays sold until the seller decides.
    assert key_statuses(shop, "R-1")["sold"] == 1
    detail = fulfilment.admin_detail(shop, order_no)
    events = [e.event for e in detail.timeline]
    assert "refund_requested" in events and "refund_succeeded" in events
    assert [r.refund_no for r in detail.refunds] == [out.refund_no]


def test_retried_request_refunds_once(shop: fulfilment.Shop) -> None:
    order_no = paid_order(shop)
    first = fulfilment.request_refund(
        shop, order_no, amount_minor=400, reason="late", request_key="same"
    )
    again = fulfilment.request_refund(
        shop, order_no, amount_minor=400, reason="late", request_key="same"
    )
    assert again.refund_no == first.refund_no and again.status == "succeeded"
    assert ledger(shop, order_no) == [(first.refund_no, 400)]
    with pytest.raises(Conflict) as exc:
        fulfilment.request_refund(
            shop, order_no, amount_minor=500, reason="late", request_key="same"
        )
    assert exc.value.slug == "idempotency-key-reused"
    assert len(ledger(shop, order_no)) == 1


def test_partial_refunds_then_the_rest(shop: fulfilment.Shop) -> None:
    order_no = paid_order(shop)
    one = fulfilment.request_refund(shop, order_no, amount_minor=300, reason="a", request_key="1")
    assert one.order_status == "partially_refunded"
    with pytest.raises(InvalidInput) as exc:
        fulfilment.request_refund(shop, order_no, amount_minor=701, reason="b", request_key="2")
    assert exc.value.slug == "refund-exceeds-payment" and "700" in exc.value.detail
    rest = fulfilment.request_refund(shop, order_no, amount_minor=None, reason="b", request_key="3")
    assert rest.refund.amount_minor == 700 and rest.order_status == "refunded"
    assert sum(a for _, a in ledger(shop, order_no)) == 1000
    with pytest.raises(Conflict) as exc2:
        fulfilment.request_refund(shop, order_no, amount_minor=None, reason="c", request_key="4")
    assert exc2.value.slug == "not-refundable"


def test_restock_puts_the_key_back_on_sale_for_another_buyer(shop: fulfilment.Shop) -> None:
    order_no = paid_order(shop, "R-2", keys=1)
    view = fulfilment.request_refund(
        shop, order_no, amount_minor=None, reason="unused", request_key="r", keys="restock"
    )
    assert view.status == "succeeded"
    assert key_statuses(shop, "R-2").get("available") == 1
    token = orders.access_token(shop.token_secret(), order_no)
    _, items = fulfilment.buyer_view(shop, order_no, token)
    assert items == []
    with pytest.raises(Conflict):
        fulfilment.reveal(shop, order_no, token, ip=None, user_agent=None)
    # The same key is sold again: the live-item unique index allows it once the first is revoked.
    placed = place(shop, "R-2", email="second@example.com")
    body = sandbox_body(placed.order.order_no, 1000)
    fulfilment.handle_notification(shop, raw_notification(body))
    assert status(shop, placed.order.order_no) == "delivered"
    token2 = orders.access_token(shop.token_secret(), placed.order.order_no)
    _, revealed = fulfilment.reveal(shop, placed.order.order_no, token2, ip=None, user_agent=None)
    assert [r.card for r in revealed] == ["R-2-KEY-0"]


def test_void_at_refund_time_and_later_choice(shop: fulfilment.Shop) -> None:
    order_no = paid_order(shop, "R-3", quantity=2, keys=2)
    fulfilment.request_refund(
        shop,
        order_no,
        amount_minor=1000,
        reason="one bad",
        request_key="v",
        keys="void",
        positions=[2],
    )
    assert status(shop, order_no) == "partially_refunded"
    token = orders.access_token(shop.token_secret(), order_no)
    _, revealed = fulfilment.reveal(shop, order_no, token, ip=None, user_agent=None)
    assert [r.position for r in revealed] == [1]  # the voided item is gone, the other stays
    assert key_statuses(shop, "R-3") == {"sold": 1, "void": 1}
    with pytest.raises(InvalidInput):
        fulfilment.dispose_keys(shop, order_no, "restock", positions=[2])  # already withdrawn
    moved = fulfilment.dispose_keys(shop, order_no, "restock", positions=[1])
    assert len(moved) == 1
    assert key_statuses(shop, "R-3") == {"available": 1, "void": 1}


def test_keys_are_withdrawn_only_after_a_refund(shop: fulfilment.Shop) -> None:
    order_no = paid_order(shop, "R-4")
    with pytest.raises(Conflict) as exc:
        fulfilment.dispose_keys(shop, order_no, "restock")
    assert exc.value.slug == "not-refunded"


def test_bad_requests_change_nothing(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "R-5")
    add_keys(shop, sku, ["R-5-KEY"])
    pending = place(shop, "R-5").order.order_no
    with pytest.raises(Conflict) as exc:
        fulfilment.request_refund(shop, pending, amount_minor=None, reason="x", request_key="z")
    assert exc.value.slug == "not-refundable" and "pending" in exc.value.detail
    order_no = paid_order(shop, "R-6", keys=1)
    for amount, reason, key, keys, where in [
        (0, "x", "z", "keep", "amount_minor"),
        (10, " ", "z", "keep", "reason"),
        (10, "x", "", "keep", "Idempotency-Key"),
        (10, "x", "z", "burn", "keys"),
    ]:
        with pytest.raises(InvalidInput) as bad:
            fulfilment.request_refund(
                shop, order_no, amount_minor=amount, reason=reason, request_key=key, keys=keys
            )
        assert bad.value.where == where
    with pytest.raises(InvalidInput) as bad:
        fulfilment.request_refund(
            shop, order_no, amount_minor=10, reason="x", request_key="p", positions=[7]
        )
    assert bad.value.where == "positions"
    assert ledger(shop, order_no) == [] and status(shop, order_no) == "delivered"


def test_unknown_outcome_is_resolved_by_asking_again(
    shop: fulfilment.Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel refunds but the answer is lost (a time-out): the refund stays requested;
    the sweep sends the same refund number again and the channel's books show one refund."""
    order_no = paid_order(shop, "R-7")
    gateway = shop.gateways.get("sandbox")
    book: Callable[[payments.RefundRequest], payments.RefundResult] = gateway._refund_book  # type: ignore[attr-defined]

    def lost_answer(request: payments.RefundRequest) -> payments.RefundResult:
        book(request)
        raise Unavailable("read timed out", where="sandbox", slug="gateway-unavailable")

    monkeypatch.setattr(gateway, "_refund_book", lost_answer)
    out = fulfilment.request_refund(shop, order_no, amount_minor=None, reason="x", request_key="t")
    assert out.status == "requested" and out.note and "asks again" in out.note
    assert status(shop, order_no) == "delivered"
    # Another request meanwhile cannot refund more: the money is committed.
    with pytest.raises(Conflict) as exc:
        fulfilment.request_refund(shop, order_no, amount_minor=None, reason="y", request_key="u")
    assert exc.value.slug == "nothing-to-refund"
    monkeypatch.setattr(gateway, "_refund_book", book)
    from datetime import timedelta

    assert fulfilment.sync_refunds_due(shop, after=timedelta(0)) == 1
    assert status(shop, order_no) == "refunded"
    assert len(ledger(shop, order_no)) == 1


def test_concurrent_requests_never_refund_more_than_paid(shop: fulfilment.Shop) -> None:
    order_no = paid_order(shop, "R-8")
    results: list[str] = []
    lock = threading.Lock()

    def ask(n: int) -> None:
        try:
            out = fulfilment.request_refund(
                shop, order_no, amount_minor=600, reason="race", request_key=f"k{n}"
            )
            with lock:
                results.append(out.status)
        except (Conflict, InvalidInput) as exc:
            with lock:
                results.append(exc.slug)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("succeeded") == 1
    assert results.count("refund-exceeds-payment") == 7
    assert [a for _, a in ledger(shop, order_no)] == [600]
    assert status(shop, order_no) == "partially_refunded"
