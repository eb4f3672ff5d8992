"""The admin API for goods: the manual queue over HTTP, roles, a webhook SKU's secret, a
license SKU's policy, and the buyer's view of an order's parts."""

from __future__ import annotations

from fastapi.testclient import TestClient

from kami import accounts, fulfilment, orders
from tests.fulfilment.test_goods import buy, goods_sku
from tests.web.test_admin_refunds import token_for


def test_manual_queue_over_http(client: TestClient, shop: fulfilment.Shop) -> None:
    ops = token_for(shop, "ops", accounts.Role.OPERATOR)
    fields = [{"name": "qq", "label": "QQ", "rule": "qq"}]
    goods_sku(shop, "QQVIP", "manual", fields=fields, config={"instructions": "open VIP"})
    no = buy(shop, "QQVIP", buyer_input={"qq": "123456789"})
    (task,) = client.get("/api/admin/manual-queue", headers=ops).json()
    assert task["buyer_input"] == {"qq": "123456789"} and task["line"]["order_no"] == no
    line = task["line"]["id"]
    r = client.post(f"/api/admin/lines/{line}/fulfil", json={"items": []}, headers=ops)
    assert r.status_code == 422
    items = {"items": [{"card": "<b>VIP opened</b>"}]}
    r = client.post(f"/api/admin/lines/{line}/fulfil", json=items, headers=ops)
    assert r.status_code == 200, r.text
    r = client.post(f"/api/admin/lines/{line}/fail", json={"reason": "late"}, headers=ops)
    assert r.status_code == 409 and r.json()["type"] == "/problems/line-settled"
    assert client.get("/api/admin/manual-queue", headers=ops).json() == []
    token = orders.access_token(shop.token_secret(), no)
    auth = {"Authorization": f"Bearer {token}"}
    order = client.get(f"/api/v1/orders/{no}", headers=auth).json()
    assert order["status"] == "delivered"
    assert order["parts"] == [
        {"position": 1, "sku": "QQVIP", "kind": "manual", "quantity": 1, "status": "delivered"}
    ]
    revealed = client.post(f"/api/v1/orders/{no}/reveal", headers=auth).json()
    assert revealed["items"][0]["card"] == "<b>VIP opened</b>"  # stored and returned as text
    detail = client.get(f"/api/admin/orders/{no}", headers=ops).json()
    assert detail["lines"][0]["status"] == "delivered"


def test_webhook_secret_is_for_the_owner(client: TestClient, shop: fulfilment.Shop) -> None:
    owner = token_for(shop, "boss", accounts.Role.OWNER)
    ops = token_for(shop, "ops", accounts.Role.OPERATOR)
    goods_sku(shop, "HOOKED", "webhook", config={"url": "https://seller.example/deliver"})
    url = "/api/admin/skus/HOOKED/webhook-secret"
    assert client.get(url, headers=ops).status_code == 403
    r = client.get(url, headers=owner)
    assert r.status_code == 200
    assert r.json()["secret"] == fulfilment.webhook_secret(shop, "HOOKED")
    assert r.json()["secret"] != fulfilment.webhook_secret(shop, "OTHER")


def test_license_policy_and_bad_settings(client: TestClient, shop: fulfilment.Shop) -> None:
    owner = token_for(shop, "boss", accounts.Role.OWNER)
    goods_sku(shop, "EDITOR", "license")
    url = "/api/admin/skus/EDITOR/license-policy"
    assert client.get(url, headers=owner).status_code == 404
    body = {"activation_limit": 2, "product_code": "editor"}
    r = client.put(url, json=body, headers=owner)
    assert r.status_code == 200 and r.json()["activation_limit"] == 2
    no = buy(shop, "EDITOR")
    token = orders.access_token(shop.token_secret(), no)
    got = client.post(f"/api/v1/orders/{no}/reveal", headers={"Authorization": f"Bearer {token}"})
    key = got.json()["items"][0]["card"]
    r = client.post("/api/v1/licenses/activate", json={"license_key": key, "machine_id": "m1"})
    assert r.status_code == 200 and r.json()["payload"]["ok"] is True
    # A SKU's settings are checked when saved, the error naming the field.
    r = client.post(
        "/api/admin/skus",
        json={
            "code": "HOOK-BAD",
            "product": "p-editor-base",
            "name": "x",
            "price_minor": 100,
            "delivery_kind": "webhook",
            "delivery_config": {"url": "ftp://nope"},
        },
        headers=owner,
    )
    assert r.status_code == 422 and r.json()["where"] == "delivery_config.url"
