"""A checkout, a payment and a reveal refused for SQLite's writer run again once it is had for
them (decision 0015); what they read before they asked for it is not read again, so that the
hold of the writer is spent on writing (decision 0025)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

from kami import catalog, delivery, fulfilment, orders, vault
from kami.fulfilment import aftersales, checkout, notify, refund_settling, views
from kami.kernel import waiting
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict
from kami.kernel.writer import WriterQueue
from kami.web import running
from tests.conftest import (
    BACKEND,
    add_keys,
    make_sku,
    open_flash_sale,
    place,
    raw_notification,
    run_async,
    sandbox_body,
)

pytestmark = pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's writer")


def _counted(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[object]:
    """Each call of `module.name`, by its result."""
    calls: list[object] = []
    real = getattr(module, name)

    def counted(*args: Any) -> Any:
        result = real(*args)
        calls.append(result)
        return result

    monkeypatch.setattr(module, name, counted)
    return calls


def _held_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each call that waits in `WriterQueue.run_held`."""
    held: list[int] = []
    run_held = WriterQueue.run_held

    async def counted(self: WriterQueue, call: Any, within: float, **kw: int) -> Any:
        held.append(1)
        return await run_held(self, call, within, **kw)

    monkeypatch.setattr(WriterQueue, "run_held", counted)
    return held


def _refused_then_held(
    shop: fulfilment.Shop,
    held: list[int],
    run: Callable[[], Any],
    meanwhile: Callable[[Session], None] | None = None,
) -> Any:
    """`run()` on an event loop while another thread holds the writer, which it lets go once
    the call waits for it on the loop, after doing `meanwhile` in its transaction if given."""
    holding, go = threading.Event(), threading.Event()

    def hold() -> None:
        with shop.db.write() as s:
            holding.set()
            assert go.wait(30)
            if meanwhile is not None:
                meanwhile(s)

    holder = threading.Thread(target=hold)

    async def scene() -> Any:
        holder.start()
        try:
            assert holding.wait(5)
            task = asyncio.ensure_future(run())
            for _ in range(500):
                if held:
                    break
                await asyncio.sleep(0.01)
            assert held == [1] and not task.done()  # refused, and waiting on the loop
            go.set()
            return await task
        finally:
            go.set()
            holder.join(10)

    return run_async(scene)


@pytest.fixture
def sku(shop: fulfilment.Shop, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(running, "WRITER_WAIT", 30.0)  # however slow: waits on the loop
    made = make_sku(shop, "ONCE", price=990)
    add_keys(shop, made, ["K-ONCE-1", "K-ONCE-2"])
    return made.code


def _delivered(shop: fulfilment.Shop, sku: str, quantity: int = 1) -> fulfilment.PlacedOrder:
    placed = place(shop, sku, quantity=quantity)
    order = placed.order
    fulfilment.handle_notification(
        shop, raw_notification(sandbox_body(order.order_no, order.amount_minor))
    )
    return placed


def _revealed_after(
    shop: fulfilment.Shop,
    placed: fulfilment.PlacedOrder,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: Callable[[Session], None] | None = None,
) -> tuple[orders.OrderView, list[str]]:
    """The order and the cards a reveal shows that was read before its wait for the writer,
    while the writer's holder did `meanwhile`."""
    held = _held_runs(monkeypatch)
    no, token = placed.order.order_no, placed.access_token
    order, items = _refused_then_held(
        shop,
        held,
        lambda: running.run(fulfilment.reveal, shop, no, token, ip=None, user_agent=""),
        meanwhile,
    )
    return order, [i.card for i in items]


def _refunded(
    shop: fulfilment.Shop, order_no: str, positions: list[int] | None = None
) -> Callable[[Session], None]:
    """Refund the order (these positions of it, else all) and put its keys back on sale."""

    def refund(s: Session) -> None:
        view = orders.get_order(s, order_no)
        status = orders.OrderStatus.PARTIALLY_REFUNDED if positions else orders.OrderStatus.REFUNDED
        assert orders.move(s, view.id, status)
        refund_settling.withdraw(s, shop, view, "restock", positions, "refunded", utcnow())

    return refund


def test_a_checkout_refused_for_the_writer_reads_the_skus_terms_once(
    shop: fulfilment.Shop, sku: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _counted(monkeypatch, checkout, "_read_terms")
    held = _held_runs(monkeypatch)
    data = orders.OrderIn(sku=sku, quantity=1, email="once@example.com", gateway="sandbox")
    opened = _refused_then_held(shop, held, lambda: running.run(checkout.open_order, shop, data))
    assert opened.created and opened.order.sku == sku
    assert len(reads) == 1
    with shop.db.read() as s:
        assert orders.get_order(s, opened.order.order_no).status == orders.OrderStatus.PENDING


def test_a_payment_refused_for_the_writer_reads_its_order_once(
    shop: fulfilment.Shop, sku: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = place(shop, sku).order
    reads = _counted(monkeypatch, notify, "_read_check")
    held = _held_runs(monkeypatch)
    raw = raw_notification(sandbox_body(order.order_no, order.amount_minor))
    outcome = _refused_then_held(
        shop, held, lambda: running.run_now(fulfilment.handle_notification, shop, raw)
    )
    assert (outcome.order_no, outcome.delivered) == (order.order_no, True)
    assert len(reads) == 1
    with shop.db.read() as s:
        assert orders.get_order(s, order.order_no).status == orders.OrderStatus.DELIVERED


def test_a_reveal_refused_for_the_writer_reads_and_decrypts_once(
    shop: fulfilment.Shop, sku: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    placed = _delivered(shop, sku)
    order = placed.order
    reads = _counted(monkeypatch, views, "_read_revealed")
    revealed_order, cards = _revealed_after(shop, placed, monkeypatch)
    assert revealed_order.order_no == order.order_no
    assert cards == ["K-ONCE-1"]
    assert len(reads) == 1
    with shop.db.read() as s:
        assert len(delivery.list_reveals(s, order.id)) == 1  # recorded once


def test_what_a_call_reads_for_one_payment_is_never_used_for_another(
    shop: fulfilment.Shop, sku: str
) -> None:
    """A kept read is kept for what it was read for: one call that applies two notifications
    (as a channel's query of several orders could) reads each one's own order."""
    placed = [place(shop, sku, email=f"{n}@example.com").order for n in ("a", "b")]
    with waiting.no_waiting(reads={}):
        outcomes = [
            fulfilment.handle_notification(
                shop, raw_notification(sandbox_body(o.order_no, o.amount_minor))
            )
            for o in placed
        ]
    assert [(o.order_no, o.delivered) for o in outcomes] == [(p.order_no, True) for p in placed]
    with shop.db.read() as s:
        paid = [orders.get_order(s, p.order_no) for p in placed]
    assert all(o.status == orders.OrderStatus.DELIVERED for o in paid)
    assert len({o.trade_no for o in paid}) == 2


def test_a_reveal_that_waited_for_the_writer_shows_what_the_order_holds_then(
    shop: fulfilment.Shop, sku: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read and decrypted before its wait, a reveal whose order was refunded, and its key put
    back on sale, while it waited shows nothing, and records nothing."""
    placed = _delivered(shop, sku)
    order = placed.order
    reads = _counted(monkeypatch, views, "_read_revealed")
    with pytest.raises(Conflict, match="refunded"):
        _revealed_after(shop, placed, monkeypatch, _refunded(shop, order.order_no))
    assert len(reads) == 1  # read once before the wait; checked again under the writer
    with shop.db.read() as s:
        assert delivery.list_reveals(s, order.id) == []
        assert sum(vault.count_available(s).values()) == 2  # the key is back on sale


def test_a_flash_checkout_that_waited_for_the_writer_gets_quota_given_back_meanwhile(
    shop: fulfilment.Shop, sku: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read before its wait, the sale's quota was all taken; a cancellation gave it back while
    the checkout waited: the checkout is placed, not told "sold out" from what it read."""
    open_flash_sale(shop, sku, quota=1)
    first = place(shop, sku, email="first@example.com").order
    held = _held_runs(monkeypatch)

    def cancel_first(s: Session) -> None:
        released = orders.cancel(s, first.id)
        assert released is not None and released.flash_sale_id is not None
        vault.release_reserved(s, [released.id])
        catalog.give_back_quota(s, released.flash_sale_id, released.quantity)

    data = orders.OrderIn(sku=sku, quantity=1, email="second@example.com", gateway="sandbox")
    opened = _refused_then_held(
        shop, held, lambda: running.run(checkout.open_order, shop, data), cancel_first
    )
    assert opened.created and opened.order.email == "second@example.com"
    with shop.db.read() as s:
        assert orders.get_order(s, opened.order.order_no).status == orders.OrderStatus.PENDING


def test_what_a_call_reads_for_one_checkout_is_never_used_for_another(
    shop: fulfilment.Shop, sku: str
) -> None:
    """One call that opens two checkouts of different SKUs reads each one's own terms."""
    other = make_sku(shop, "OTHER", price=1990)
    add_keys(shop, other, ["K-OTHER-1"])
    wanted = [sku, "OTHER"]
    with waiting.no_waiting(reads={}):
        opened = [
            checkout.open_order(
                shop, orders.OrderIn(sku=code, quantity=1, email="x@example.com", gateway="sandbox")
            )
            for code in wanted
        ]
    assert [o.order.sku for o in opened] == wanted
    assert [o.order.amount_minor for o in opened] == [990, 1990]


def test_a_reveal_that_waited_while_one_of_its_keys_was_refunded_shows_the_other(
    shop: fulfilment.Shop, sku: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    placed = _delivered(shop, sku, 2)
    refund_the_first = _refunded(shop, placed.order.order_no, [1])
    assert _revealed_after(shop, placed, monkeypatch, refund_the_first)[1] == ["K-ONCE-2"]


def test_a_reveal_that_waited_while_its_key_was_replaced_shows_the_new_one(
    shop: fulfilment.Shop, sku: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    placed = _delivered(shop, sku)

    def replace(s: Session) -> None:
        order = orders.get_order(s, placed.order.order_no)
        item = delivery.get_item(s, order.id, 1)
        assert item is not None
        report = delivery.create_report(
            s,
            order_id=order.id,
            item=item,
            origin=delivery.origin_position(s, order.id, 1),
            problem="key_invalid",
            note=None,
            review_reason=None,
            now=utcnow(),
        )
        assert aftersales._replace(s, shop, order, item, report, "test", utcnow()) is not None

    assert _revealed_after(shop, placed, monkeypatch, replace)[1] == ["K-ONCE-2"]


def test_a_reveal_that_waited_while_its_order_was_refunded_keeping_the_keys_is_refused(
    shop: fulfilment.Shop, sku: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    placed = _delivered(shop, sku)

    def refund(s: Session) -> None:
        assert orders.move(s, placed.order.id, orders.OrderStatus.REFUNDED)

    with pytest.raises(Conflict, match="refunded"):
        _revealed_after(shop, placed, monkeypatch, refund)


def test_a_reveal_off_the_loop_that_waited_for_the_writer_shows_what_the_order_holds_then(
    shop: fulfilment.Shop, sku: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The way a reveal goes when its wait on the loop ran out, or from a thread: it reads,
    then waits for the writer where it is. The order refunded meanwhile shows nothing."""
    placed = _delivered(shop, sku)
    order = placed.order
    read = threading.Event()
    real = views._read_revealed

    def read_and_tell(*args: Any) -> Any:
        found = real(*args)
        read.set()
        return found

    monkeypatch.setattr(views, "_read_revealed", read_and_tell)
    outcome: list[object] = []

    def reveal() -> None:
        try:
            outcome.append(
                fulfilment.reveal(shop, order.order_no, placed.access_token, ip=None, user_agent="")
            )
        except Conflict as refused:
            outcome.append(refused)

    holding, go = threading.Event(), threading.Event()

    def refund_and_restock() -> None:  # holding the writer from before the reveal's read
        with shop.db.write() as s:
            holding.set()
            assert go.wait(30)
            _refunded(shop, order.order_no)(s)

    holder = threading.Thread(target=refund_and_restock)
    holder.start()
    assert holding.wait(5)
    revealer = threading.Thread(target=reveal)
    revealer.start()
    assert read.wait(5)  # read; its write can only begin once the refund has committed
    go.set()
    holder.join(10)
    revealer.join(10)
    assert isinstance(outcome[0], Conflict), outcome
    with shop.db.read() as s:
        assert delivery.list_reveals(s, order.id) == []
