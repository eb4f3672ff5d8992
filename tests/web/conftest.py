"""The console's tests share these: admins, signing in, a seeded catalog."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from kami import accounts, fulfilment
from tests.browser.seed import Seeded, seed

PASSWORD = "correct horse battery"


def make_admin(shop: fulfilment.Shop, name: str, role: accounts.Role) -> accounts.AdminView:
    with shop.db.write() as s:
        return accounts.create_admin(s, name, PASSWORD, role)


def csrf(client: TestClient, path: str = "/admin/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match, path
    return match.group(1)


def sign_in(client: TestClient, name: str, code: str = "") -> TestClient:
    token = csrf(client)
    r = client.post(
        "/admin/login",
        data={"csrf_token": token, "username": name, "password": PASSWORD, "code": code},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text[:500]
    return client


def asgi_scope(request: httpx.Request, spec_version: str = "2.3") -> dict[str, Any]:
    """The scope a server would give the app for `request` (its body is `request.read()`)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.url.path,
        "raw_path": request.url.raw_path,
        "query_string": request.url.query,
        "root_path": "",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        "headers": [(k.lower(), v) for k, v in request.headers.raw],
    }


@pytest.fixture
def seeded(shop: fulfilment.Shop) -> Seeded:
    return seed(shop)


@pytest.fixture
def owner(client: TestClient, shop: fulfilment.Shop) -> TestClient:
    make_admin(shop, "boss", accounts.Role.OWNER)
    return sign_in(client, "boss")
