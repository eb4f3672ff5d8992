"""The admin refund API: roles, idempotency by header, the key choice, the order's record;
and a SKU limited to some payment accounts."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from kami import accounts, fulfilment, payments
from kami.cli.main import app
from kami.config import Settings
from tests.conftest import add_keys, make_sku, place, raw_notification, sandbox_body


def token_for(shop: fulfilment.Shop, name: str, role: accounts.Role) -> dict[str, str]:
    with shop.db.write() as s:
        admin = accounts.create_admin(s, name, "correct horse battery", role)
        return {"Authorization": f"Bearer {accounts.issue_token(s, admin.id)}"}


def paid(shop: fulfilment.Shop, code: str = "A-1") -> str:
    sku = make_sku(shop, code, price=2500)
    add_keys(shop, sku, [f"{code}-K1", f"{code}-K2"])
    placed = place(shop, code)
    with shop.db.write() as s:
        trade = payments.record_sandbox_trade(s, placed.order.order_no, 2500, "CNY")
    body = sandbox_body(placed.order.order_no, 2500, trade_no=trade)
    fulfilment.handle_notification(shop, raw_notification(body))
    return placed.order.order_no


def test_refund_api(client: TestClient, shop: fulfilment.Shop) -> None:
    order_no = paid(shop)
    finance = token_for(shop, "money", accounts.Role.FINANCE)
    operator = token_for(shop, "ops", accounts.Role.OPERATOR)
    url = f"/api/admin/orders/{order_no}/refunds"
    body = {"amount_minor": 1000, "reason": "buyer changed mind"}

    r = client.post(url, json=body, headers=operator | {"Idempotency-Key": "a"})
    assert r.status_code == 403 and r.json()["type"] == "/problems/role-forbidden"
    r = client.post(url, json=body, headers=finance)
    assert r.status_code == 422 and "Idempotency-Key" in r.text

    r = client.post(url, json=body, headers=finance | {"Idempotency-Key": "a"})
    assert r.status_code == 200, r.text
    first = r.json()
    assert (
        first["refund"]["status"] == "succeeded" and first["order_status"] == "partially_refunded"
    )
    assert first["refund"]["requested_by"] == "money"
    again = client.post(url, json=body, headers=finance | {"Idempotency-Key": "a"}).json()
    assert again["refund"]["refund_no"] == first["refund"]["refund_no"]
    r = client.post(
        url, json=body | {"amount_minor": 2000}, headers=finance | {"Idempotency-Key": "b"}
    )
    assert r.status_code == 422 and r.json()["type"] == "/problems/refund-exceeds-payment"
    assert r.json()["where"] == "amount_minor"

    listed = client.get(url, headers=operator).json()
    assert [x["amount_minor"] for x in listed] == [1000]
    detail = client.get(f"/api/admin/orders/{order_no}", headers=operator).json()
    assert detail["refunds"][0]["refund_no"] == first["refund"]["refund_no"]
    assert {"refund_requested", "refund_succeeded"} <= {e["event"] for e in detail["timeline"]}

    keys_url = f"/api/admin/orders/{order_no}/keys"
    assert client.post(keys_url, json={"action": "restock"}, headers=operator).status_code == 403
    r = client.post(keys_url, json={"action": "restock"}, headers=finance)
    assert r.status_code == 200 and r.json()["keys_moved"] == 1
    stock = client.get("/api/admin/stock", headers=operator).json()
    assert stock[0]["available"] == 2  # the unsold key and the restocked one


def test_cli_refund_is_idempotent_by_default(settings: Settings, tmp_path: Path) -> None:
    from kami import bootstrap

    c = bootstrap.build(settings)
    try:
        order_no = paid(c.shop, "C-1")
    finally:
        c.close()
    assert settings.master_key and settings.sandbox_secret
    env = {
        "KAMI_DATABASE_URL": settings.database_url,
        "KAMI_MASTER_KEY": settings.master_key.get_secret_value(),
        "KAMI_SANDBOX_ENABLED": "true",
        "KAMI_SANDBOX_SECRET": settings.sandbox_secret.get_secret_value(),
        "COLUMNS": "200",
    }
    runner = CliRunner()
    args = ["orders", "refund", order_no, "--amount", "5.00", "--reason", "late"]
    first = runner.invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    assert "5.00 CNY succeeded" in first.output and "partially_refunded" in first.output
    second = runner.invoke(app, args, env=env)
    assert second.exit_code == 0
    refund_no = first.output.split()[1].rstrip(":")
    assert refund_no in second.output
    bad = runner.invoke(
        app, ["orders", "refund", order_no, "--amount", "x", "--reason", "r"], env=env
    )
    assert bad.exit_code != 0 and "--amount" in bad.output
    c = bootstrap.build(settings)
    try:
        refunds = fulfilment.list_order_refunds(c.shop, order_no)
    finally:
        c.close()
    assert [r.amount_minor for r in refunds] == [500]


def test_sku_limited_to_some_accounts(client: TestClient, shop: fulfilment.Shop) -> None:
    owner = token_for(shop, "owner", accounts.Role.OWNER)
    sku = make_sku(shop, "G-1")
    add_keys(shop, sku, ["G-1-K"])
    r = client.patch("/api/admin/skus/G-1", json={"gateways": ["alipay-main"]}, headers=owner)
    assert r.status_code == 200 and r.json()["gateways"] == ["alipay-main"]
    catalog = client.get("/api/v1/catalog").json()
    (public_sku,) = catalog[0]["products"][0]["skus"]
    assert public_sku["gateways"] == []  # alipay-main is not an enabled account here
    order = {"sku": "G-1", "quantity": 1, "email": "b@example.com", "gateway": "sandbox"}
    r = client.post("/api/v1/orders", json=order)
    assert r.status_code == 422 and r.json()["type"] == "/problems/gateway-not-allowed"
    assert r.json()["where"] == "gateway"
    r = client.patch("/api/admin/skus/G-1", json={"gateways": None}, headers=owner)
    assert r.status_code == 200 and r.json()["gateways"] is None
    assert client.get("/api/v1/catalog").json()[0]["products"][0]["skus"][0]["gateways"] == [
        "sandbox"
    ]
    assert client.post("/api/v1/orders", json=order).status_code == 201
    r = client.patch("/api/admin/skus/G-1", json={"gateways": ["Bad Name"]}, headers=owner)
    assert r.status_code == 422
