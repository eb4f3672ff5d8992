"""Files sold as downloads, end to end through the sandbox channel, on both databases: the
item shows the file's name, the reveal gives a signed link, downloads are counted up to the
limit (also when they race), and expired, forged and taken-back links are refused."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from kami import bootstrap, catalog, delivery, fulfilment, orders
from kami.delivery.models import Download, DownloadEvent
from kami.fulfilment.goods.downloads import (
    LinkGone,
    LinkRefused,
    check_download_sku,
    download_secret,
    open_download,
)
from kami.kernel.clock import utcnow
from kami.kernel.errors import InvalidInput, KamiError
from kami.worker.runner import run_once
from tests.conftest import add_keys, make_sku
from tests.fulfilment.test_goods import buy, goods_sku, status

CONTENT = b"%PDF-1.7 the seller's guide\n" + bytes(range(256)) * 64


@pytest.fixture
def files_dir(tmp_path: Path) -> Path:
    return tmp_path / "files"


def stored_file(
    shop: fulfilment.Shop, files_dir: Path, content: bytes = CONTENT, name: str = "guide.pdf"
) -> str:
    sha, size = delivery.write_blob(files_dir, [content[:1000], content[1000:]], 10**7)
    with shop.db.write() as s:
        return delivery.add_file(s, sha, name, size, "application/pdf", utcnow()).id


def download_sku(
    shop: fulfilment.Shop, files_dir: Path, code: str = "EBOOK", **config: object
) -> str:
    file_id = stored_file(shop, files_dir)
    goods_sku(shop, code, "download", config={"file": file_id, **config})
    return file_id


def links(shop: fulfilment.Shop, order_no: str) -> list[tuple[str, int, str]]:
    """(token, exp, sig) of each revealed download link, in item order."""
    token = orders.access_token(shop.token_secret(), order_no)
    _, items = fulfilment.reveal(shop, order_no, token, ip=None, user_agent=None)
    out = []
    for item in items:
        if item.kind != "download":
            continue
        url = urlsplit(item.card)
        assert url.path.startswith("/d/") and item.password is None
        query = parse_qs(url.query)
        out.append((url.path[3:], int(query["exp"][0]), query["sig"][0]))
    return out


def fetch(shop: fulfilment.Shop, files_dir: Path, link: tuple[str, int, str]) -> bytes:
    grant = open_download(shop, files_dir, *link, utcnow(), ip="203.0.113.7")
    return grant.path.read_bytes()


def counted(shop: fulfilment.Shop, token: str) -> tuple[int, int]:
    """(the item's download count, its recorded download events)."""
    with shop.db.read() as s:
        count = s.execute(select(Download.downloads).where(Download.token == token)).scalar_one()
        events = s.execute(
            select(func.count())
            .select_from(DownloadEvent)
            .join(Download, Download.id == DownloadEvent.download_id)
            .where(Download.token == token)
        ).scalar_one()
    return count, events


def test_reveal_gives_a_link_and_downloads_stop_at_the_limit(
    shop: fulfilment.Shop, files_dir: Path
) -> None:
    download_sku(shop, files_dir, max_downloads=2, link_minutes=30)
    no = buy(shop, "EBOOK", quantity=2)
    assert status(shop, no) == "delivered"
    token = orders.access_token(shop.token_secret(), no)
    _, items = fulfilment.buyer_view(shop, no, token)
    assert [(i.position, i.masked, i.kind) for i in items] == [
        (1, "guide.pdf", "download"),
        (2, "guide.pdf", "download"),
    ]
    first, second = links(shop, no)
    assert first[0] != second[0]  # one token per unit, each with its own count
    now = utcnow().timestamp()
    assert now + 29 * 60 < first[1] <= now + 30 * 60 + 1
    assert fetch(shop, files_dir, first) == CONTENT
    assert fetch(shop, files_dir, first) == CONTENT
    with pytest.raises(LinkGone) as limit:
        fetch(shop, files_dir, first)
    assert limit.value.slug == "download-limit-reached" and limit.value.status == 410
    assert counted(shop, first[0]) == (2, 2)  # the refused one was not counted
    assert fetch(shop, files_dir, second) == CONTENT  # the other unit has its own downloads
    with shop.db.read() as s:
        times = delivery.download_times(s, first[0])
    assert [ip for _, ip in times] == ["203.0.113.7", "203.0.113.7"]
    # A new reveal gives a new expiry, not new downloads.
    again = links(shop, no)[0]
    with pytest.raises(LinkGone):
        fetch(shop, files_dir, again)


def test_expired_forged_and_foreign_links_are_refused(
    shop: fulfilment.Shop, files_dir: Path
) -> None:
    download_sku(shop, files_dir)
    token, exp, sig = links(shop, buy(shop, "EBOOK"))[0]
    other, other_exp, other_sig = links(shop, buy(shop, "EBOOK", email="b@example.com"))[0]
    secret = download_secret(shop)
    past = int((utcnow() - timedelta(seconds=1)).timestamp())
    expired = (token, past, delivery.link_signature(secret, token, past))
    with pytest.raises(LinkGone) as gone:
        fetch(shop, files_dir, expired)
    assert gone.value.slug == "download-link-expired"
    later = exp + 3600  # stretching the expiry breaks the signature
    forged: list[tuple[str, int, str]] = [
        (token, exp, sig[:-1] + ("0" if sig[-1] != "0" else "1")),
        (token, later, sig),
        (token, exp, other_sig),  # another item's signature
        (other, other_exp, sig),
        (token, exp, ""),
        (token, exp, sig.upper()),
        (token + "x", exp, sig),
    ]
    for link in forged:
        with pytest.raises(LinkRefused) as refused:
            fetch(shop, files_dir, link)
        assert refused.value.status == 403 and refused.value.slug == "download-link-invalid"
    assert counted(shop, token) == (0, 0)
    assert fetch(shop, files_dir, (token, exp, sig)) == CONTENT  # the real link still works


@pytest.mark.parametrize("keys", ["void", "keep"])
def test_a_refund_ends_the_link(shop: fulfilment.Shop, files_dir: Path, keys: str) -> None:
    download_sku(shop, files_dir)
    no = buy(shop, "EBOOK")
    link = links(shop, no)[0]
    assert fetch(shop, files_dir, link) == CONTENT
    fulfilment.request_refund(
        shop, no, amount_minor=None, reason="changed mind", request_key="r1", keys=keys
    )
    assert status(shop, no) == "refunded"
    with pytest.raises(LinkGone) as gone:
        fetch(shop, files_dir, link)
    assert gone.value.slug == "download-withdrawn"
    assert counted(shop, link[0]) == (1, 1)


def test_a_withdrawn_item_of_a_partly_refunded_order_stops(
    shop: fulfilment.Shop, files_dir: Path
) -> None:
    download_sku(shop, files_dir, max_downloads=3)
    no = buy(shop, "EBOOK", quantity=2)
    first, second = links(shop, no)
    fulfilment.request_refund(
        shop, no, amount_minor=500, reason="one unit", request_key="r1", keys="void", positions=[1]
    )
    assert status(shop, no) == "partially_refunded"
    with pytest.raises(LinkGone) as gone:
        fetch(shop, files_dir, first)
    assert gone.value.slug == "download-withdrawn"
    assert fetch(shop, files_dir, second) == CONTENT
    assert [link[0] for link in links(shop, no)] == [second[0]]  # only the live item


def test_parallel_downloads_never_pass_the_limit(shop: fulfilment.Shop, files_dir: Path) -> None:
    download_sku(shop, files_dir, max_downloads=3)
    link = links(shop, buy(shop, "EBOOK"))[0]
    threads_n = 12
    barrier = threading.Barrier(threads_n)
    served: list[bytes] = []
    refused: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait()
        try:
            body = fetch(shop, files_dir, link)
        except KamiError as exc:
            with lock:
                refused.append(exc.slug)
        else:
            with lock:
                served.append(body)

    threads = [threading.Thread(target=attempt) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(served) == 3 and all(b == CONTENT for b in served)
    assert refused == ["download-limit-reached"] * (threads_n - 3)
    assert counted(shop, link[0]) == (3, 3)


def test_a_missing_blob_is_refused_without_counting(shop: fulfilment.Shop, files_dir: Path) -> None:
    download_sku(shop, files_dir, max_downloads=1)
    link = links(shop, buy(shop, "EBOOK"))[0]
    (blob,) = [p for p in files_dir.iterdir() if not p.name.startswith(".")]
    saved = blob.read_bytes()
    blob.unlink()
    with pytest.raises(LinkGone) as gone:
        fetch(shop, files_dir, link)
    assert gone.value.slug == "download-file-missing"
    assert counted(shop, link[0]) == (0, 0)
    blob.write_bytes(saved)
    assert fetch(shop, files_dir, link) == CONTENT


def test_settings_and_the_file_are_checked(shop: fulfilment.Shop, files_dir: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"file": "x" * 20, "link_minutes": 0}, "delivery_config.link_minutes"),
        ({"file": "x" * 20, "link_minutes": 10081}, "delivery_config.link_minutes"),
        ({"file": "x" * 20, "max_downloads": 1001}, "delivery_config.max_downloads"),
        ({"file": "../../etc/passwd"}, "delivery_config.file"),
        ({}, "delivery_config.file"),
    ]
    for n, (bad, where) in enumerate(cases):
        with pytest.raises(InvalidInput) as exc:
            goods_sku(shop, f"BAD{n}", "download", config=bad)
        assert exc.value.where == where
    with shop.db.write() as s:  # the defaults filled in
        sku = catalog.create_sku(
            s,
            catalog.SkuIn(
                code="DEFAULTS",
                product="p-bad0-base",
                name="d",
                price_minor=100,
                delivery_kind=catalog.DeliveryKind.DOWNLOAD,
                delivery_config={"file": "x" * 20},
            ),
        )
    assert sku.delivery_config == {"file": "x" * 20, "link_minutes": 60, "max_downloads": 5}
    file_id = stored_file(shop, files_dir)
    with shop.db.read() as s:
        check_download_sku(s, "download", {"file": file_id})
        check_download_sku(s, "card_key", {})
        with pytest.raises(InvalidInput) as unknown:
            check_download_sku(s, "download", {"file": "N0SUCHFILE0000000000"})
    assert unknown.value.where == "delivery_config.file"


def test_a_sku_whose_file_is_gone_fails_and_is_refunded(
    container: bootstrap.Container, shop: fulfilment.Shop
) -> None:
    goods_sku(shop, "LOST", "download", config={"file": "N0SUCHFILE0000000000"})
    no = buy(shop, "LOST")
    assert status(shop, no) == "failed"
    parts = fulfilment.buyer_parts(shop, orders_id(shop, no))
    assert parts[0].status is delivery.LineStatus.FAILED and "is gone" in (parts[0].detail or "")
    run_once(container, sweep=False)  # the refund job
    assert status(shop, no) == "refunded"


def orders_id(shop: fulfilment.Shop, order_no: str) -> int:
    with shop.db.read() as s:
        return orders.get_order(s, order_no).id


def test_file_names_are_cleaned_and_uploads_capped(tmp_path: Path) -> None:
    assert delivery.clean_name("../../etc/passwd") == "passwd"
    assert delivery.clean_name("C:\\Users\\me\\报告.pdf") == "报告.pdf"
    assert delivery.clean_name("a\x00b\u202ec.txt") == "abc.txt"
    assert delivery.clean_name("..") == "download"
    assert delivery.clean_name("") == "download"
    long = delivery.clean_name("x" * 300 + ".zip")
    assert len(long) == 200 and long.endswith(".zip")
    assert delivery.clean_content_type("text/html; charset=utf-8") == "text/html"
    assert delivery.clean_content_type("nonsense") == "application/octet-stream"
    files = tmp_path / "files"
    with pytest.raises(delivery.TooLarge):
        delivery.write_blob(files, [b"a" * 600, b"b" * 600], 1000)
    with pytest.raises(InvalidInput):
        delivery.write_blob(files, [], 1000)
    assert list(files.iterdir()) == []  # nothing half-written left behind
    sha, size = delivery.write_blob(files, [b"same"], 1000)
    assert delivery.write_blob(files, [b"sa", b"me"], 1000) == (sha, size)
    assert [p.name for p in files.iterdir()] == [sha]


def test_a_bundle_delivers_a_key_and_a_download_together(
    shop: fulfilment.Shop, files_dir: Path
) -> None:
    add_keys(shop, make_sku(shop, "KEYS"), ["GAME-KEY-0001"])
    download_sku(shop, files_dir)
    parts = [
        {"sku": "KEYS", "quantity": 1, "share_minor": 1000},
        {"sku": "EBOOK", "quantity": 1, "share_minor": 500},
    ]
    goods_sku(shop, "PACK", "bundle", price=1500, config={"components": parts})
    no = buy(shop, "PACK")
    assert status(shop, no) == "delivered"
    token = orders.access_token(shop.token_secret(), no)
    _, items = fulfilment.buyer_view(shop, no, token)
    assert [(i.kind, i.masked == "guide.pdf") for i in items] == [
        ("key", False),
        ("download", True),
    ]
    _, revealed = fulfilment.reveal(shop, no, token, ip=None, user_agent=None)
    key, download = revealed
    assert (key.position, key.card, key.kind) == (1, "GAME-KEY-0001", "key")
    assert (download.position, download.kind, download.name) == (2, "download", "guide.pdf")
    assert download.downloads_left == 5 and download.expires_at is not None
    assert fetch(shop, files_dir, links(shop, no)[0]) == CONTENT
