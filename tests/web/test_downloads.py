"""Downloads over HTTP, on both databases: the admin uploads a file, a buyer's order shows it
by name, the reveal answers a signed link, `GET /d/…` streams the bytes as an attachment up
to the limit, and expired, forged or refunded links get a problem and no bytes."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from kami import accounts, delivery, fulfilment, orders
from kami.config import Settings
from kami.fulfilment.goods.downloads import download_secret
from kami.kernel.clock import utcnow
from tests.fulfilment.test_goods import buy, goods_sku
from tests.web.test_admin_refunds import token_for

CONTENT = b"PK\x03\x04 a zipped course\n" + bytes(range(256)) * 512  # 128 KiB and a bit
CAP = 256 * 1024


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"files_dir": tmp_path / "files", "files_max_bytes": CAP})


def upload(
    client: TestClient, headers: dict[str, str], content: bytes, name: str
) -> httpx.Response:
    response: httpx.Response = client.post(
        "/api/admin/files",
        files={"file": (name, content, "application/zip")},
        headers=headers,
    )
    return response


def bought(
    client: TestClient, shop: fulfilment.Shop, **config: object
) -> tuple[str, dict[str, str]]:
    ops = token_for(shop, "ops", accounts.Role.OPERATOR)
    r = upload(client, ops, CONTENT, "课程 course.zip")
    assert r.status_code == 201, r.text
    goods_sku(shop, "COURSE", "download", config={"file": r.json()["id"], **config})
    no = buy(shop, "COURSE")
    token = orders.access_token(shop.token_secret(), no)
    return no, {"Authorization": f"Bearer {token}"}


def reveal_link(client: TestClient, no: str, auth: dict[str, str]) -> str:
    r = client.post(f"/api/v1/orders/{no}/reveal", headers=auth)
    assert r.status_code == 200, r.text
    (item,) = r.json()["items"]
    url = urlsplit(item["card"])
    assert url.scheme == "http" and url.netloc == "testserver"
    return f"{url.path}?{url.query}"


def problem_type(r: httpx.Response) -> str:
    assert r.headers["content-type"] == "application/problem+json"
    assert r.content.find(CONTENT[:16]) < 0
    return str(r.json()["type"])


def test_upload_buy_reveal_and_download(client: TestClient, shop: fulfilment.Shop) -> None:
    no, auth = bought(client, shop, max_downloads=2)
    order = client.get(f"/api/v1/orders/{no}", headers=auth).json()
    assert order["status"] == "delivered"
    assert [i["masked"] for i in order["items"]] == ["课程 course.zip"]
    link = reveal_link(client, no, auth)
    r = client.get(link, headers={"Range": "bytes=0-9"})  # ranges are not offered
    assert r.status_code == 200 and r.content == CONTENT
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"__ course.zip\"; filename*=UTF-8''%E8%AF%BE%E7%A8%8B%20course.zip"
    )
    assert r.headers["x-downloads-left"] == "1"
    assert client.get(link).content == CONTENT
    third = client.get(link)
    assert third.status_code == 410
    assert problem_type(third) == "/problems/download-limit-reached"


def test_forged_and_expired_links_get_no_bytes(client: TestClient, shop: fulfilment.Shop) -> None:
    no, auth = bought(client, shop)
    link = reveal_link(client, no, auth)
    path, query = link.split("?")
    token = path.removeprefix("/d/")
    sig = query.split("sig=")[1]
    bad = "0" * 64 if sig != "0" * 64 else "1" * 64
    r = client.get(f"{path}?{query.replace(sig, bad)}")
    assert r.status_code == 403 and problem_type(r) == "/problems/download-link-invalid"
    r = client.get(f"{path}?exp=99999999999&sig={sig}")
    assert r.status_code == 403
    past = int((utcnow() - timedelta(minutes=1)).timestamp())
    signed = delivery.link_signature(download_secret(shop), token, past)
    r = client.get(f"{path}?exp={past}&sig={signed}")
    assert r.status_code == 410 and problem_type(r) == "/problems/download-link-expired"
    for broken in [path, f"{path}?exp=abc&sig={sig}", "/d/short?exp=1&sig=00"]:
        assert client.get(broken).status_code == 422
    assert client.get(link).content == CONTENT


def test_a_voided_refund_ends_the_link(client: TestClient, shop: fulfilment.Shop) -> None:
    no, auth = bought(client, shop)
    link = reveal_link(client, no, auth)
    boss = token_for(shop, "boss", accounts.Role.OWNER)
    r = client.post(
        f"/api/admin/orders/{no}/refunds",
        json={"reason": "not as described", "keys": "void"},
        headers=boss | {"Idempotency-Key": "refund-1"},
    )
    assert r.status_code == 200, r.text
    gone = client.get(link)
    assert gone.status_code == 410 and problem_type(gone) == "/problems/download-withdrawn"


def test_parallel_downloads_over_http_stay_within_the_limit(
    client: TestClient, shop: fulfilment.Shop
) -> None:
    no, auth = bought(client, shop, max_downloads=2)
    link = reveal_link(client, no, auth)
    barrier = threading.Barrier(8)
    codes: list[int] = []
    lock = threading.Lock()

    def get() -> None:
        barrier.wait()
        r = client.get(link)
        assert r.status_code != 200 or r.content == CONTENT
        with lock:
            codes.append(r.status_code)

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 200] + [410] * 6


def test_files_api_roles_size_and_listing(client: TestClient, shop: fulfilment.Shop) -> None:
    ops = token_for(shop, "ops", accounts.Role.OPERATOR)
    money = token_for(shop, "money", accounts.Role.FINANCE)
    assert upload(client, money, b"x", "a.zip").status_code == 403
    assert client.get("/api/admin/files", headers=money).status_code == 403
    assert client.post("/api/admin/files", files={"file": ("a.zip", b"x")}).status_code == 401
    big = upload(client, ops, b"x" * (CAP + 1), "big.zip")
    assert big.status_code == 413 and problem_type(big) == "/problems/file-too-large"
    empty = upload(client, ops, b"", "empty.zip")
    assert empty.status_code == 422
    r = client.post("/api/admin/files", data={"nofile": "x"}, headers=ops)
    assert r.status_code == 422
    garbled = ops | {"Content-Type": "multipart/form-data; boundary=zz"}
    r = client.post("/api/admin/files", content=b"--zz\r\nnonsense", headers=garbled)
    assert r.status_code in (400, 422) and r.headers["content-type"] == "application/problem+json"
    r = client.post("/api/admin/files", json={"file": "x"}, headers=ops)
    assert r.status_code == 422 and r.json()["where"] == "Content-Type"
    made = upload(client, ops, CONTENT, "../../etc/passwd").json()
    assert made["name"] == "passwd" and made["size"] == len(CONTENT)
    listed = client.get("/api/admin/files", headers=ops).json()
    assert [(f["id"], f["name"], f["created_by"]) for f in listed] == [
        (made["id"], "passwd", "ops")
    ]
    stored = client.app.state.container.settings.files_dir  # type: ignore[attr-defined]
    assert [p.name for p in stored.iterdir()] == [made["sha256"]]  # no temporary file left
