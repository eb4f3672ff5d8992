"""Storefront pages without a browser: languages and their catalogs, CSRF, cookies, escaping,
and the order look-up by e-mail and one-time code (through a real SMTP server on loopback)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient

from kami import bootstrap, catalog, fulfilment
from kami.config import Settings, SmtpConfig
from kami.web import i18n
from kami.web.app import create_app
from kami.web.storefront import lookup_codes
from tests.browser.seed import EVIL, EVIL_INPUT, Seeded, seed
from tests.conftest import Inbox, open_flash_sale, place

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["/", "/p/evil-vip", "/p/plain-card", "/checkout/EVIL-MONTH", "/lookup", "/orders/KX1"]
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _catalog(locale: str) -> Any:
    with open(i18n.catalog_path(locale), "rb") as f:
        return read_po(f, locale=locale)


def _extracted() -> set[str]:
    method_map = [
        ("kami/web/storefront/**.py", "python"),
        ("kami/web/storefront/templates/**.html", "jinja2"),
        ("kami/web/console/**.py", "python"),
        ("kami/web/console/templates/**.html", "jinja2"),
    ]
    ids = set()
    for _file, _line, message, _comments, _ctx in extract_from_dir(
        str(ROOT), method_map, keywords={"_": None, "gettext": None, "N_": None, "ngettext": (1, 2)}
    ):
        ids.add(message if isinstance(message, str) else message[0])
    return ids


def test_catalogs_cover_every_message_in_both_languages() -> None:
    """Walks the catalogs: every message in the code and templates is in both, translated,
    with the same placeholders, and neither keeps a message the code no longer has."""
    used = _extracted()
    assert len(used) > 50
    for locale in i18n.LOCALES:
        cat = _catalog(locale)
        ids = {m.id if isinstance(m.id, str) else m.id[0] for m in cat if m.id}
        assert used - ids == set(), f"{locale} lacks {sorted(used - ids)}"
        assert ids - used == set(), f"{locale} keeps unused {sorted(ids - used)}"
        for m in cat:
            if not m.id:
                continue
            strings = [m.string] if isinstance(m.string, str) else list(m.string)
            assert all(strings) and not m.fuzzy, f"{locale}: {m.id!r} is untranslated"
            source = m.id if isinstance(m.id, str) else m.id[-1]
            for s in strings:
                assert set(PLACEHOLDER.findall(s)) == set(PLACEHOLDER.findall(source)), m.id


@pytest.fixture
def seeded(shop: fulfilment.Shop) -> Seeded:
    return seed(shop)


def _untranslated(html: str, locale: str) -> list[str]:
    """The other language's words left in a page: msgids in a zh page, zh strings in an en one."""
    left = []
    for m in _catalog("zh_CN"):
        if not m.id or isinstance(m.id, tuple):
            continue
        plain = PLACEHOLDER.split(m.id)[0].strip() if locale == "zh_CN" else None
        if locale == "zh_CN":
            if plain and len(plain) > 3 and plain != m.string and f">{plain}<" in html:
                left.append(m.id)
        else:
            zh = PLACEHOLDER.split(m.string)[0].strip()
            if len(zh) > 1 and zh in html:
                left.append(m.string)
    return left


@pytest.mark.parametrize("locale", ["zh_CN", "en"])
def test_every_page_renders_in_both_languages(
    client: TestClient, seeded: Seeded, locale: str
) -> None:
    for path in PAGES:
        page = client.get(path, params={"lang": locale})
        assert page.status_code == 200, (path, page.text[:500])
        assert f'<html lang="{i18n.HTML_LANG[locale]}">' in page.text
        assert _untranslated(page.text, locale) == [], path
    # The choice sticks in a cookie; money is formatted per locale.
    home = client.get("/").text
    assert ("¥19.90 起" if locale == "zh_CN" else "from CN¥19.90") in home


def _csrf(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert match
    return match.group(1)


def test_every_form_needs_its_csrf_token(client: TestClient, seeded: Seeded) -> None:
    token = _csrf(client, "/checkout/EVIL-MONTH")
    order = {"email": "a@example.com", "quantity": "1", "gateway": "sandbox"}
    order["input.account"] = "acc"
    forms = ["/checkout/EVIL-MONTH", "/lookup", "/lookup/verify", "/pay/sandbox/KX1/confirm"]
    for path in forms:
        for given in (None, "x" * 32):
            data = dict(order) | ({"csrf_token": given} if given else {})
            r = client.post(path, data=data, follow_redirects=False)
            assert r.status_code == 403 and r.json()["type"].endswith("csrf-failed"), path
    # Another site can make the browser send the cookie, but cannot read it into the form.
    client.cookies.clear()
    r = client.post("/checkout/EVIL-MONTH", data=order | {"csrf_token": token})
    assert r.status_code == 403
    token = _csrf(client, "/checkout/EVIL-MONTH")
    r = client.post(
        "/checkout/EVIL-MONTH", data=order | {"csrf_token": token}, follow_redirects=False
    )
    assert r.status_code == 303 and re.match(r"/pay/sandbox/K\w+#t=[\w-]+$", r.headers["location"])


def test_cookies_are_httponly_samesite_and_secure_over_https(
    container: bootstrap.Container, seeded: Seeded
) -> None:
    with TestClient(create_app(container, worker=False)) as c:
        cookies = c.get("/?lang=en").headers.get_list("set-cookie")
    assert {x.split("=")[0] for x in cookies} == {"kami_device", "kami_csrf", "kami_lang"}
    for cookie in cookies:
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    container.shop.public_url = "https://shop.example"
    with TestClient(create_app(container, worker=False)) as c:
        page = c.get("/")
    assert all("Secure" in x for x in page.headers.get_list("set-cookie"))
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_hostile_texts_and_buyer_input_are_escaped(client: TestClient, seeded: Seeded) -> None:
    escaped = EVIL.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
    for path in ["/", "/p/evil-vip", "/checkout/EVIL-MONTH"]:
        page = client.get(path).text
        assert EVIL not in page and "<script>window" not in page and escaped in page, path
    token = _csrf(client, "/checkout/EVIL-MONTH")
    # A refused form shows the buyer's input again: as a value, never as markup.
    r = client.post(
        "/checkout/EVIL-MONTH",
        data={
            "csrf_token": token,
            "email": EVIL_INPUT,
            "gateway": "sandbox",
            "input.account": EVIL_INPUT,
        },
    )
    assert r.status_code == 422
    assert EVIL_INPUT not in r.text and "<svg" not in r.text
    assert 'value="&#34;&gt;&lt;svg onload=&#34;window.__pwned=1&#34;&gt;"' in r.text
    # The JSON the order page reads is data; its script writes it with textContent only.
    script = (ROOT / "kami/web/storefront/static/shop.js").read_text()
    assert "innerHTML" not in script.replace("never innerHTML", "")
    assert "insertAdjacentHTML" not in script and "document.write" not in script


# -- order look-up by e-mail and one-time code ----------------------------------------------
@pytest.fixture
def mail_client(
    settings: Settings, smtp: tuple[Inbox, int]
) -> Iterator[tuple[TestClient, Inbox, fulfilment.Shop]]:
    inbox, port = smtp
    mail = SmtpConfig(host="127.0.0.1", port=port, security="none", sender="shop@example.com")
    container = bootstrap.build(settings.model_copy(update={"smtp": mail}))
    try:
        with TestClient(create_app(container, worker=False)) as c:
            yield c, inbox, container.shop
    finally:
        container.close()


def _buy(client: TestClient, email: str) -> tuple[str, str]:
    token = _csrf(client, "/checkout/GAME-50")
    r = client.post(
        "/checkout/GAME-50",
        data={"csrf_token": token, "email": email, "gateway": "sandbox", "quantity": "1"},
        follow_redirects=False,
    )
    no, access = re.findall(r"/pay/sandbox/(\w+)#t=([\w-]+)", r.headers["location"])[0]
    return no, access


def _ask_code(client: TestClient, email: str) -> str:
    r = client.post("/lookup", data={"csrf_token": _csrf(client, "/lookup"), "email": email})
    assert r.status_code == 200 and 'id="code-sent"' in r.text
    ticket = re.search(r'name="ticket" value="([^"]+)"', r.text)
    assert ticket
    return ticket.group(1)


def _verify(client: TestClient, email: str, ticket: str, code: str) -> httpx.Response:
    data = {"csrf_token": _csrf(client, "/lookup"), "email": email, "ticket": ticket, "code": code}
    return client.post("/lookup/verify", data=data)


def test_lookup_finds_orders_whatever_the_case_of_the_address(
    mail_client: tuple[TestClient, Inbox, fulfilment.Shop],
) -> None:
    client, inbox, shop = mail_client
    seed(shop)
    no, access = _buy(client, "Mixed.Case@Example.COM")
    ticket = _ask_code(client, "mixed.case@example.com")
    body = inbox.messages[-1].get_payload(decode=True).decode()  # type: ignore[union-attr]
    code = re.search(r"\b(\d{6})\b", body).group(1)  # type: ignore[union-attr]
    found = _verify(client, "MIXED.case@example.com", ticket, code)
    assert f'href="/orders/{no}#t={access}"' in found.text


def test_lookup_needs_the_code_sent_to_the_address(
    mail_client: tuple[TestClient, Inbox, fulfilment.Shop],
) -> None:
    client, inbox, shop = mail_client
    seed(shop)
    no, access = _buy(client, "buyer@example.com")
    # An address alone shows nothing, and one without orders gets the same page and no mail.
    ticket = _ask_code(client, "nobody@example.com")
    assert inbox.messages == []
    assert no not in _verify(client, "nobody@example.com", ticket, "000000").text

    ticket = _ask_code(client, "buyer@example.com")
    assert len(inbox.messages) == 1 and inbox.messages[0]["To"] == "buyer@example.com"
    body = inbox.messages[0].get_payload(decode=True).decode()  # type: ignore[union-attr]
    code = re.search(r"\b(\d{6})\b", body).group(1)  # type: ignore[union-attr]
    with shop.db.read() as s:  # neither the address nor the code is stored
        rows = s.query(lookup_codes.LookupCode).all()
        assert len(rows) == 2
        for row in rows:
            stored = b"".join([row.email_fp, row.code_fp, row.ticket.encode()])
            assert code.encode() not in stored and b"buyer@" not in stored
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    assert no not in _verify(client, "buyer@example.com", ticket, wrong).text
    assert no not in _verify(client, "other@example.com", ticket, code).text  # not its ticket
    found = _verify(client, "buyer@example.com", ticket, code)
    assert found.headers["cache-control"] == "no-store"
    assert f'href="/orders/{no}#t={access}"' in found.text
    # The API honours the listed link's token.
    api = client.get(f"/api/v1/orders/{no}", headers={"Authorization": f"Bearer {access}"})
    assert api.status_code == 200
    # One use only.
    assert no not in _verify(client, "buyer@example.com", ticket, code).text


def test_a_code_allows_five_guesses_and_addresses_get_three_codes_an_hour(
    mail_client: tuple[TestClient, Inbox, fulfilment.Shop],
) -> None:
    client, inbox, shop = mail_client
    seed(shop)
    no, _ = _buy(client, "buyer@example.com")
    ticket = _ask_code(client, "buyer@example.com")
    body = inbox.messages[-1].get_payload(decode=True).decode()  # type: ignore[union-attr]
    code = re.search(r"\b(\d{6})\b", body).group(1)  # type: ignore[union-attr]
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(lookup_codes.MAX_GUESSES):
        assert _verify(client, "buyer@example.com", ticket, wrong).status_code == 422
    assert no not in _verify(client, "buyer@example.com", ticket, code).text  # locked now
    _ask_code(client, "buyer@example.com")
    _ask_code(client, "buyer@example.com")
    r = client.post(
        "/lookup", data={"csrf_token": _csrf(client, "/lookup"), "email": "buyer@example.com"}
    )
    assert r.status_code == 429 and 'id="code-sent"' not in r.text


def test_a_flash_sale_is_shown_before_and_while_it_sells(
    client: TestClient, shop: fulfilment.Shop, seeded: Seeded
) -> None:
    """The product and checkout pages, and the JSON catalog: a coming sale says its price and
    start; a selling one its price beside the usual one, what is left, its end and the limit;
    once its quota is gone the SKU is sold out there, whatever the keys in stock."""
    code = seeded.plain_sku
    with shop.db.read() as s:
        product = catalog.get_sku(s, code).product_slug
    open_flash_sale(shop, code, quota=1, start=timedelta(hours=1), end=timedelta(hours=2))
    page = client.get(f"/p/{product}", params={"lang": "en", "sku": code}).text
    assert "Flash sale at CN¥0.99 from" in page and 'id="buy-link"' in page
    # Its start in the shop's time zone (KAMI_TIMEZONE, by default Asia/Shanghai), said so.
    with shop.db.read() as s:
        coming = catalog.get_sku_on_sale(s, code)[1]
    assert coming is not None
    local = coming.starts_at.astimezone(shop.timezone).strftime("%Y-%m-%d %H:%M")
    assert f"from {local} (UTC+08:00)" in page
    shop.timezone = UTC  # a shop that keeps UTC
    page = client.get(f"/p/{product}", params={"lang": "zh_CN", "sku": code}).text
    assert f"{coming.starts_at.strftime('%Y-%m-%d %H:%M')}（UTC）开始" in page
    [sku] = [s for s in _skus(client) if s["code"] == code]
    assert sku["flash_sale"]["selling"] is False and sku["flash_sale"]["remaining"] == 1
    open_flash_sale(shop, code, quota=1, start=timedelta(minutes=-1), end=timedelta(hours=2))
    for path in (f"/p/{product}", f"/checkout/{code}"):
        page = client.get(path, params={"lang": "zh_CN", "sku": code}).text
        assert "¥0.99" in page and "剩余 1" in page and "每人限购 1" in page, path
        assert _untranslated(page, "zh_CN") == [], path
    place(shop, code, email="first@example.com")
    page = client.get(f"/p/{product}", params={"lang": "en", "sku": code}).text
    assert "0 left" in page and 'id="buy-link"' not in page and "Sold out" in page
    [sku] = [s for s in _skus(client) if s["code"] == code]
    assert sku["flash_sale"] == {**sku["flash_sale"], "selling": True, "remaining": 0}


def _skus(client: TestClient) -> Iterator[dict[str, Any]]:
    def walk(cats: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for cat in cats:
            for product in cat["products"]:
                yield from product["skus"]
            yield from walk(cat["children"])

    return walk(client.get("/api/v1/catalog").json())
