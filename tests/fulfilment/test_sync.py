"""Query and fix: a payment whose callback was lost is found by asking the channel."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import text

from kami import bootstrap, fulfilment, orders, payments
from kami.kernel.clock import utcnow
from kami.worker import runner
from tests.conftest import add_keys, make_sku, place


def _status(shop: fulfilment.Shop, order_no: str) -> str:
    with shop.db.read() as s:
        return orders.get_order(s, order_no).status


def _age(shop: fulfilment.Shop, order_no: str, minutes: float) -> None:
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET created_at = :t WHERE order_no = :o"),
            {"t": utcnow() - timedelta(minutes=minutes), "o": order_no},
        )


def test_lost_callback_is_delivered_by_the_sweep(
    client: TestClient, container: bootstrap.Container
) -> None:
    shop = container.shop
    add_keys(shop, make_sku(shop, price=300), ["LOST-1", "LOST-2"])
    paid = place(shop, "SKU-1", email="paid@example.com").order
    unpaid = place(shop, "SKU-1", email="unpaid@example.com").order
    # The buyer pays, but the channel's callback never arrives.
    r = client.post(f"/pay/sandbox/{paid.order_no}?notify=false")
    assert r.json()["verdict"] == "not_notified"
    assert _status(shop, paid.order_no) == "pending"
    # Too young to ask about yet: the sweep leaves it alone.
    runner.run_once(container)
    assert _status(shop, paid.order_no) == "pending"
    _age(shop, paid.order_no, 3)
    _age(shop, unpaid.order_no, 3)
    runner.run_once(container)
    assert _status(shop, paid.order_no) == "delivered"
    assert _status(shop, unpaid.order_no) == "pending"  # asked; the channel has nothing
    with shop.db.read() as s:
        notes = payments.list_notifications(s, order_no=paid.order_no)
        synced = s.execute(
            text("SELECT count(*) FROM orders_order WHERE synced_at IS NOT NULL")
        ).scalar_one()
    assert [(n.method, n.verdict) for n in notes] == [("QUERY", "accepted")]
    assert synced == 2
    # The callback finally arrives: a duplicate, acknowledged, changes nothing.
    with shop.db.read() as s:
        trade = payments.find_sandbox_trade(s, paid.order_no)
    assert trade is not None
    body = (
        f'{{"order_no": "{paid.order_no}", "trade_no": "{trade.trade_no}", '
        f'"amount_minor": 300, "currency": "CNY", "status": "paid"}}'
    ).encode()
    from tests.conftest import sign

    late = client.post(
        "/api/v1/payments/sandbox/notify", content=body, headers={"X-Sandbox-Signature": sign(body)}
    )
    assert late.status_code == 200
    with shop.db.read() as s:
        assert (
            s.execute(text("SELECT count(*) FROM vault_key WHERE status='sold'")).scalar_one() == 1
        )


def test_sync_from_admin_api_and_cli_path(client: TestClient, shop: fulfilment.Shop) -> None:
    from kami import accounts

    add_keys(shop, make_sku(shop, price=300), ["K-1"])
    o = place(shop, "SKU-1").order
    with shop.db.write() as s:
        a = accounts.create_admin(s, "owner", "correct horse battery")
        token = accounts.issue_token(s, a.id)
    auth = {"Authorization": f"Bearer {token}"}
    r = client.post(f"/api/admin/orders/{o.order_no}/sync", headers=auth)
    assert r.json() == {
        "order_no": o.order_no,
        "found": False,
        "verdict": None,
        "status": "pending",
    }
    client.post(f"/pay/sandbox/{o.order_no}?notify=false")
    r = client.post(f"/api/admin/orders/{o.order_no}/sync", headers=auth)
    assert r.json() == {
        "order_no": o.order_no,
        "found": True,
        "verdict": "accepted",
        "status": "delivered",
    }
    r = client.post(f"/api/admin/orders/{o.order_no}/sync", headers=auth)
    assert r.status_code == 409 and r.json()["type"] == "/problems/not-syncable"


def test_due_for_sync_rules(shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop), [f"K-{n}" for n in range(4)])
    young, old, expiring = (place(shop, "SKU-1", email=f"{n}@example.com").order for n in "yoe")
    _age(shop, old.order_no, 10)
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET expires_at = :t WHERE order_no = :o"),
            {"t": utcnow() + timedelta(seconds=30), "o": expiring.order_no},
        )

    def due() -> set[str]:
        with shop.db.read() as s:
            return set(orders.due_for_sync(s, utcnow(), timedelta(minutes=2), timedelta(minutes=5)))

    assert due() == {old.order_no, expiring.order_no}
    with shop.db.write() as s:
        orders.mark_synced(s, old.order_no, utcnow())
        orders.mark_synced(s, expiring.order_no, utcnow())
    assert due() == set()  # both asked just now; young is still too young
    assert young.order_no not in due()
