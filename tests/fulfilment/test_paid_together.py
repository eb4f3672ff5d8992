"""Payment notifications applied together (decision 0022), on both databases: each paid order
ends exactly as it would have alone, anything but the plain case is left to be applied alone,
and a group that meets a surprise half-way writes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from kami import fulfilment, orders, payments
from kami.kernel.clock import utcnow
from kami.kernel.db import UtcDateTime
from kami.kernel.errors import NotFound
from kami.web import running
from tests.conftest import (
    BACKEND,
    add_keys,
    make_sku,
    open_flash_sale,
    place,
    raw_notification,
    sandbox_body,
    sign,
    writer_held_by_a_thread,
)
from tests.fulfilment.test_goods import goods_sku


def _raw(order: orders.OrderView, **changes: Any) -> payments.RawNotification:
    body = sandbox_body(
        order.order_no,
        changes.pop("amount", order.amount_minor),
        trade_no=changes.pop("trade_no", None),
    )
    return raw_notification(body, changes.pop("signature", None))


def _state(shop: fulfilment.Shop) -> dict[str, object]:
    """What a notification can change, as counts."""
    with shop.db.read() as s:

        def count(sql: str) -> dict[str, int]:
            return {str(k): int(n) for k, n in s.execute(text(sql)).tuples()}

        return {
            "orders": count("SELECT status, count(*) FROM orders_order GROUP BY status"),
            "keys": count("SELECT status, count(*) FROM vault_key GROUP BY status"),
            "inbox": count("SELECT 'rows', count(*) FROM payments_inbox"),
            "notifications": count(
                "SELECT verdict, count(*) FROM payments_notification GROUP BY verdict"
            ),
            "items": count("SELECT 'rows', count(*) FROM delivery_item"),
            "jobs": count("SELECT kind, count(*) FROM kernel_outbox GROUP BY kind"),
        }


def _delivered(shop: fulfilment.Shop, order: orders.OrderView) -> dict[str, object]:
    """One paid order as the notify transaction leaves it, with what differs by nature (its
    number, ids, times) put as whether it is the order's own."""
    no = order.order_no
    with shop.db.read() as s:
        o = orders.get_order(s, no)
        keys = s.execute(
            text(
                "SELECT k.status, i.order_id = k.order_id, i.position FROM vault_key k "
                "LEFT JOIN delivery_item i ON i.key_id = k.id WHERE k.order_id = :o ORDER BY k.id"
            ),
            {"o": order.id},
        ).all()
        inbox = s.execute(
            text("SELECT order_id, amount_minor, currency FROM payments_inbox WHERE trade_no = :t"),
            {"t": o.trade_no},
        ).one()
        notification = s.execute(
            text(
                "SELECT verdict, reason, detail, trade_no FROM payments_notification "
                "WHERE order_no = :n"
            ),
            {"n": no},
        ).one()
        job = s.execute(
            text("SELECT kind, payload FROM kernel_outbox WHERE ref = :n"), {"n": no}
        ).one()
    return {
        "status": o.status,
        "trade": o.trade_no == f"T{no}",
        "paid and delivered at once": o.paid_at is not None and o.delivered_at == o.paid_at,
        # Each key sold and itemised, the items numbered in key order.
        "keys": [(status, bool(itemised), position) for status, itemised, position in keys],
        "inbox": (inbox[0] == order.id, inbox[1] == order.amount_minor, inbox[2]),
        "notification": (*notification[:3], notification[3] == f"T{no}"),
        "job": (job[0], str(job[1]).replace(no, "NO")),
    }


def _reserved(shop: fulfilment.Shop, order: orders.OrderView) -> list[int]:
    with shop.db.read() as s:
        rows = s.execute(
            text("SELECT id FROM vault_key WHERE order_id = :o ORDER BY id"), {"o": order.id}
        )
        return [k for (k,) in rows]


def test_each_order_paid_together_ends_as_it_would_have_alone(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, price=990)
    add_keys(shop, sku, [f"K-{n}" for n in range(14)])
    group = [place(shop, sku.code, email=f"b{n}@example.com").order for n in range(3)]
    group.append(place(shop, sku.code, 3, email="three@example.com").order)
    single = place(shop, sku.code, email="single@example.com").order
    three = place(shop, sku.code, 3, email="alone@example.com").order
    reserved = {o.id: _reserved(shop, o) for o in group}

    outcomes = fulfilment.handle_notifications_together(shop, [_raw(o) for o in group])
    alone = [fulfilment.handle_notification(shop, _raw(o)) for o in (single, three)]

    gateway = shop.gateways.get("sandbox")
    assert [o.order_no if o else None for o in outcomes] == [o.order_no for o in group]
    for outcome in [*outcomes, *alone]:
        assert outcome is not None
        assert (outcome.verdict, outcome.reason, outcome.delivered) == ("accepted", None, True)
        assert outcome.ack == gateway.acknowledge(None)
    # Every row of each order is the one alone writes, and the keys it was sold are the ones
    # it had reserved.
    as_alone = {1: _delivered(shop, single), 3: _delivered(shop, three)}
    assert as_alone[3]["keys"] == [("sold", True, 1), ("sold", True, 2), ("sold", True, 3)]
    for o in group:
        assert _delivered(shop, o) == as_alone[o.quantity]
        assert _reserved(shop, o) == reserved[o.id]
    state = _state(shop)
    assert state["orders"] == {"delivered": 6}
    assert state["keys"] == {"sold": 10, "available": 4}
    # A duplicate of one of them, later and alone, is acknowledged and changes nothing.
    again = fulfilment.handle_notification(shop, _raw(group[0]))
    assert again.verdict == "duplicate"
    after = _state(shop)
    assert after["notifications"] == {"accepted": 6, "duplicate": 1}
    assert {**after, "notifications": None} == {**state, "notifications": None}


def test_an_orders_items_are_numbered_in_key_order_as_alone(shop: fulfilment.Shop) -> None:
    """Checkouts given up put their keys back on sale, after which PostgreSQL keeps the rows
    out of key order, and an UPDATE … RETURNING answers in the order it finds them."""
    sku = make_sku(shop, price=990)
    add_keys(shop, sku, [f"K-{n}" for n in range(12)])
    for quantity in (3, 1, 2):
        given_up = place(shop, sku.code, quantity, email=f"c{quantity}@example.com")
        fulfilment.cancel_order(shop, given_up.order.order_no, given_up.access_token)
    place(shop, sku.code, 3, email="x@example.com")
    other = place(shop, sku.code, 1, email="o@example.com").order
    three = place(shop, sku.code, 3, email="v@example.com").order
    assert all(fulfilment.handle_notifications_together(shop, [_raw(three), _raw(other)]))
    with shop.db.read() as s:
        items = s.execute(
            text("SELECT key_id FROM delivery_item WHERE order_id = :o ORDER BY position"),
            {"o": three.id},
        ).scalars()
        assert list(items) == sorted(_reserved(shop, three))


def test_only_the_plain_case_is_applied_together(shop: fulfilment.Shop) -> None:
    """A payment that would be rejected, or needs more than the plain path, is left to be
    applied alone (None), and nothing is written for it here: alone records it, with its
    reason."""
    sku = make_sku(shop, price=990)
    add_keys(shop, sku, [f"K-{n}" for n in range(10)])
    text_sku = goods_sku(shop, "GUIDE", "text", config={"max_sales": 5, "per_buyer_limit": 5})
    add_keys(shop, text_sku, ["https://example.com/guide.pdf"])
    good = [place(shop, sku.code, email=f"g{n}@example.com").order for n in range(2)]
    mismatch, forged, twice, lapsed = (
        place(shop, sku.code, email=f"{n}@example.com").order
        for n in ("mismatch", "forged", "twice", "lapsed")
    )
    guide = place(shop, text_sku.code, email="guide@example.com").order
    with shop.db.write() as s:
        assert orders.move(s, lapsed.id, orders.OrderStatus.EXPIRED)
    forged_body = sandbox_body(forged.order_no, 990)
    unknown_gateway = payments.RawNotification(
        gateway="nowhere", method="POST", headers={}, query={}, body=b"{}", remote_addr=None
    )
    raws = [
        _raw(good[0]),
        _raw(mismatch, amount=1),
        raw_notification(forged_body, sign(forged_body, "some-other-secret-123456")),
        _raw(twice),
        _raw(twice, trade_no="T-second"),  # the same order again: alone, after the group
        _raw(good[0], trade_no="T-again"),
        _raw(lapsed),  # paid after its reservation lapsed
        _raw(guide),  # not card keys
        raw_notification(sandbox_body("K000000NOSUCHORDER", 990)),
        raw_notification(sandbox_body(good[1].order_no, 990, status="pending")),
        unknown_gateway,
        _raw(good[1]),
    ]
    outcomes = fulfilment.handle_notifications_together(shop, raws)
    assert [o is not None for o in outcomes] == [
        True,
        False,
        False,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    state = _state(shop)
    assert state["orders"] == {"delivered": 3, "pending": 3, "expired": 1}
    assert state["notifications"] == {"accepted": 3}
    assert state["inbox"] == {"rows": 3}
    # Alone, each of the others gets the answer it always had.
    assert fulfilment.handle_notification(shop, raws[1]).reason == "amount-mismatch"
    assert fulfilment.handle_notification(shop, raws[2]).reason == "bad-signature"
    assert fulfilment.handle_notification(shop, raws[4]).reason == "duplicate-payment"
    lapsed_paid = fulfilment.handle_notification(shop, raws[6])
    assert (lapsed_paid.verdict, lapsed_paid.delivered) == ("accepted", True)
    assert fulfilment.handle_notification(shop, raws[7]).delivered
    with pytest.raises(NotFound):
        fulfilment.handle_notification(shop, unknown_gateway)


def _surprise(
    shop: fulfilment.Shop,
    case: str,
    victim: orders.OrderView,
    other: orders.OrderView,
    monkeypatch: pytest.MonkeyPatch,
) -> list[payments.RawNotification]:
    if case == "trade applied to another order before":
        fulfilment.handle_notification(shop, _raw(other, trade_no="T-shared"))
        return [_raw(victim, trade_no="T-shared")]
    if case == "reservation lapsed":
        with shop.db.write() as s:
            s.execute(
                text("UPDATE vault_key SET expires_at = '2000-01-01' WHERE order_id = :o"),
                {"o": victim.id},
            )
        return [_raw(victim), _raw(other)]
    assert case == "paid meanwhile by another trade"
    with shop.db.write() as s:
        assert orders.move(s, victim.id, orders.OrderStatus.PAID, trade_no="T-other")
    real = orders.find_orders

    def stale(s: Any, order_nos: list[str]) -> list[orders.OrderView | None]:
        # As read a moment before the other trade paid it.
        return [
            o.model_copy(update={"status": orders.OrderStatus.PENDING}) if o else o
            for o in real(s, order_nos)
        ]

    monkeypatch.setattr(orders, "find_orders", stale)
    return [_raw(victim), _raw(other)]


@pytest.mark.parametrize(
    "case",
    [
        "trade applied to another order before",
        "reservation lapsed",
        "paid meanwhile by another trade",
    ],
)
def test_a_group_that_meets_a_surprise_writes_nothing(
    shop: fulfilment.Shop, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sku = make_sku(shop, price=990)
    add_keys(shop, sku, [f"K-{n}" for n in range(10)])
    victim, other, third = (
        place(shop, sku.code, email=f"{n}@example.com").order for n in ("v", "o", "t")
    )
    raws = _surprise(shop, case, victim, other, monkeypatch)
    raws.append(_raw(third))
    before = _state(shop)
    outcomes = fulfilment.handle_notifications_together(shop, raws)
    assert outcomes == [None] * len(raws)
    assert _state(shop) == before


def test_fewer_than_two_to_apply_together_are_left_alone(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, price=990)
    add_keys(shop, sku, ["K-1", "K-2"])
    a, b = (place(shop, sku.code, email=f"{n}@example.com").order for n in ("a", "b"))
    before = _state(shop)
    forged = _raw(b, signature=sign(sandbox_body(b.order_no, 990), "some-other-secret-123456"))
    outcomes = fulfilment.handle_notifications_together(shop, [_raw(a), forged])
    assert outcomes == [None, None]  # one verified payment: nothing gained by a group
    assert fulfilment.handle_notifications_together(shop, []) == []
    assert _state(shop) == before


def _post_at_once(
    base: str, loop: asyncio.AbstractEventLoop, raws: list[payments.RawNotification]
) -> list[bytes]:
    """POST each notification on a connection of its own, the connections opened first and the
    requests then sent while the server's `loop` is held still, so that it reads them all in
    the same pass once let go (a client thread of this process, sending them as fast as it
    could, lost the race now and then); the answers' status lines."""
    host, port = base.removeprefix("http://").split(":")
    conns = [socket.create_connection((host, int(port))) for _ in raws]
    time.sleep(0.2)  # accepted, and read from, by the server
    still, go = threading.Event(), threading.Event()

    def hold() -> None:
        still.set()
        go.wait(10)

    try:
        loop.call_soon_threadsafe(hold)
        assert still.wait(10)
        try:
            for conn, raw in zip(conns, raws, strict=True):
                head = (
                    f"POST /api/v1/payments/sandbox/notify HTTP/1.1\r\nHost: {host}\r\n"
                    f"X-Sandbox-Signature: {raw.headers['x-sandbox-signature']}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(raw.body)}\r\n"
                    "Connection: close\r\n\r\n"
                )
                conn.sendall(head.encode() + raw.body)
        finally:
            go.set()
        answers = []
        for conn in conns:
            conn.settimeout(30)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            answers.append(data.split(b"\r\n", 1)[0])
        return answers
    finally:
        for conn in conns:
            conn.close()


def test_the_server_applies_a_flash_sales_payments_read_at_once_as_one_group(
    served: str,
    served_loop: asyncio.AbstractEventLoop,
    shop: fulfilment.Shop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[int] = []
    kinds: list[type] = []
    real = fulfilment.handle_notifications_together

    def counted(
        shop: fulfilment.Shop, notes: list[fulfilment.Checked]
    ) -> list[fulfilment.Outcome | None]:
        kinds.extend(type(n) for n in notes)
        outcomes = real(shop, notes)
        sizes.append(sum(o is not None for o in outcomes))
        return outcomes

    monkeypatch.setattr(fulfilment, "handle_notifications_together", counted)
    monkeypatch.setattr(running, "STORM", 60.0)  # however slow the machine, still selling
    sku = make_sku(shop, "FLASH", price=990)
    add_keys(shop, sku, [f"K-{n}" for n in range(40)])
    open_flash_sale(shop, "FLASH", quota=40)
    paid: list[orders.OrderView] = []
    # Whether the server reads them in one pass is up to the machine: a few rounds at most.
    for round_no in range(5):
        batch = []
        for n in range(8):
            r = httpx.post(
                f"{served}/api/v1/orders",
                json={
                    "sku": "FLASH",
                    "quantity": 1,
                    "email": f"r{round_no}-{n}@example.com",
                    "gateway": "sandbox",
                },
                headers={"Idempotency-Key": f"key-{round_no}-{n}"},  # as the checkout form
            )
            assert r.status_code == 201, r.text
            with shop.db.read() as s:
                batch.append(orders.get_order(s, r.json()["order_no"]))
        answers = _post_at_once(served, served_loop, [_raw(o) for o in batch])
        assert answers == [b"HTTP/1.1 200 OK"] * 8
        paid += batch
        if any(n > 1 for n in sizes):
            break
    replay = httpx.post(
        f"{served}/api/v1/orders",
        json={"sku": "FLASH", "quantity": 1, "email": "r0-0@example.com", "gateway": "sandbox"},
        headers={"Idempotency-Key": "key-0-0"},
    )
    assert replay.json()["order_no"] == paid[0].order_no
    state = _state(shop)
    assert state["orders"] == {"delivered": len(paid)}
    assert state["notifications"] == {"accepted": len(paid)}
    assert len({k for o in paid for k in _reserved(shop, o)}) == len(paid)
    assert any(n > 1 for n in sizes), sizes
    assert set(kinds) == {fulfilment.Checked}  # verified by the server before they joined


def _paid_while_the_writer_was_held(
    served: str,
    loop: asyncio.AbstractEventLoop,
    shop: fulfilment.Shop,
    placed: list[orders.OrderView],
    held_for: list[int],
) -> list[bytes]:
    """Their notifications posted at once while another thread holds SQLite's writer, which is
    let go once they all wait for it (`held_for`: the weight of each call that waits for it in
    `WriterQueue.run_held`); the answers' status lines."""
    answers: list[list[bytes]] = []
    poster = threading.Thread(
        target=lambda: answers.append(_post_at_once(served, loop, [_raw(o) for o in placed]))
    )
    held_for.clear()
    try:
        with writer_held_by_a_thread(shop):
            poster.start()
            deadline = time.monotonic() + 10
            while sum(held_for) < len(placed) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sum(held_for) == len(placed)  # each waits for the writer, alone or in a group
            assert not answers  # none answered while it was held
    finally:
        poster.join(30)
    assert len(answers) == 1
    return answers[0]


@pytest.mark.parametrize("selling", [True, False], ids=["in a group", "alone"])
def test_a_notification_that_waited_for_the_writer_is_verified_once(
    served: str,
    served_loop: asyncio.AbstractEventLoop,
    shop: fulfilment.Shop,
    monkeypatch: pytest.MonkeyPatch,
    selling: bool,
) -> None:
    """On SQLite a notification that finds the writer busy waits for it and then runs again
    from the start, in a group during a flash sale (decision 0023) or alone (decision 0015). Its
    signature (an RSA verification for most channels) was verified again at every run; the
    server now verifies it once, before (`check_notification`)."""
    if BACKEND != "sqlite":
        pytest.skip("SQLite's writer")
    monkeypatch.setattr(running, "STORM", 60.0)  # however slow the machine, still selling
    monkeypatch.setattr(running, "WRITER_WAIT", 30.0)  # waits on the loop, not on a thread
    verify = type(shop.gateways.get("sandbox")).verify_notification
    verified: list[str] = []

    def counted_verify(self: Any, raw: payments.RawNotification) -> Any:
        notice = verify(self, raw)
        verified.append(notice.order_no or "")
        return notice

    monkeypatch.setattr(type(shop.gateways.get("sandbox")), "verify_notification", counted_verify)
    runs: list[int] = []
    together = fulfilment.handle_notifications_together

    def counted_together(
        shop: fulfilment.Shop, notes: list[fulfilment.Checked]
    ) -> list[fulfilment.Outcome | None]:
        runs.append(len(notes))
        return together(shop, notes)

    monkeypatch.setattr(fulfilment, "handle_notifications_together", counted_together)
    writers = shop.db._writers
    assert writers is not None
    run_held = type(writers).run_held
    held_for: list[int] = []

    async def counted_hold(self: Any, call: Any, within: float, **kw: int) -> Any:
        held_for.append(kw.get("weight", 1))
        return await run_held(self, call, within, **kw)

    monkeypatch.setattr(type(writers), "run_held", counted_hold)
    sku = make_sku(shop, "FLASH" if selling else "PLAIN", price=990)
    add_keys(shop, sku, [f"K-{n}" for n in range(15)])
    if selling:
        open_flash_sale(shop, "FLASH", quota=15)
    paid: list[orders.OrderView] = []
    for round_no in range(3 if selling else 1):  # a round is enough; more if not grouped
        placed = []
        for n in range(3):
            email = f"r{round_no}-{n}@example.com"
            if not selling:
                placed.append(place(shop, sku.code, email=email).order)
                continue
            r = httpx.post(  # through the server: its loop knows the sale is on
                f"{served}/api/v1/orders",
                json={"sku": "FLASH", "quantity": 1, "email": email, "gateway": "sandbox"},
            )
            assert r.status_code == 201, r.text
            with shop.db.read() as s:
                placed.append(orders.get_order(s, r.json()["order_no"]))
        answers = _paid_while_the_writer_was_held(served, served_loop, shop, placed, held_for)
        assert answers == [b"HTTP/1.1 200 OK"] * 3
        paid += placed
        assert sorted(verified) == sorted(o.order_no for o in paid)  # once each
        if runs:
            break
    assert _state(shop)["orders"] == {"delivered": len(paid)}
    if selling:
        assert runs and all(n > 1 for n in runs), runs  # a group, held, and run again
        assert len(runs) % 2 == 0  # each group ran twice: refused for the writer, then held
    else:
        assert runs == []


def test_a_verified_notification_is_applied_as_the_one_it_verified(
    shop: fulfilment.Shop,
) -> None:
    """A verification carries its notification (`Checked.raw`): handed over, it applies that
    notification and no other, and the record is of that notification's own bytes."""
    sku = make_sku(shop, price=990)
    add_keys(shop, sku, ["K-1", "K-2"])
    a, b = (place(shop, sku.code, email=f"{n}@example.com").order for n in ("a", "b"))
    raw = _raw(b)
    outcome = fulfilment.handle_notification(shop, fulfilment.check_notification(shop, raw))
    assert (outcome.order_no, outcome.delivered) == (b.order_no, True)
    with shop.db.read() as s:
        assert orders.get_order(s, a.order_no).status == orders.OrderStatus.PENDING
        assert orders.get_order(s, b.order_no).status == orders.OrderStatus.DELIVERED
        bodies = s.execute(text("SELECT body FROM payments_notification")).scalars().all()
    assert bodies == [raw.body.decode()]


@pytest.mark.parametrize("path", ["in a group", "alone", "rejected", "unknown channel"])
def test_a_notification_is_recorded_as_received_when_it_was_checked(
    shop: fulfilment.Shop, path: str
) -> None:
    """The server checks a notification as it reads it, and may apply it much later (after
    waiting for SQLite's writer or a group's turn): its record keeps the time it was checked."""
    sku = make_sku(shop, price=990)
    add_keys(shop, sku, ["K-1", "K-2"])
    a, b = (place(shop, sku.code, email=f"{n}@example.com").order for n in ("a", "b"))
    raws = {
        "in a group": [_raw(a), _raw(b)],
        "alone": [_raw(a)],
        "rejected": [_raw(a, signature="bad")],
        "unknown channel": [dataclasses.replace(_raw(a), gateway="nowhere")],
    }[path]
    checked = [fulfilment.check_notification(shop, raw) for raw in raws]
    time.sleep(0.01)  # applied later than checked, as after a wait for the database
    applied_from = utcnow()
    if path == "in a group":
        assert all(fulfilment.handle_notifications_together(shop, checked))
    elif path == "unknown channel":
        with pytest.raises(NotFound):
            fulfilment.handle_notification(shop, checked[0])
    else:
        fulfilment.handle_notification(shop, checked[0])
    with shop.db.read() as s:
        recorded = list(
            s.execute(
                text("SELECT received_at FROM payments_notification ORDER BY id").columns(
                    received_at=UtcDateTime()
                )
            ).scalars()
        )
    assert recorded == [c.received_at for c in checked]
    assert all(at < applied_from for at in recorded)
