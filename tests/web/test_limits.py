"""Anti-hoarding at the HTTP edge: rate limits (memory and Redis), device cookie, cancel."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from kami import accounts, bootstrap, fulfilment
from kami.config import Settings
from kami.kernel.errors import InvalidInput
from kami.web import ratelimit
from kami.web.app import create_app
from kami.web.ratelimit import RateLimited, RateLimits, check_redis
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


# -- when Redis does not answer ----------------------------------------------------------------
class RedisDoor:
    """A TCP forwarder on loopback in front of the machine's Redis that can be shut: while shut
    it closes every connection, those already open included, as a Redis that went away would."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.open = True
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", 6379))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def shut(self) -> None:
        self.open = False
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.shut()
        self._listener.close()


@pytest.fixture
def door() -> Iterator[RedisDoor]:
    d = RedisDoor()
    yield d
    d.close()


def _redis_hits(namespace: str) -> int:
    """How many hits Redis holds under the namespace (moving windows are lists)."""
    r = redis.Redis(host="127.0.0.1", port=6379)
    try:
        return sum(int(r.llen(k)) for k in r.keys(f"{namespace}*"))
    finally:
        r.close()


def test_orders_are_taken_while_redis_is_down(
    settings: Settings, door: RedisDoor, caplog: pytest.LogCaptureFixture
) -> None:
    """Counted in the process instead (the same limit still refuses the fourth), logged once,
    without the URL's password."""
    door.shut()
    url = door.url.replace("redis://", "redis://:door-s3cret@")  # a password, never to be shown
    for client, shop in _client(
        settings, rate_limit_orders="3/minute", redis_url=url, redis_namespace="kami-x"
    ):
        add_keys(shop, make_sku(shop), [f"K-{n}" for n in range(10)])
        with caplog.at_level(logging.WARNING, logger="kami.ratelimit"):
            codes = [
                client.post(
                    "/api/v1/orders", json={**ORDER, "email": f"b{n}@example.com"}
                ).status_code
                for n in range(4)
            ]
        assert codes == [201, 201, 201, 429]
        assert client.app.state.rate_limits.counting_locally  # type: ignore[attr-defined]
    said = [r.getMessage() for r in caplog.records if r.name == "kami.ratelimit"]
    assert len(said) == 1 and "Redis did not answer" in said[0], said
    assert "s3cret" not in caplog.text


def test_a_redis_that_never_answers_is_not_waited_for() -> None:
    """A Redis that accepts connections and says nothing (hung, or a firewall that drops): on
    a worker thread and on the loop, the hit is counted in the process once the client gives
    up, instead of never."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as mute:  # never accepts or reads
        limits = RateLimits(f"redis://127.0.0.1:{mute.getsockname()[1]}/0", {"orders": "2/minute"})

        async def on_loop() -> None:
            await limits.hit_on_loop("orders", "198.51.100.10")

        refused: list[str] = []

        def buy() -> None:
            limits.hit("orders", "198.51.100.10")  # gives up on Redis
            run_async(on_loop)  # within REDIS_RETRY: straight to this process's counters
            try:
                limits.hit("orders", "198.51.100.10")
            except RateLimited as exc:
                refused.append(exc.slug)

        buyer = threading.Thread(target=buy, daemon=True)  # a daemon: a hang fails, not sticks
        buyer.start()
        buyer.join(60)
        assert not buyer.is_alive(), "the hit waited for Redis"
        assert refused == ["rate-limited"] and limits.counting_locally
        limits._redis_away_until = 0.0  # as after REDIS_RETRY: the loop's client gives up too
        answered: list[str] = []

        def buy_on_loop() -> None:
            try:
                run_async(on_loop)
            except RateLimited as exc:  # the budget counted here is spent
                answered.append(exc.slug)

        loop_hit = threading.Thread(target=buy_on_loop, daemon=True)
        loop_hit.start()
        loop_hit.join(60)
        assert not loop_hit.is_alive(), "the hit on the loop waited for Redis"
        assert answered == ["rate-limited"]


def test_counting_goes_back_to_redis_when_it_answers_again(
    door: RedisDoor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ratelimit, "REDIS_RETRY", 0.2)
    namespace = f"kami-test-{uuid.uuid4().hex}"
    limits = RateLimits(door.url, {"orders": "100/minute"}, namespace=namespace)

    async def on_loop() -> None:
        await limits.hit_on_loop("orders", "198.51.100.9")

    limits.hit("orders", "198.51.100.9")
    run_async(on_loop)
    assert _redis_hits(namespace) == 2 and not limits.counting_locally
    door.shut()
    with caplog.at_level(logging.WARNING, logger="kami.ratelimit"):
        limits.hit("orders", "198.51.100.9")  # counted in this process
        assert limits.counting_locally
        time.sleep(0.3)  # past REDIS_RETRY: Redis is asked again, and is still away
        run_async(on_loop)
        assert limits.counting_locally
        door.open = True
        in_redis = 2
        for call in [lambda: limits.hit("orders", "198.51.100.9")] * 5 + [
            lambda: run_async(on_loop)
        ]:
            time.sleep(0.3)  # a client may first meet the connection the outage broke
            call()
            in_redis += not limits.counting_locally
    assert not limits.counting_locally
    assert _redis_hits(namespace) == in_redis  # those made while it was away are not there
    said = [r.getMessage() for r in caplog.records if r.name == "kami.ratelimit"]
    assert len(said) == 2, said  # once when it went, once when it came back
    assert "Redis did not answer" in said[0] and "answers again" in said[1], said


REFUSING = [
    ("redis://:wrong-s3cret@127.0.0.1:6379/0", "AuthenticationError"),  # it has no password
    ("redis://127.0.0.1:6379/99", "ResponseError"),  # it has 16 databases
]


@pytest.mark.parametrize(("url", "what"), REFUSING, ids=["password", "database"])
def test_a_redis_that_refuses_kami_stops_the_start(url: str, what: str) -> None:
    """A mistake in the settings is said before the server starts, not found out request by
    request; a server process built anyway counts around it rather than crash."""
    with pytest.raises(InvalidInput) as refused:
        check_redis(url)
    assert refused.value.where == "KAMI_REDIS_URL" and what in str(refused.value)
    assert "s3cret" not in str(refused.value)
    limits = RateLimits(url, {"orders": "1/minute"})
    assert limits.counting_locally
    limits.hit("orders", "198.51.100.12")
    with pytest.raises(RateLimited):
        limits.hit("orders", "198.51.100.12")


@pytest.mark.parametrize("url", [u for u, _ in REFUSING], ids=["password", "database"])
def test_kami_serve_says_so_and_stops(url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KAMI_DATABASE_URL": f"sqlite:///{tmp_path / 'kami.db'}",
        "KAMI_MASTER_KEY_FILE": str(tmp_path / "master.key"),
        "KAMI_REDIS_URL": url,
    }
    kami = [sys.executable, "-m", "kami.cli.main"]
    subprocess.run([*kami, "db", "upgrade"], env=env, cwd=tmp_path, check=True, timeout=120)
    done = subprocess.run(
        [*kami, "serve", "--port", "0", "--workers", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "KAMI_REDIS_URL" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "s3cret" not in done.stdout + done.stderr


def test_a_redis_that_is_away_at_start_is_counted_around(door: RedisDoor) -> None:
    door.shut()
    limits = RateLimits(door.url, {"orders": "1/minute"})
    assert limits.counting_locally
    limits.hit("orders", "198.51.100.11")
    with pytest.raises(RateLimited):
        limits.hit("orders", "198.51.100.11")
