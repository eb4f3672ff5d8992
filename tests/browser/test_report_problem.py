"""After-sales from the order page, in a real browser: the buyer reports a key that does not
work, with a note, and is told it went to the seller; the item shows its validity."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.conftest import Server


def test_buyer_reports_an_invalid_key_from_the_order_page(phone: Page, server: Server) -> None:
    page = phone
    page.goto(server.base + "/p/plain-card?lang=en")
    page.get_by_role("link", name="Buy 50 points").click()
    page.get_by_label("E-mail (the order link is sent here)").fill("report@example.com")
    page.get_by_role("button", name="Place order and pay").click()
    page.get_by_role("button", name="Pay CN¥5.00").click()
    expect(page.locator("#order-status")).to_have_text("Delivered")
    item = page.locator("#order-items li").first
    expect(item.locator(".valid-until")).to_contain_text("valid until")
    item.get_by_text("Report a problem").click()
    item.get_by_label("Problem", exact=True).select_option("key_invalid")
    item.get_by_label("What went wrong (optional)").fill("<b>says already used</b>")
    item.get_by_role("button", name="Send report").click()
    expect(page.locator("#order-notice")).to_have_text(
        "Sent to the seller for review; you will get an e-mail."
    )
    assert page.evaluate("document.querySelectorAll('b').length") == 0
