"""The catalog as the admin builds it and as buyers see it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kami import accounts, catalog, fulfilment, vault
from kami.kernel.errors import InvalidInput
from kami.web.admin.api import IMPORTS
from tests.conftest import (
    add_keys,
    hold_imports,
    make_sku,
    place,
    raw_notification,
    sandbox_body,
)


@pytest.fixture
def admin(client: TestClient, shop: fulfilment.Shop) -> Iterator[dict[str, str]]:
    with shop.db.write() as s:
        a = accounts.create_admin(s, "owner", "correct horse battery")
        token = accounts.issue_token(s, a.id)
    yield {"Authorization": f"Bearer {token}"}


def _ok(r: object, status: int = 200) -> dict[str, object]:
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    return r.json() if r.status_code != 204 else {}  # type: ignore[attr-defined,no-any-return]


def test_admin_builds_a_tree_and_buyers_see_it(
    client: TestClient, admin: dict[str, str], shop: fulfilment.Shop
) -> None:
    for body in [
        {"slug": "video", "name": "视频会员", "position": 2},
        {"slug": "games", "name": "游戏点卡", "position": 1},
        {"slug": "tencent", "name": "腾讯视频", "parent": "video"},
        {"slug": "tencent-svip", "name": "SVIP", "parent": "tencent"},  # depth three
    ]:
        _ok(client.post("/api/admin/categories", json=body, headers=admin), 201)
    _ok(
        client.post(
            "/api/admin/products",
            headers=admin,
            json={
                "slug": "svip",
                "category": "tencent-svip",
                "name": "超级影视 SVIP",
                "benefits": ["4K", "TV"],
                "validity_days": 31,
                "redemption": "兑换说明",
            },
        ),
        201,
    )
    _ok(
        client.post(
            "/api/admin/products",
            headers=admin,
            json={"slug": "card", "category": "games", "name": "点卡"},
        ),
        201,
    )
    for sku in [
        {
            "code": "SVIP-M",
            "product": "svip",
            "name": "月卡",
            "price_minor": 3000,
            "stock_display": "exact",
        },
        {
            "code": "SVIP-Y",
            "product": "svip",
            "name": "年卡",
            "price_minor": 25800,
            "stock_display": "level",
            "low_stock_threshold": 2,
        },
        {
            "code": "CARD-10",
            "product": "card",
            "name": "10 元",
            "price_minor": 1000,
            "stock_display": "hidden",
        },
        {"code": "CARD-OFF", "product": "card", "name": "off", "price_minor": 1, "active": False},
    ]:
        _ok(client.post("/api/admin/skus", json=sku, headers=admin), 201)
    with shop.db.read() as session:
        skus = {s.code: s for s in catalog.list_skus(session)}
    add_keys(shop, skus["SVIP-M"], ["A-1", "A-2", "A-3"])
    add_keys(shop, skus["SVIP-Y"], ["B-1"])

    tree = _ok(client.get("/api/v1/catalog"))
    assert [c["slug"] for c in tree] == ["games", "video"]  # by position
    games, video = tree
    assert [s["code"] for s in games["products"][0]["skus"]] == ["CARD-10"]  # inactive hidden
    assert games["products"][0]["skus"][0]["stock"] == {
        "mode": "hidden",
        "available": False,
        "count": None,
        "level": None,
        "label": None,
    }
    svip = video["children"][0]["children"][0]["products"][0]
    assert svip["benefits"] == ["4K", "TV"] and svip["validity_days"] == 31
    stocks = {s["code"]: s["stock"] for s in svip["skus"]}
    assert stocks["SVIP-M"]["count"] == 3
    assert stocks["SVIP-Y"]["level"] == "low" and stocks["SVIP-Y"]["label"] == "少量"
    assert stocks["SVIP-M"]["mode"] == "exact" and "level" not in {
        k for k, v in stocks["SVIP-M"].items() if v
    }


def test_category_rules(client: TestClient, admin: dict[str, str]) -> None:
    _ok(client.post("/api/admin/categories", json={"slug": "a", "name": "A"}, headers=admin), 201)
    _ok(
        client.post(
            "/api/admin/categories", json={"slug": "b", "name": "B", "parent": "a"}, headers=admin
        ),
        201,
    )
    r = client.patch("/api/admin/categories/a", json={"parent": "b"}, headers=admin)
    assert r.status_code == 422 and "under itself" in r.json()["detail"]
    r = client.delete("/api/admin/categories/a", headers=admin)
    assert r.status_code == 409 and "sub-categories" in r.json()["detail"]
    r = client.post("/api/admin/categories", json={"slug": "a", "name": "again"}, headers=admin)
    assert r.status_code == 409
    r = client.post("/api/admin/categories", json={"slug": "Bad Slug", "name": "x"}, headers=admin)
    assert r.status_code == 422 and r.json()["where"] == "slug"
    _ok(client.patch("/api/admin/categories/b", json={"move_to_root": True}, headers=admin))
    _ok(client.delete("/api/admin/categories/b", headers=admin), 204)


def test_admin_api_needs_a_valid_token(
    client: TestClient, admin: dict[str, str], shop: fulfilment.Shop
) -> None:
    for headers in ({}, {"Authorization": "Bearer kami_nope"}, {"Authorization": "Basic x"}):
        r = client.get("/api/admin/skus", headers=headers)
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    with shop.db.write() as s:
        assert accounts.revoke_token(s, admin["Authorization"].split()[1])
    assert client.get("/api/admin/skus", headers=admin).status_code == 401


def test_upload_stock_and_order_detail(
    client: TestClient, admin: dict[str, str], shop: fulfilment.Shop
) -> None:
    _ok(client.post("/api/admin/categories", json={"slug": "c", "name": "C"}, headers=admin), 201)
    _ok(
        client.post(
            "/api/admin/products", json={"slug": "p", "category": "c", "name": "P"}, headers=admin
        ),
        201,
    )
    _ok(
        client.post(
            "/api/admin/skus",
            headers=admin,
            json={
                "code": "UP-1",
                "product": "p",
                "name": "n",
                "price_minor": 500,
                "low_stock_threshold": 1,
            },
        ),
        201,
    )
    content = b"KEY-0001\nKEY-0002\nKEY-0001\n\nbad\x01line\nKEY-0003\n"
    report = _ok(
        client.post(
            "/api/admin/skus/UP-1/keys",
            headers=admin,
            files={"file": ("keys.txt", content, "text/plain")},
            data={
                "supplier": "acme",
                "unit_cost": "3.20",
                "expires_at": "2099-01-01T00:00:00+08:00",
            },
        ),
        201,
    )
    assert report["imported"] == 3 and report["duplicates_in_file"] == 1
    assert report["duplicate_lines_in_file"] == [3]
    assert report["invalid_lines"] == [{"line": 5, "reason": "card contains a control character"}]
    bad = client.post(
        "/api/admin/skus/UP-1/keys",
        headers=admin,
        files={"file": ("k.txt", b"X-1\n", "text/plain")},
        data={"unit_cost": "1.234"},
    )
    assert bad.status_code == 422 and bad.json()["where"] == "unit_cost"

    o = place(shop, "UP-1", 2).order
    fulfilment.handle_notification(shop, raw_notification(sandbox_body(o.order_no, 1000)))
    (stock,) = _ok(client.get("/api/admin/stock?sku=UP-1", headers=admin))  # type: ignore[misc]
    assert stock["available"] == 1 and stock["low"] is True
    (batch,) = stock["batches"]
    assert batch["supplier"] == "acme" and batch["unit_cost_minor"] == 320 and batch["sold"] == 2

    found = _ok(client.get("/api/admin/orders", params={"status": "delivered"}, headers=admin))
    assert [x["order_no"] for x in found] == [o.order_no]  # type: ignore[index]
    detail = _ok(client.get(f"/api/admin/orders/{o.order_no}", headers=admin))
    assert [i["masked"] for i in detail["items"]] == ["KE*-**01", "KE*-**02"]  # type: ignore[index]
    assert "KEY-0001" not in str(detail) and "KEY-0002" not in str(detail)
    events = [e["event"] for e in detail["timeline"]]  # type: ignore[index]
    assert events[:4] == ["created", "notification_accepted", "paid", "keys_claimed"]
    _ok(client.post(f"/api/admin/orders/{o.order_no}/redeliver", headers=admin))
    jobs = _ok(client.get("/api/admin/jobs", headers=admin))
    assert len(jobs) == 2  # type: ignore[arg-type]


def test_admin_password_check(shop: fulfilment.Shop) -> None:
    from kami.kernel.errors import Unauthorized

    with shop.db.write() as s:
        accounts.create_admin(s, "finance1", "long enough password", accounts.Role.FINANCE)
    with shop.db.read() as s:
        assert accounts.check_password(s, "finance1", "long enough password").role == "finance"
        for user, pw in [("finance1", "wrong password!"), ("nobody", "long enough password")]:
            with pytest.raises(Unauthorized):
                accounts.check_password(s, user, pw)


def test_imports_at_once_are_capped_and_their_slots_given_back(
    client: TestClient,
    admin: dict[str, str],
    shop: fulfilment.Shop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One import more than the process runs at once is refused at once with a clear problem;
    a slot comes back when its import ends, whether it succeeded or failed."""
    make_sku(shop, "CAP-1")
    monkeypatch.setattr(IMPORTS, "limit", 1)
    real = fulfilment.import_and_serve

    def upload(content: bytes) -> Any:
        return client.post(
            "/api/admin/skus/CAP-1/keys",
            headers=admin,
            files={"file": ("keys.txt", content, "text/plain")},
        )

    entered, release = hold_imports(monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(upload, b"CAP-0001\n")
        assert entered.wait(30)
        refused = upload(b"CAP-0002\n")
        release.set()
        assert first.result().status_code == 201
    assert refused.status_code == 429
    problem = refused.json()
    assert problem["type"] == "/problems/imports-busy" and problem["where"] == "file"
    assert "already running 1 key import," in problem["detail"]

    def broken(*_args: Any, **_kwargs: Any) -> vault.ImportReport:
        raise InvalidInput("nothing to import", where="file")

    monkeypatch.setattr(fulfilment, "import_and_serve", broken)
    assert upload(b"CAP-0003\n").status_code == 422
    monkeypatch.setattr(fulfilment, "import_and_serve", real)
    assert _ok(upload(b"CAP-0004\n"), 201)["imported"] == 1
    with shop.db.read() as s:
        assert vault.count_available(s) == {catalog.get_sku(s, "CAP-1").id: 2}
