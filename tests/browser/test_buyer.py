"""A buyer on a phone, in a real browser (Debian's chromium): browse, check out, pay in the
sandbox, watch the order deliver itself, reveal and copy the key."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Server
from tests.browser.seed import EVIL, EVIL_INPUT, EVIL_KEY


def _shots(tmp_path: Path) -> Path:
    """`make screenshots` points this at docs/screenshots; otherwise they go to tmp_path."""
    out = Path(os.environ.get("KAMI_SCREENSHOTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _not_pwned(page: Page) -> None:
    assert page.evaluate("window.__pwned") is None
    expect(page.locator("#evil")).to_have_count(0)


def test_buyer_pays_in_sandbox_and_reveals_a_hostile_key_as_text(
    phone: Page, server: Server
) -> None:
    page = phone
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.base)
    page.goto(server.base + "/")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    # Hostile catalog texts are shown as text, not run or rendered as markup.
    expect(page.get_by_role("heading", name="视频会员 " + EVIL)).to_be_visible()
    expect(page.get_by_text("¥19.90 起")).to_be_visible()
    _not_pwned(page)

    page.get_by_role("link", name=re.compile(r"^VIP ")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("VIP " + EVIL)
    expect(page.get_by_text("发货后 31 天内有效")).to_be_visible()
    expect(page.get_by_text("redeem " + EVIL)).to_be_visible()
    expect(page.get_by_text("库存 1")).to_be_visible()
    _not_pwned(page)

    page.get_by_role("link", name=re.compile("^购买")).click()
    expect(page.get_by_role("heading", name="结算")).to_be_visible()
    page.get_by_label("邮箱（订单链接将发送到这里）").fill("buyer@example.com")
    page.get_by_label(re.compile("^Account ")).fill(EVIL_INPUT)
    expect(page.get_by_role("radio", name="沙箱（测试支付）")).to_be_checked()
    page.get_by_role("button", name="提交订单并支付").click()

    expect(page.get_by_role("heading", name="沙箱支付")).to_be_visible()
    assert "#t=" in page.url
    page.get_by_role("button", name=re.compile("^支付 ")).click()

    # The order page updates by itself until delivery.
    expect(page).to_have_url(re.compile(r"/orders/K\w+#t="))
    expect(page.locator("#order-status")).to_have_text("已发货")
    item = page.locator("#order-items li").first
    secret = item.locator(".secret")
    expect(secret).not_to_have_text(EVIL_KEY)  # masked until revealed
    expect(page.locator("#redemption")).to_have_text("redeem " + EVIL)
    item.get_by_role("button", name=re.compile("^显示")).click()
    expect(secret).to_have_text(EVIL_KEY)
    _not_pwned(page)

    copy = item.get_by_role("button", name=re.compile("^复制"))
    copy.click()
    expect(copy).to_have_text("已复制")
    assert page.evaluate("navigator.clipboard.readText()") == EVIL_KEY

    # The address bar's fragment is the only credential: without it the page shows nothing.
    page.goto(page.url.split("#")[0])
    page.evaluate("localStorage.clear()")
    page.reload()
    expect(page.locator("#order-error")).to_contain_text("缺少访问令牌")
    expect(page.locator("#order-items li")).to_have_count(0)


def test_keyboard_checkout_in_english(phone: Page, server: Server) -> None:
    """Every control is reachable by keyboard and labelled; English is one click away."""
    page = phone
    page.goto(server.base + "/p/plain-card")
    page.get_by_role("link", name="English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_text("Valid for 1 day after delivery")).to_be_visible()
    expect(page.get_by_text("In stock")).to_be_visible()
    page.get_by_role("link", name="Buy 50 points").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Checkout")).to_be_visible()
    page.get_by_label("E-mail (the order link is sent here)").focus()
    page.keyboard.type("not-an-address")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("Enter a valid e-mail address.")
    page.get_by_label("E-mail (the order link is sent here)").fill("buyer@example.com")
    page.get_by_label("Quantity").fill("2")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Sandbox payment")).to_be_visible()
    expect(page.locator(".amount")).to_have_text("CN¥10.00")
    page.get_by_role("button", name="Pay CN¥10.00").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#order-status")).to_have_text("Delivered")
    expect(page.locator("#order-items li")).to_have_count(2)
    expect(page.locator("#validity")).to_have_text("Validity: 1 days")


@pytest.mark.parametrize("lang", ["zh_CN", "en"])
def test_screenshots_of_the_main_pages(
    phone: Page, plain_server: Server, lang: str, tmp_path: Path
) -> None:
    page, base, out = phone, plain_server.base, _shots(tmp_path)
    tag = "zh" if lang == "zh_CN" else "en"

    def shot(name: str) -> None:
        page.screenshot(path=str(out / f"{name}-{tag}.png"), full_page=True)

    page.goto(f"{base}/?lang={lang}")
    expect(page.locator(".product-card")).to_have_count(1)
    shot("home")
    page.locator(".product-card a").click()
    expect(page.locator("#buy-link")).to_be_visible()
    shot("product")
    page.locator("#buy-link").click()
    page.locator("#email").fill("buyer@example.com")
    shot("checkout")
    page.locator("form.checkout button[type=submit]").click()
    expect(page.locator("#pay-button")).to_be_enabled()
    shot("pay-sandbox")
    page.locator("#pay-button").click()
    expect(page.locator("#order-items li")).to_have_count(1)
    page.locator("#order-items li .reveal").click()
    expect(page.locator("#order-items li .secret")).to_have_text(re.compile(r"^VIP-MONTH-"))
    shot("order")
    page.goto(f"{base}/lookup")
    shot("lookup")
