"""The console's tests share these: admins, signing in, a seeded catalog."""

from __future__ import annotations

import re

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


@pytest.fixture
def seeded(shop: fulfilment.Shop) -> Seeded:
    return seed(shop)


@pytest.fixture
def owner(client: TestClient, shop: fulfilment.Shop) -> TestClient:
    make_admin(shop, "boss", accounts.Role.OWNER)
    return sign_in(client, "boss")
