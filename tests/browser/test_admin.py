"""The admin console in a real browser: sign-in with TOTP, key import with its report, the
dashboard changing, a pasted key found, a refund; an operator refused a refund by the server."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from kami import accounts, fulfilment, orders, payments
from kami.accounts.totp import b32decode, code_at, step_of
from tests.browser.conftest import Server
from tests.browser.seed import EVIL
from tests.conftest import raw_notification, sandbox_body

PASSWORD = "correct horse battery"
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture
def desk(browser: Browser) -> Iterator[Page]:
    """A desktop browser in Chinese; fails the test on a script error or a CSP violation."""
    context = browser.new_context(viewport=DESKTOP, locale="zh-CN")
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    yield page
    context.close()
    assert not errors, f"script errors or CSP violations in the page: {errors}"


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("KAMI_SCREENSHOTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def make_admin(shop: fulfilment.Shop, name: str, role: accounts.Role) -> None:
    with shop.db.write() as s:
        accounts.create_admin(s, name, PASSWORD, role)


def paid_order(shop: fulfilment.Shop, sku: str) -> str:
    placed = fulfilment.place_order(
        shop, orders.OrderIn(sku=sku, quantity=1, email="buyer@example.com", gateway="sandbox")
    )
    order = placed.order
    with shop.db.write() as s:
        trade = payments.record_sandbox_trade(s, order.order_no, order.amount_minor, "CNY")
    body = sandbox_body(order.order_no, order.amount_minor, trade_no=trade)
    fulfilment.handle_notification(shop, raw_notification(body))
    return order.order_no


def sign_in(page: Page, base: str, name: str, code: str = "") -> None:
    page.goto(f"{base}/admin/login")
    page.locator("#username").fill(name)
    page.locator("#password").fill(PASSWORD)
    if code:
        page.locator("#code").fill(code)
    page.locator("form.stack button[type=submit]").click()
    expect(page.locator("#undelivered")).to_be_visible()


def test_owner_signs_in_with_2fa_imports_keys_finds_one_and_refunds(
    desk: Page, server: Server, shop: fulfilment.Shop
) -> None:
    page, base = desk, server.base
    make_admin(shop, "boss", accounts.Role.OWNER)
    sign_in(page, base, "boss")

    # Enrol: the page shows the secret and the otpauth:// link; the first code confirms it.
    page.goto(f"{base}/admin/2fa")
    page.get_by_role("button", name="设置两步验证").click()
    secret = page.locator("#totp-secret").inner_text()
    expect(page.locator("#totp-uri")).to_contain_text("otpauth://totp/")
    page.locator("#code").fill(accounts.totp_now(secret))
    page.get_by_role("button", name="开启两步验证").click()
    expect(page.locator("#totp-on")).to_be_visible()
    page.get_by_role("button", name="退出登录").click()
    expect(page.locator("#username")).to_be_visible()

    # Without the code the password alone is refused; with it, the console opens.
    page.locator("#username").fill("boss")
    page.locator("#password").fill(PASSWORD)
    page.locator("form.stack button[type=submit]").click()
    expect(page.locator(".error")).to_have_text("两步验证码错误或已用过。")
    code = code_at(b32decode(secret), step_of(datetime.now(UTC)) + 1)  # a step not used yet
    sign_in(page, base, "boss", code)

    # The dashboard: EVIL-MONTH has one key, below its alert level; nothing sold today.
    expect(page.locator("#stock-alerts")).to_contain_text("EVIL-MONTH")
    expect(page.locator("#orders-today")).to_have_text("0")

    # Import: 12 good keys, a repeated one, two bad lines reported by their numbers.
    lines = [f"IMPORTED-{n:04d}-ZX" for n in range(1, 13)]
    content = "\n".join([*lines[:5], "BAD\x01LINE", *lines[5:], lines[0], "TAB\x02"]) + "\n"
    page.goto(f"{base}/admin/keys")
    page.locator("#import-sku").select_option("EVIL-MONTH")
    page.locator("#file").set_input_files(
        files=[{"name": "batch.txt", "mimeType": "text/plain", "buffer": content.encode()}]
    )
    page.locator("#supplier").fill("Acme " + EVIL[:30])
    page.locator("#import-form button[type=submit]").click()
    expect(page.locator("#import-report")).to_be_visible()
    # The script uploaded it (with its progress bar) and swapped the report in: no navigation.
    expect(page).to_have_url(f"{base}/admin/keys")
    expect(page.locator("#import-progress")).to_have_count(1)
    expect(page.locator("#imported")).to_have_text("12")
    expect(page.locator("#bad-count")).to_have_text("2")
    expect(page.locator("#bad-lines tbody tr td.num")).to_have_text(["6", "15"])
    expect(page.locator("#sku-EVIL-MONTH .stock-count")).to_have_text("13")
    assert page.evaluate("window.__pwned") is None

    # The dashboard changes: the alert is gone, and a paid order shows in today's figures.
    order_no = paid_order(shop, "GAME-50")
    page.goto(f"{base}/admin/")
    expect(page.locator("#stock-alerts")).not_to_contain_text("EVIL-MONTH")
    expect(page.locator("#orders-today")).to_have_text("1")
    expect(page.locator("#sales-today")).to_have_text(re.compile(r"¥5\.00"))

    # A pasted key is found by its fingerprint: which SKU, which batch, its status.
    page.goto(f"{base}/admin/keys")
    page.locator("#find-key").fill(lines[6])
    page.get_by_role("button", name="查找", exact=True).click()
    expect(page.locator("#find-result .key-status")).to_have_text("available")
    expect(page.locator("#find-result")).to_contain_text("EVIL-MONTH")

    # Refund the paid order from its page.
    page.goto(f"{base}/admin/orders/{order_no}?lang=en")
    expect(page.locator("#order-status")).to_have_text("Delivered")
    page.locator("#reason").fill("buyer asked")
    page.locator("#keys").select_option("void")
    page.locator("#refund-form button[type=submit]").click()
    expect(page.locator("#done")).to_be_visible()
    expect(page.locator("#order-status")).to_have_text("Refunded")
    expect(page.locator("tr.refund")).to_have_count(1)


def test_an_operator_is_refused_a_refund_by_the_server(
    desk: Page, server: Server, shop: fulfilment.Shop
) -> None:
    page, base = desk, server.base
    order_no = paid_order(shop, "GAME-50")
    make_admin(shop, "ops", accounts.Role.OPERATOR)
    sign_in(page, base, "ops")
    page.goto(f"{base}/admin/orders/{order_no}")
    expect(page.locator("#order-status")).to_be_visible()
    expect(page.locator("#refund-form")).to_have_count(0)  # not offered …
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    # … and refused when the form is posted anyway, with the operator's own session and token.
    answer = page.request.post(
        f"{base}/admin/orders/{order_no}/refund",
        form={"csrf_token": token, "reason": "sneaky", "refund_key": "k1", "keys": "keep"},
        max_redirects=0,
    )
    assert answer.status == 403, answer.text()
    assert "may not move money" in answer.text()
    page.reload()
    expect(page.locator("#order-status")).to_have_text("已发货")
    assert fulfilment.list_order_refunds(shop, order_no) == []


def test_a_flash_sale_set_in_the_console_sells_at_its_price(
    desk: Page, server: Server, shop: fulfilment.Shop
) -> None:
    """The SKU's page: a flash sale set through its form in the browser (the window typed in
    the shop's time zone into datetime-local fields) is the one a checkout then gets; a bad
    window is refused with what was wrong, and nothing changes."""
    page, base = desk, server.base
    make_admin(shop, "boss", accounts.Role.OWNER)
    sign_in(page, base, "boss")
    page.goto(f"{base}/admin/catalog/skus/GAME-50")
    expect(page.locator("#no-flash-sale")).to_be_visible()
    now = datetime.now(shop.timezone)
    starts, ends = now - timedelta(minutes=2), now + timedelta(hours=1)
    page.locator("#starts_at").fill(starts.strftime("%Y-%m-%dT%H:%M"))
    page.locator("#ends_at").fill(ends.strftime("%Y-%m-%dT%H:%M"))
    page.locator("#sale_price").fill("0.50")
    page.locator("#quota").fill("2")
    page.locator("#flash-sale-form button[type=submit]").click()
    expect(page.locator("#flash-sale")).to_contain_text("0 / 2")
    placed = fulfilment.place_order(
        shop, orders.OrderIn(sku="GAME-50", quantity=1, email="fan@example.com", gateway="sandbox")
    )
    assert placed.order.amount_minor == 50
    page.reload()
    expect(page.locator("#flash-sale")).to_contain_text("1 / 2")
    # An end before the start: refused, saying so; the sale stays as it was.
    page.locator("#ends_at").fill((starts - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    page.locator("#flash-sale-form button[type=submit]").click()
    expect(page.locator("body")).to_contain_text("ends_at must be after starts_at")
    page.goto(f"{base}/admin/catalog/skus/GAME-50")
    expect(page.locator("#flash-sale")).to_contain_text("1 / 2")


@pytest.mark.parametrize("lang", ["zh_CN", "en"])
def test_screenshots_of_the_console(
    desk: Page, plain_server: Server, shop: fulfilment.Shop, lang: str, tmp_path: Path
) -> None:
    page, base, out = desk, plain_server.base, _shots(tmp_path)
    tag = "zh" if lang == "zh_CN" else "en"
    make_admin(shop, "owner", accounts.Role.OWNER)
    order_no = paid_order(shop, "VIP-MONTH")
    paid_order(shop, "VIP-YEAR")

    def shot(name: str) -> None:
        page.screenshot(path=str(out / f"console-{name}-{tag}.png"), full_page=True)

    page.goto(f"{base}/admin/login?lang={lang}")
    shot("login")
    sign_in(page, base, "owner")
    for name, path in [
        ("dashboard", "/admin/"),
        ("catalog", "/admin/catalog"),
        ("keys", "/admin/keys"),
        ("orders", "/admin/orders"),
        ("order", f"/admin/orders/{order_no}"),
        ("jobs", "/admin/jobs?status="),
        ("settings", "/admin/settings"),
    ]:
        page.goto(base + path)
        expect(page.locator("h1")).to_be_visible()
        shot(name)
