"""The license API end to end over HTTP: the seller's software activates, validates and
deactivates, and checks every answer, refusals included, against the published public key with
plain `cryptography`."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kami import bootstrap, fulfilment, licenses
from kami.config import Settings
from kami.kernel.clock import utcnow
from kami.web.app import create_app
from kami.web.problems import PROBLEM
from kami.web.ratelimit import RateLimits
from tests.licenses import issue_keys, licensed_sku

API = "/api/v1/licenses"


def _app(container: bootstrap.Container, licenses_rate: str) -> FastAPI:
    app = create_app(container, worker=False)
    s = container.settings
    app.state.rate_limits = RateLimits(
        None,
        {
            "orders": s.rate_limit_orders,
            "reveals": s.rate_limit_reveals,
            "licenses": licenses_rate,
        },
    )
    return app


@pytest.fixture
def api(container: bootstrap.Container) -> Iterator[TestClient]:
    with TestClient(_app(container, "100000/minute")) as c:
        yield c


class Client:
    """What a seller's software does: pin the key once, then verify every answer itself."""

    def __init__(self, http: TestClient) -> None:
        published = http.get(f"{API}/public-key").json()
        key = load_pem_public_key(published["public_key_pem"].encode())
        assert isinstance(key, Ed25519PublicKey)
        raw = Ed25519PublicKey.from_public_bytes(base64.b64decode(published["public_key_base64"]))
        assert raw == key
        self.http, self.key, self.key_id = http, key, published["key_id"]
        self.sent = 0

    def call(self, action: str, key: str, machine: str, **extra: Any) -> tuple[int, dict[str, Any]]:
        self.sent += 1
        nonce = f"nonce-{self.sent}"
        r = self.http.post(
            f"{API}/{action}",
            json={"license_key": key, "machine_id": machine, "nonce": nonce, **extra},
        )
        doc = r.json()
        assert r.headers["cache-control"] == "no-store"
        assert doc["key_id"] == self.key_id
        canonical = json.dumps(
            doc["payload"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
        self.key.verify(base64.b64decode(doc["signature"]), canonical)  # raises if not genuine
        payload = doc["payload"]
        assert (payload["nonce"], payload["machine_id"], payload["action"]) == (
            nonce,
            machine,
            action,
        )
        if r.status_code == 200:
            assert payload["ok"] is True
        else:
            assert r.headers["content-type"] == PROBLEM and payload["ok"] is False
            assert doc["type"] == f"/problems/{payload['result']}"
            assert doc["status"] == r.status_code
        return r.status_code, payload


def test_activate_validate_deactivate(api: TestClient, shop: fulfilment.Shop) -> None:
    sku_id = licensed_sku(shop, limit=2, days=365, product="acme-editor")
    (key,) = issue_keys(shop, sku_id)
    client = Client(api)

    assert client.call("validate", key, "a")[0] == 403  # machine-not-activated
    code, p = client.call("activate", key, "a")
    assert (code, p["result"], p["activations_used"], p["activation_limit"]) == (
        200,
        "activated",
        1,
        2,
    )
    assert p["product_code"] == "acme-editor" and p["status"] == "active"
    assert p["key_sha256"] == licenses.key_digest(key)
    assert client.call("activate", key.lower().replace("-", ""), "a")[1]["result"] == (
        "already-activated"
    )
    assert client.call("activate", key, "b")[1]["activations_used"] == 2
    code, p = client.call("activate", key, "c")
    assert (code, p["result"], p["activations_used"]) == (409, "activation-limit-reached", 2)
    code, p = client.call("validate", key, "b")
    assert (code, p["result"], p["machine_activated"]) == (200, "valid", True)
    code, p = client.call("deactivate", key, "b")
    assert (code, p["result"], p["activations_used"]) == (200, "deactivated", 1)
    assert client.call("validate", key, "b")[1]["result"] == "machine-not-activated"
    assert client.call("activate", key, "c")[1]["result"] == "activated"


def test_refusals_are_signed_and_say_nothing_about_unknown_keys(
    api: TestClient, shop: fulfilment.Shop
) -> None:
    sku_id = licensed_sku(shop, limit=1, days=30)
    revoked, expired = issue_keys(shop, sku_id, 1, order_id=1) + issue_keys(
        shop, sku_id, 1, now=utcnow() - timedelta(days=31)
    )
    with shop.db.write() as s:
        licenses.revoke(s, [v.license_id for v in licenses.licenses_for_order(s, 1)], "refund")
    client = Client(api)
    unknown = revoked[:-2] + ("22" if revoked[-2:] != "22" else "33")  # checksum now wrong
    for action in ("validate", "activate", "deactivate"):
        bodies = []
        for text in ["nonsense", unknown, "2" * 20, "ABCDE-" * 3 + "ABCDE"]:
            code, p = client.call(action, text, "m")
            assert (code, p["result"], p["status"], p["product_code"]) == (
                404,
                "license-invalid",
                "invalid",
                None,
            )
            bodies.append({k: v for k, v in p.items() if k not in ("nonce", "key_sha256", "now")})
        assert all(b == bodies[0] for b in bodies)  # garbage and unknown: the same answer
    assert client.call("activate", revoked, "m")[:1] == (403,)
    assert client.call("validate", revoked, "m")[1]["result"] == "license-revoked"
    code, p = client.call("activate", expired, "m")
    assert (code, p["result"], p["status"]) == (403, "license-expired", "expired")
    assert p["expires_at"] is not None and p["expires_at"] < p["now"]


def test_bad_requests_are_problems_naming_the_field(api: TestClient) -> None:
    cases = [
        ({"license_key": "K", "machine_id": ""}, "machine_id"),
        ({"license_key": "K", "machine_id": "m" * 129}, "machine_id"),
        ({"license_key": "K", "machine_id": "tab\there"}, "machine_id"),
        ({"license_key": "K", "machine_id": " padded"}, "machine_id"),
        ({"license_key": "K", "machine_id": "a\x00b"}, "machine_id"),
        ({"license_key": "K" * 257, "machine_id": "m"}, "license_key"),
        ({"license_key": "K", "machine_id": "m", "nonce": "n" * 129}, "nonce"),
        ({"license_key": "K", "machine_id": "m", "extra": 1}, "extra"),
        ({"machine_id": "m"}, "license_key"),
    ]
    for body, where in cases:
        r = api.post(f"{API}/activate", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"] == PROBLEM and r.json()["where"] == where


def test_answers_are_rate_limited_per_address(container: bootstrap.Container) -> None:
    with TestClient(_app(container, "3/minute")) as http:
        body = {"license_key": "nonsense", "machine_id": "m"}
        codes = [http.post(f"{API}/validate", json=body).status_code for _ in range(4)]
        assert codes == [404, 404, 404, 429]
        r = http.post(f"{API}/activate", json=body)
        assert r.status_code == 429 and r.headers["content-type"] == PROBLEM
        assert int(r.headers["retry-after"]) >= 1


def test_public_key_is_stable_across_processes(settings: Settings, api: TestClient) -> None:
    first = api.get(f"{API}/public-key")
    assert first.status_code == 200 and "max-age" in first.headers["cache-control"]
    assert first.json()["algorithm"] == "Ed25519"
    other = bootstrap.build(settings)  # another server process on the same database
    try:
        with TestClient(_app(other, "100/minute")) as second:
            assert second.get(f"{API}/public-key").json() == first.json()
    finally:
        other.close()
