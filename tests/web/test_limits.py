"""Anti-hoarding at the HTTP edge: rate limits (memory and Redis), device cookie, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from kami import accounts, bootstrap, fulfilment
from kami.config import Settings
from kami.web.app import create_app
from kami.web.ratelimit import RateLimited, RateLimits
from tests.conftest import add_keys, make_sku, run_async

ORDER = {"sku": "SKU-1", "quantity": 1, "email": "buyer@example.com", "gateway": "sandbox"}


def _client(
    settings: Settings, **overrides: object
) -> Iterator[tuple[TestClient, fulfilment.Shop]]:
    container = bootstrap.build(settings.model_copy(update=overrides))
    try:
        with TestClient(create_app(container, worker=False)) as client:
            yield client, container.shop
    finally:
        container.close()


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_order_creation_is_rate_limited(settings: Settings, store: str) -> None:
    redis = "redis://127.0.0.1:6379/0" if store == "redis" else None
    ns = f"kami-test-{uuid.uuid4().hex}"
    for client, shop in _client(
        settings, rate_limit_orders="3/minute", redis_url=redis, redis_namespace=ns
    ):
        add_keys(shop, make_sku(shop), [f"K-{n}" for n in range(10)])
        codes = [
            client.post("/api/v1/orders", json={**ORDER, "email": f"b{n}@example.com"}).status_code
            for n in range(4)
        ]
        assert codes == [201, 201, 201, 429]
        r = client.post("/api/v1/orders", json=ORDER)
        assert r.json()["type"] == "/problems/rate-limited" and int(r.headers["retry-after"]) >= 1


def test_redis_counters_are_shared_between_processes(settings: Settings) -> None:
    """Two apps (as two server processes) with one Redis share one budget."""
    shared = {
        "rate_limit_reveals": "2/minute",
        "redis_url": "redis://127.0.0.1:6379/0",
        "redis_namespace": f"kami-test-{uuid.uuid4().hex}",
    }
    for first, _shop in _client(settings, **shared):
        for second, _ in _client(settings, **shared):
            url = "/api/v1/orders/K000/reveal"
            assert first.post(url).status_code == 401  # counted, then refused for the token
            assert second.post(url).status_code == 401
            assert first.post(url).status_code == 429
            assert second.post(url).status_code == 429


def test_device_cookie_caps_open_orders(client: TestClient, shop: fulfilment.Shop) -> None:
    shop.open_orders_per_buyer = 2
    add_keys(shop, make_sku(shop), [f"K-{n}" for n in range(10)])
    page = client.get("/")
    device = page.cookies.get("kami_device")
    assert device and "httponly" in page.headers["set-cookie"].lower()
    for n in range(2):
        assert (
            client.post("/api/v1/orders", json={**ORDER, "email": f"d{n}@example.com"}).status_code
            == 201
        )
    r = client.post("/api/v1/orders", json={**ORDER, "email": "d9@example.com"})
    assert r.status_code == 429 and r.json()["type"] == "/problems/too-many-open-orders"
    assert r.json()["where"] == "device"


def test_cancel_releases_the_reservation(client: TestClient, shop: fulfilment.Shop) -> None:
    add_keys(shop, make_sku(shop), ["K-1"])
    created = client.post("/api/v1/orders", json=ORDER).json()
    assert (
        client.post("/api/v1/orders", json={**ORDER, "email": "x@example.com"}).status_code == 409
    )
    url = f"/api/v1/orders/{created['order_no']}/cancel"
    assert client.post(url).status_code == 401
    r = client.post(url, headers={"Authorization": f"Bearer {created['access_token']}"})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (
        client.post("/api/v1/orders", json={**ORDER, "email": "x@example.com"}).status_code == 201
    )


def test_admin_sets_a_flash_sale(client: TestClient, shop: fulfilment.Shop) -> None:
    with shop.db.write() as s:
        a = accounts.create_admin(s, "owner", "correct horse battery")
        token = accounts.issue_token(s, a.id)
    add_keys(shop, make_sku(shop, price=5000), ["K-1", "K-2"])
    auth = {"Authorization": f"Bearer {token}"}
    body = {
        "starts_at": "2020-01-01T00:00:00Z",
        "ends_at": "2099-01-01T00:00:00Z",
        "price_minor": 100,
        "quota": 1,
        "per_buyer_limit": 1,
    }
    r = client.put("/api/admin/skus/SKU-1/flash-sale", json=body, headers=auth)
    assert r.status_code == 200 and r.json()["taken"] == 0
    bad = client.put(
        "/api/admin/skus/SKU-1/flash-sale",
        headers=auth,
        json={**body, "ends_at": "2019-01-01T00:00:00Z"},
    )
    assert bad.status_code == 422
    created = client.post("/api/v1/orders", json=ORDER).json()
    assert created["amount_minor"] == 100
    r = client.post("/api/v1/orders", json={**ORDER, "email": "late@example.com"})
    assert r.status_code == 409 and r.json()["type"] == "/problems/sold-out"


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_event_loop_and_worker_threads_count_in_one_window(store: str) -> None:
    """The hot endpoints ask on the loop (an asyncio client for Redis), the others on a worker
    thread: one budget all the same."""
    redis = "redis://127.0.0.1:6379/0" if store == "redis" else None
    limits = RateLimits(redis, {"orders": "2/minute"}, namespace=f"kami-test-{uuid.uuid4().hex}")

    async def on_loop() -> None:
        await limits.hit_on_loop("orders", "198.51.100.7")

    limits.hit("orders", "198.51.100.7")
    run_async(on_loop)
    with pytest.raises(RateLimited):
        limits.hit("orders", "198.51.100.7")
    with pytest.raises(RateLimited):
        run_async(on_loop)
    limits.hit("orders", "198.51.100.8")  # another address has its own budget
