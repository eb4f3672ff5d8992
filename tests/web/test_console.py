"""The admin console without a browser: every page in both languages, the catalogs, CSRF,
roles enforced by the server, hostile texts shown as text, TOTP, sessions and sign-out."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from babel.messages.extract import extract_from_dir
from fastapi.testclient import TestClient
from sqlalchemy import select

from kami import accounts, catalog, fulfilment, orders, payments
from kami.accounts.models import AdminTotp
from kami.accounts.totp import b32decode, code_at, step_of
from kami.web import i18n
from tests.browser.seed import EVIL, EVIL_INPUT, EVIL_KEY, Seeded
from tests.conftest import BACKEND, raw_notification, run_async, sandbox_body
from tests.web.conftest import PASSWORD, asgi_scope, csrf, make_admin, sign_in
from tests.web.test_storefront import PLACEHOLDER, _catalog, _untranslated

ROOT = Path(__file__).resolve().parents[2]


# -- helpers -----------------------------------------------------------------------------------
def post(client: TestClient, path: str, data: dict[str, str] | None = None) -> object:
    token = client.cookies.get("kami_csrf")
    assert token
    return client.post(path, data={"csrf_token": token, **(data or {})}, follow_redirects=False)


def paid_order(shop: fulfilment.Shop, sku: str, buyer_input: dict[str, str] | None = None) -> str:
    placed = fulfilment.place_order(
        shop,
        orders.OrderIn(
            sku=sku,
            quantity=1,
            email="buyer@example.com",
            gateway="sandbox",
            buyer_input=buyer_input,
        ),
    )
    order = placed.order
    with shop.db.write() as s:
        trade = payments.record_sandbox_trade(s, order.order_no, order.amount_minor, "CNY")
    body = sandbox_body(order.order_no, order.amount_minor, trade_no=trade)
    fulfilment.handle_notification(shop, raw_notification(body))
    return order.order_no


def manual_sku(shop: fulfilment.Shop) -> str:
    with shop.db.write() as s:
        catalog.create_sku(
            s,
            catalog.SkuIn(
                code="HAND-1",
                product="plain-card",
                name="By hand",
                price_minor=800,
                delivery_kind=catalog.DeliveryKind.MANUAL,
            ),
        )
    return "HAND-1"


# -- catalogs and languages --------------------------------------------------------------------
def _extracted() -> set[str]:
    method_map = [
        ("kami/web/storefront/**.py", "python"),
        ("kami/web/storefront/templates/**.html", "jinja2"),
        ("kami/web/console/**.py", "python"),
        ("kami/web/console/templates/**.html", "jinja2"),
    ]
    keywords = {"_": None, "gettext": None, "N_": None, "ngettext": (1, 2)}
    return {
        message if isinstance(message, str) else message[0]
        for _f, _l, message, _c, _x in extract_from_dir(str(ROOT), method_map, keywords=keywords)
    }


def test_catalogs_cover_the_console_and_the_storefront_exactly() -> None:
    used = _extracted()
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
            for text in strings:
                assert set(PLACEHOLDER.findall(text)) == set(PLACEHOLDER.findall(source)), m.id


@pytest.mark.parametrize("locale", ["zh_CN", "en"])
def test_every_console_page_renders_in_both_languages(
    owner: TestClient, shop: fulfilment.Shop, seeded: Seeded, locale: str
) -> None:
    order_no = paid_order(shop, seeded.plain_sku)
    pages = [
        "/admin/",
        "/admin/catalog",
        f"/admin/catalog/products/{seeded.product_slug}",
        f"/admin/catalog/skus/{seeded.sku_code}",
        "/admin/keys",
        "/admin/orders",
        "/admin/orders?status=undelivered",
        f"/admin/orders/{order_no}",
        "/admin/jobs",
        "/admin/jobs?status=",
        "/admin/settings",
        "/admin/2fa",
    ]
    for path in pages:
        page = owner.get(path, params={"lang": locale})
        assert page.status_code == 200, (path, page.text[:500])
        assert f'<html lang="{i18n.HTML_LANG[locale]}">' in page.text, path
        assert _untranslated(page.text, locale) == [], path
        assert page.headers["cache-control"] == "no-store"
    login = TestClient(owner.app).get("/admin/login", params={"lang": locale})
    assert _untranslated(login.text, locale) == []
    dashboard = owner.get("/admin/").text
    assert ("已付款未发货" if locale == "zh_CN" else "Paid but not delivered") in dashboard


# -- sessions ------------------------------------------------------------------------------------
def test_pages_need_a_session_and_sign_out_ends_it(owner: TestClient) -> None:
    anonymous = TestClient(owner.app)
    for path in ["/admin/", "/admin/keys", "/admin/orders", "/admin/settings"]:
        r = anonymous.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/admin/login", path
    sid = owner.cookies.get("kami_console")
    assert sid and owner.get("/admin/").status_code == 200
    r = post(owner, "/admin/logout")
    assert r.status_code == 303  # type: ignore[attr-defined]
    assert "kami_console" not in owner.cookies
    # The old cookie, replayed, opens nothing: the session ended on the server.
    replay = TestClient(owner.app, cookies={"kami_console": sid})
    assert replay.get("/admin/", follow_redirects=False).status_code == 303


def test_the_session_cookie_is_httponly_strict_and_stored_hashed(
    client: TestClient, shop: fulfilment.Shop
) -> None:
    make_admin(shop, "boss", accounts.Role.OWNER)
    token = csrf(client)
    r = client.post(
        "/admin/login",
        data={"csrf_token": token, "username": "boss", "password": PASSWORD},
        follow_redirects=False,
    )
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("kami_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/admin" in cookie
    sid = cookie.split(";")[0].split("=", 1)[1]
    with shop.db.read() as s:
        from kami.accounts.models import ConsoleSession

        hashes = [row.session_hash for row in s.execute(select(ConsoleSession)).scalars()]
    assert sid.encode() not in b"".join(hashes) and len(hashes) == 1


def test_an_expired_session_opens_nothing(client: TestClient, shop: fulfilment.Shop) -> None:
    admin = make_admin(shop, "boss", accounts.Role.OWNER)
    with shop.db.write() as s:
        expired = accounts.open_session(s, admin.id, ttl=timedelta(seconds=-1))
        live = accounts.open_session(s, admin.id)
    client.cookies.set("kami_console", expired)
    assert client.get("/admin/", follow_redirects=False).headers["location"] == "/admin/login"
    client.cookies.set("kami_console", live)
    assert client.get("/admin/", follow_redirects=False).status_code == 200


def test_a_wrong_password_is_refused_without_saying_which_part(
    client: TestClient, shop: fulfilment.Shop
) -> None:
    make_admin(shop, "boss", accounts.Role.OWNER)
    token = csrf(client)
    for name, password in [("boss", "wrong password!"), ("nobody", PASSWORD)]:
        r = client.post(
            "/admin/login",
            data={"csrf_token": token, "username": name, "password": password, "lang": "en"},
            params={"lang": "en"},
        )
        assert r.status_code == 401 and "Wrong username or password." in r.text
    assert "kami_console" not in client.cookies


# -- CSRF and roles --------------------------------------------------------------------------------
def test_every_console_form_needs_its_csrf_token(
    owner: TestClient, shop: fulfilment.Shop, seeded: Seeded
) -> None:
    order_no = paid_order(shop, seeded.plain_sku)
    forms = [
        ("/admin/login", {"username": "boss", "password": PASSWORD}),
        ("/admin/logout", {}),
        ("/admin/2fa/begin", {}),
        ("/admin/catalog/categories", {"slug": "x", "name": "X"}),
        (f"/admin/catalog/skus/{seeded.plain_sku}", {"name": "changed"}),
        (f"/admin/catalog/skus/{seeded.plain_sku}/flash-sale", {"quota": "1"}),
        ("/admin/keys/find", {"key": "PLAIN-0001-0002-0003"}),
        (f"/admin/orders/{order_no}/refund", {"reason": "r", "refund_key": "k"}),
        (f"/admin/orders/{order_no}/redeliver", {}),
        ("/admin/jobs/1/retry", {}),
    ]
    for path, data in forms:
        for token in (None, "x" * 32):
            body = data if token is None else data | {"csrf_token": token}
            r = owner.post(path, data=body, follow_redirects=False)
            assert r.status_code == 403, (path, token, r.text[:300])
            assert "CSRF" in r.text
    with shop.db.read() as s:
        assert orders.get_order(s, order_no).status == "delivered"
        assert fulfilment.list_order_refunds(shop, order_no) == []


def test_an_operator_may_not_refund_even_by_posting_the_form(
    client: TestClient, shop: fulfilment.Shop, seeded: Seeded
) -> None:
    order_no = paid_order(shop, seeded.plain_sku)
    make_admin(shop, "ops", accounts.Role.OPERATOR)
    sign_in(client, "ops")
    page = client.get(f"/admin/orders/{order_no}").text
    assert 'id="refund-form"' not in page  # not offered …
    with shop.db.read() as s:
        paid_at = orders.get_order(s, order_no).paid_at
    assert paid_at is not None  # shown in the shop's time zone, with its offset
    assert f"<dd>{paid_at.astimezone(shop.timezone).isoformat(timespec='seconds')}</dd>" in page
    assert "+08:00</dd>" in page and "+00:00" not in page
    r = post(client, f"/admin/orders/{order_no}/refund", {"reason": "x", "refund_key": "abc"})
    assert r.status_code == 403 and "may not move money" in r.text  # type: ignore[attr-defined]
    assert fulfilment.list_order_refunds(shop, order_no) == []  # … and refused


def test_finance_refunds_once_however_often_the_form_is_sent(
    client: TestClient, shop: fulfilment.Shop, seeded: Seeded
) -> None:
    order_no = paid_order(shop, seeded.plain_sku)
    make_admin(shop, "money", accounts.Role.FINANCE)
    sign_in(client, "money")
    page = client.get(f"/admin/orders/{order_no}").text
    key = re.search(r'name="refund_key" value="([^"]+)"', page)
    assert key
    form = {"reason": "buyer asked", "refund_key": key.group(1), "keys": "void", "amount": ""}
    for _ in range(2):
        r = post(client, f"/admin/orders/{order_no}/refund", form)
        assert r.status_code == 303, r.text  # type: ignore[attr-defined]
    refunds = fulfilment.list_order_refunds(shop, order_no)
    assert len(refunds) == 1 and refunds[0].requested_by == "money"
    assert "refunded" in client.get(f"/admin/orders/{order_no}", params={"lang": "en"}).text


def test_an_unexpected_failure_is_a_page_and_only_its_type_is_logged(
    owner: TestClient,
    shop: fulfilment.Shop,
    seeded: Seeded,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    order_no = paid_order(shop, seeded.plain_sku)

    def broken(*_args: object) -> None:
        raise RuntimeError("KEY-SECRET-0001 was in the message")

    monkeypatch.setattr(fulfilment, "redeliver", broken)
    r = post(owner, f"/admin/orders/{order_no}/redeliver")
    assert r.status_code == 500  # type: ignore[attr-defined]
    assert r.headers["content-type"].startswith("text/html")  # type: ignore[attr-defined]
    assert "the error was logged" in r.text  # type: ignore[attr-defined]
    assert "console POST /admin/orders/{order_no}/redeliver failed: RuntimeError" in caplog.text
    assert "KEY-SECRET" not in caplog.text + r.text  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/admin/login", "/lookup"])
def test_a_csrf_token_that_is_not_ascii_is_refused_like_any_wrong_one(
    client: TestClient, path: str
) -> None:
    client.get("/admin/login")  # the CSRF cookie
    r = client.post(path, data={"csrf_token": "é", "username": "x", "password": "y"})
    assert r.status_code == 403, r.text[:300]


def test_when_even_the_error_page_fails_a_bare_page_answers_and_the_log_has_types_only(
    owner: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The session cannot be read (the database is down, say): the dependency fails, and the
    error page, which reads the session too, fails again."""

    def down(*_args: object) -> None:
        raise RuntimeError("KEY-SECRET-0003 was in the message")

    monkeypatch.setattr(accounts, "session_admin", down)
    r = owner.get("/admin/")
    assert r.status_code == 500 and 'id="main"' in r.text
    assert "console GET /admin/ failed: RuntimeError" in caplog.text
    assert "console error page for internal failed: RuntimeError" in caplog.text
    assert "KEY-SECRET" not in caplog.text + r.text


def test_a_browser_gone_mid_upload_is_not_a_failure(
    owner: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    request = owner.build_request(
        "POST",
        "/admin/keys/import",
        data={"csrf_token": owner.cookies.get("kami_csrf"), "sku": "x"},
        files={"file": ("keys.txt", b"K-1\n" * 1000, "text/plain")},
    )
    body = request.read()
    scope = asgi_scope(request)
    statuses: list[int] = []

    async def scene() -> None:
        parts = [body[: len(body) // 2]]

        async def receive() -> dict[str, object]:
            if parts:
                return {"type": "http.request", "body": parts.pop(), "more_body": True}
            return {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        await owner.app(scope, receive, send)

    run_async(scene)
    assert statuses == [400]
    assert "failed" not in caplog.text


def test_only_the_owner_reads_signing_secrets(
    client: TestClient, shop: fulfilment.Shop, seeded: Seeded
) -> None:
    make_admin(shop, "money", accounts.Role.FINANCE)
    sign_in(client, "money")
    r = post(client, f"/admin/catalog/skus/{seeded.plain_sku}/webhook-secret")
    assert r.status_code == 403 and "signing secrets" in r.text  # type: ignore[attr-defined]


# -- hostile texts ---------------------------------------------------------------------------------
def test_keys_and_buyer_input_made_of_html_are_shown_as_text(
    owner: TestClient, shop: fulfilment.Shop, seeded: Seeded
) -> None:
    order_no = paid_order(shop, seeded.sku_code, {"account": EVIL_INPUT})
    pages = [
        "/admin/",
        "/admin/catalog",
        f"/admin/catalog/products/{seeded.product_slug}",
        f"/admin/catalog/skus/{seeded.sku_code}",
        "/admin/keys",
        "/admin/orders",
        f"/admin/orders/{order_no}",
    ]
    for path in pages:
        html = owner.get(path).text
        for hostile in (EVIL, EVIL_INPUT, EVIL_KEY, "<script>", "<svg onload", 'id="evil"'):
            assert hostile not in html, (path, hostile)
    detail = owner.get(f"/admin/orders/{order_no}").text
    assert "&#34;&gt;&lt;svg onload=&#34;window.__pwned=1&#34;&gt;" in detail
    found = post(owner, "/admin/keys/find", {"key": EVIL_KEY})
    assert found.status_code == 200  # type: ignore[attr-defined]
    text = found.text  # type: ignore[attr-defined]
    assert order_no in text and 'id="evil"' not in text and "&lt;b" in text


# -- keys ------------------------------------------------------------------------------------------
def test_import_reports_bad_lines_and_a_pasted_key_is_found(
    owner: TestClient, seeded: Seeded
) -> None:
    token = owner.cookies.get("kami_csrf")
    content = b"GOOD-AAAA-0001\n\nGOOD-AAAA-0002\nGOOD-AAAA-0001\nbad\x00line\n"
    r = owner.post(
        "/admin/keys/import",
        data={"csrf_token": token, "sku": seeded.plain_sku, "supplier": "Acme <b>"},
        files={"file": ("keys <i>.txt", content, "text/plain")},
    )
    assert r.status_code == 200, r.text[:500]
    assert re.search(r'id="imported">2<', r.text)
    assert re.search(r'id="bad-count">1<', r.text)
    assert re.search(r'<tr><td class="num">5</td><td>[^<]*control character', r.text)
    assert "Acme &lt;b&gt;" in r.text and "keys &lt;i&gt;.txt" in r.text
    found = post(owner, "/admin/keys/find", {"key": "GOOD-AAAA-0002"}).text  # type: ignore[attr-defined]
    assert 'class="key-status">available<' in found
    missing = post(owner, "/admin/keys/find", {"key": "NOT-THERE"}).text  # type: ignore[attr-defined]
    assert 'id="not-found"' in missing


def test_on_sqlite_the_keys_page_says_that_writes_wait_for_an_import(owner: TestClient) -> None:
    page = owner.get("/admin/keys").text
    assert ('id="import-writer-note"' in page) == (BACKEND == "sqlite")


# -- two-factor ------------------------------------------------------------------------------------
def test_rfc_6238_vectors() -> None:
    secret = b"12345678901234567890"
    assert code_at(secret, 59 // 30) == "287082"  # RFC 6238 SHA-1 94287082, last 6 digits
    assert code_at(secret, 1111111109 // 30) == "081804"
    assert code_at(secret, 1234567890 // 30) == "005924"


def test_enrol_then_sign_in_with_a_code_once(
    owner: TestClient, shop: fulfilment.Shop, client: TestClient
) -> None:
    assert post(owner, "/admin/2fa/begin").status_code == 303  # type: ignore[attr-defined]
    page = owner.get("/admin/2fa").text
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page)
    assert secret and "otpauth://totp/" in page
    bad = post(owner, "/admin/2fa/confirm", {"code": "000000"})
    assert bad.status_code == 422  # type: ignore[attr-defined]
    r = post(owner, "/admin/2fa/confirm", {"code": accounts.totp_now(secret.group(1))})
    assert r.status_code == 303  # type: ignore[attr-defined]
    assert 'id="totp-on"' in owner.get("/admin/2fa").text
    # The secret is sealed: not in the row as text or bytes.
    with shop.db.read() as s:
        sealed = s.execute(select(AdminTotp.sealed)).scalar_one()
    assert b32decode(secret.group(1)) not in sealed
    assert secret.group(1).encode() not in sealed

    fresh = TestClient(owner.app)
    token = csrf(fresh)
    form = {"csrf_token": token, "username": "boss", "password": PASSWORD}
    assert fresh.post("/admin/login", data=form).status_code == 401  # the code is needed
    # The enrolment used this step's code; the next step's is fresh.
    now = datetime.now(UTC)
    code = code_at(b32decode(secret.group(1)), step_of(now) + 1)
    r = fresh.post("/admin/login", data=form | {"code": code}, follow_redirects=False)
    assert r.status_code == 303
    again = TestClient(owner.app)
    token = csrf(again)
    r = again.post("/admin/login", data=form | {"csrf_token": token, "code": code})
    assert r.status_code == 401  # a code works once


def test_reset_2fa_lets_the_admin_in_with_the_password_again(
    owner: TestClient, shop: fulfilment.Shop, monkeypatch: pytest.MonkeyPatch, settings: object
) -> None:
    post(owner, "/admin/2fa/begin")
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', owner.get("/admin/2fa").text)
    assert secret
    post(owner, "/admin/2fa/confirm", {"code": accounts.totp_now(secret.group(1))})
    from kami.cli import admincmd
    from kami.config import Settings

    assert isinstance(settings, Settings)
    monkeypatch.setenv("KAMI_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("KAMI_MASTER_KEY", settings.master_key.get_secret_value())  # type: ignore[union-attr]
    admincmd.reset_2fa("boss")
    with shop.db.read() as s:
        assert not accounts.totp_enabled(s, 1)
    sign_in(TestClient(owner.app), "boss")


# -- dashboard ---------------------------------------------------------------------------------
def test_the_dashboard_counts_sales_and_undelivered_orders(
    owner: TestClient, shop: fulfilment.Shop, seeded: Seeded
) -> None:
    before = owner.get("/admin/", params={"lang": "en"}).text
    assert re.search(r'id="orders-today">0<', before)
    paid_order(shop, seeded.plain_sku)
    paid_order(shop, seeded.plain_sku)
    manual = manual_sku(shop)
    waiting = paid_order(shop, manual)  # paid, its line waits for an operator
    after = owner.get("/admin/", params={"lang": "en"}).text
    assert re.search(r'id="orders-today">3<', after)
    assert "CN¥18.00" in after
    assert re.search(r'id="undelivered"[^>]*>\s*<h2>[^<]*</h2>\s*<p class="big">1<', after)
    stuck = owner.get("/admin/orders", params={"status": "undelivered"}).text
    assert stuck.count('href="/admin/orders/K') == 1
    with shop.db.read() as s:
        days = orders.sales_by_day(s, datetime.now(UTC), 30, timedelta(hours=8))
    assert len(days) == 30 and days[-1].orders == 3 and days[-1].amounts == {"CNY": 1800}
    assert all(d.orders == 0 for d in days[:-1])
    assert GAME_ALERT in after  # GAME-50 has no stock left, at or below its threshold of 1
    # The operator delivers it by hand from the order's page; the count drops.
    page = owner.get(f"/admin/orders/{waiting}").text
    line = re.search(r'action="(/admin/orders/[^"]+/lines/\d+/deliver)"', page)
    assert line
    assert post(owner, line.group(1), {"goods": "ACCOUNT <b>x</b>"}).status_code == 303  # type: ignore[attr-defined]
    final = owner.get("/admin/").text
    assert re.search(r'id="undelivered"[^>]*>\s*<h2>[^<]*</h2>\s*<p class="big">0<', final)


GAME_ALERT = 'href="/admin/keys#sku-GAME-50"'


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's writer")
def test_signing_in_waits_for_the_writer_without_holding_up_the_event_loop(
    client: TestClient, shop: fulfilment.Shop
) -> None:
    """A console form's write waits for SQLite's writer on a worker thread: while another
    writer (an import, say) holds it, the process goes on answering other requests."""
    make_admin(shop, "waiting-owner", accounts.Role.OWNER)
    held = threading.Event()

    def hold() -> None:
        with shop.db.write():
            held.set()
            time.sleep(2)

    async def scene() -> tuple[int, bool, int]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as ac:
            page = await ac.get("/admin/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
            assert token
            form = {"csrf_token": token.group(1), "username": "waiting-owner", "password": PASSWORD}
            holder.start()
            assert held.wait(5)
            login = asyncio.create_task(ac.post("/admin/login", data=form))
            await asyncio.sleep(0.1)  # the sign-in is waiting for the writer
            health = await ac.get("/healthz")
            answered_while_held = holder.is_alive()
            return health.status_code, answered_while_held, (await login).status_code

    holder = threading.Thread(target=hold)
    try:
        health, while_held, login = run_async(scene)
    finally:
        holder.join(10)
    assert health == 200 and while_held
    assert login == 303  # signed in once the writer was free


# -- flash sales -----------------------------------------------------------------------------------
def test_a_flash_sale_is_set_and_shown_on_the_skus_page(
    owner: TestClient, shop: fulfilment.Shop, seeded: Seeded
) -> None:
    path = f"/admin/catalog/skus/{seeded.plain_sku}"
    assert 'id="no-flash-sale"' in owner.get(path).text
    # Typed in the shop's time zone (KAMI_TIMEZONE, by default Asia/Shanghai), as it says.
    assert shop.timezone == ZoneInfo("Asia/Shanghai")
    now = datetime.now(shop.timezone)
    window = {
        "starts_at": (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M"),
        "ends_at": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
    }
    form = window | {
        "sale_price": "0.99",
        "quota": "3",
        "per_buyer_limit": "",
        "reservation_minutes": "",
    }
    r = post(owner, f"{path}/flash-sale", form)
    assert r.status_code == 303, r.text  # type: ignore[attr-defined]
    with shop.db.read() as s:
        sale = catalog.get_sku_on_sale(s, seeded.plain_sku)[1]
    assert sale is not None
    assert (sale.price_minor, sale.quota, sale.per_buyer_limit, sale.reservation_minutes) == (
        99,
        3,
        1,
        5,
    )
    starts = datetime.fromisoformat(window["starts_at"]).replace(tzinfo=shop.timezone)
    assert sale.starts_at == starts and sale.starts_at.utcoffset() == timedelta(0)  # kept in UTC
    page = owner.get(path, params={"lang": "en"}).text
    assert "0 of 3 sold or held" in page and f'value="{window["ends_at"]}"' in page
    assert "Starts (UTC+08:00)" in page and "Window (UTC+08:00)" in page
    assert "时间（UTC+08:00）" in owner.get(path, params={"lang": "zh_CN"}).text
    # Bad input names its field and changes nothing.
    for field, value, said in (
        ("ends_at", "tomorrow", "is not a date and time"),
        ("per_buyer_limit", "0", "per_buyer_limit"),
        ("quota", "many", "is not a whole number"),
    ):
        bad = post(owner, f"{path}/flash-sale", form | {field: value})
        assert bad.status_code == 422 and said in bad.text, field  # type: ignore[attr-defined]
    with shop.db.read() as s:
        assert catalog.get_sku_on_sale(s, seeded.plain_sku)[1] == sale
