"""After-sales on both databases: a buyer's report replaced from stock once per item, the key
recorded defective in its batch's rate, later reports reviewed (refund of the item's share,
rejection), goods that cannot be replaced from stock, no stock, and the token that guards it."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from kami import accounts, catalog, fulfilment, licenses, orders, payments, vault
from kami.delivery.models import Report
from kami.kernel import outbox
from kami.kernel.errors import Conflict, InvalidInput, Unauthorized
from kami.vault.models import Key
from tests.conftest import add_keys, make_sku, raw_notification, sandbox_body

REPLACE = fulfilment.AftersalesPolicy("replace")
REVIEW = fulfilment.AftersalesPolicy("review")


def buy(shop: fulfilment.Shop, sku: str, quantity: int = 1) -> str:
    placed = fulfilment.place_order(
        shop, orders.OrderIn(sku=sku, quantity=quantity, email="b@example.com", gateway="sandbox")
    )
    no, amount = placed.order.order_no, placed.order.amount_minor
    with shop.db.write() as s:
        trade = payments.record_sandbox_trade(s, no, amount, "CNY")
    fulfilment.handle_notification(shop, raw_notification(sandbox_body(no, amount, trade_no=trade)))
    return no


def token(shop: fulfilment.Shop, order_no: str) -> str:
    return orders.access_token(shop.token_secret(), order_no)


def report(
    shop: fulfilment.Shop,
    order_no: str,
    position: int,
    policy: fulfilment.AftersalesPolicy = REPLACE,
    note: str | None = "the site says the code was used",
) -> fulfilment.ReportView:
    return fulfilment.report_item(
        shop,
        order_no,
        token(shop, order_no),
        position=position,
        problem="key_invalid",
        note=note,
        policy=policy,
    )


def revealed(shop: fulfilment.Shop, order_no: str) -> dict[int, str]:
    _, items = fulfilment.reveal(shop, order_no, token(shop, order_no), ip=None, user_agent=None)
    return {i.position: i.card for i in items}


def key_status(shop: fulfilment.Shop, card: str) -> str:
    """A key's status, found by fingerprint (the vault is never decrypted to search it)."""
    with shop.db.read() as s:
        (found,) = vault.find_key(s, shop.cipher, vault.Secret(card))
    return found.status


def mails(shop: fulfilment.Shop, order_no: str) -> list[dict[str, Any]]:
    with shop.db.read() as s:
        jobs = outbox.list_jobs(s, ref=order_no)
    return [j.payload for j in reversed(jobs) if j.kind == fulfilment.MAIL_JOB]


def mail_text(shop: fulfilment.Shop, payload: dict[str, Any]) -> str:
    with shop.db.read() as s:
        order = orders.get_order(s, str(payload["order_no"]))
    return fulfilment.build_email(shop, order, str(payload["event"]), detail=payload).text


def rates(shop: fulfilment.Shop, sku_id: int) -> list[vault.BatchDefects]:
    with shop.db.read() as s:
        return vault.defect_rates(s, sku_id)


def test_report_is_replaced_once_then_reviewed_and_refunded(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "AS-1", price=1000)
    add_keys(shop, sku, [f"AS1-KEY-{n}" for n in range(4)], supplier="Acme cards")
    no = buy(shop, "AS-1", quantity=2)
    before = revealed(shop, no)
    assert sorted(before) == [1, 2]

    first = report(shop, no, 1)
    assert first.status is fulfilment.ReportStatus.REPLACED
    assert first.resolution == "auto_replace" and first.resolved_by == "auto"
    assert first.replacement_position == 3 and first.resolved_at is not None
    after = revealed(shop, no)
    assert sorted(after) == [2, 3]
    assert after[2] == before[2] and after[3] not in before.values()
    # The bad key is voided (never sold again) and counted against its batch.
    assert key_status(shop, before[1]) == "void"
    assert key_status(shop, after[3]) == "sold"
    (batch,) = rates(shop, sku.id)
    assert (batch.supplier, batch.imported, batch.sold, batch.defective) == ("Acme cards", 4, 3, 1)
    assert batch.replaced == 1 and batch.rate == pytest.approx(1 / 3)
    with shop.db.read() as s:
        (defect,) = vault.list_defects(s, batch=batch.batch)
    assert defect.resolution == "replaced" and defect.replacement_key_id is not None
    assert defect.reason == "key_invalid: the site says the code was used"
    replaced_mail = mails(shop, no)[-1]
    assert replaced_mail["event"] == "aftersales_replaced"
    text = mail_text(shop, replaced_mail)
    assert "Item 1 was replaced by item 3" in text and after[3] not in text

    # The replacement fails too: one automatic replacement per item, so it waits for review.
    second = report(shop, no, 3)
    assert second.status is fulfilment.ReportStatus.OPEN and second.origin_position == 1
    assert second.review_reason == "item 1 was replaced once already"
    assert revealed(shop, no) == after  # nothing moved
    assert mails(shop, no)[-1]["event"] == "aftersales_received"
    with pytest.raises(Conflict) as again:
        report(shop, no, 3)
    assert again.value.slug == "already-reported"

    refunded = fulfilment.refund_reported(shop, second.report_no, "alice", "supplier is out")
    assert refunded.status is fulfilment.ReportStatus.REFUNDED
    assert refunded.refund_minor == 1000 and refunded.resolved_by == "alice"
    with shop.db.read() as s:
        order = orders.get_order(s, no)
        (refund,) = payments.list_refunds(s, order.id)
    assert order.status == "partially_refunded"
    assert (refund.amount_minor, refund.status.value, refund.keys) == (1000, "succeeded", "void")
    assert refunded.refund_no == refund.refund_no
    assert sorted(revealed(shop, no)) == [2]
    assert key_status(shop, after[3]) == "void"
    (batch,) = rates(shop, sku.id)
    assert (batch.defective, batch.replaced, batch.refunded) == (2, 1, 1)
    assert batch.refunded_minor == 1000
    events = [m["event"] for m in mails(shop, no)]
    assert "refunded" in events and events[-1] == "aftersales_refunded"
    assert "Item 3 was refunded: 10.00 CNY goes back" in mail_text(shop, mails(shop, no)[-1])
    with pytest.raises(Conflict) as done:
        fulfilment.reject_report(shop, second.report_no, "bob", "too late")
    assert done.value.slug == "report-resolved"
    # The order's admin timeline tells the story step by step.
    timeline = [
        (e.event, e.detail.get("position")) for e in fulfilment.admin_detail(shop, no).timeline
    ]
    assert ("aftersales_reported", 1) in timeline and ("aftersales_replaced", 1) in timeline
    assert ("aftersales_reported", 3) in timeline and ("aftersales_refunded", 3) in timeline


def test_reviewed_report_is_rejected_with_the_sellers_reason(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "AS-2")
    add_keys(shop, sku, ["AS2-KEY-0", "AS2-KEY-1"])
    no = buy(shop, "AS-2")
    opened = report(shop, no, 1, policy=REVIEW)
    assert opened.status is fulfilment.ReportStatus.OPEN
    assert opened.review_reason == "the shop reviews every report"
    with pytest.raises(InvalidInput):
        fulfilment.reject_report(shop, opened.report_no, "bob", "  ")
    rejected = fulfilment.reject_report(shop, opened.report_no, "bob", "The key was redeemed")
    assert rejected.status is fulfilment.ReportStatus.REJECTED
    assert (rejected.resolution, rejected.resolved_by) == ("reject", "bob")
    assert rejected.resolution_note == "The key was redeemed"
    assert revealed(shop, no) == {1: "AS2-KEY-0"}
    assert key_status(shop, "AS2-KEY-0") == "sold"
    assert rates(shop, sku.id)[0].defective == 0
    last = mails(shop, no)[-1]
    assert last["event"] == "aftersales_rejected"
    assert "The seller says: The key was redeemed" in mail_text(shop, last)
    # A rejected report does not block a new one; a per-SKU policy may replace at once.
    per_sku = fulfilment.AftersalesPolicy("review", {"AS-2": "replace"})
    assert report(shop, no, 1, policy=per_sku).status is fulfilment.ReportStatus.REPLACED


def test_no_stock_goes_to_review_and_changes_nothing(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "AS-3")
    add_keys(shop, sku, ["AS3-ONLY"], supplier="Lone")
    no = buy(shop, "AS-3")
    opened = report(shop, no, 1)
    assert opened.status is fulfilment.ReportStatus.OPEN
    assert opened.review_reason == "no AS-3 keys in stock"
    assert revealed(shop, no) == {1: "AS3-ONLY"} and key_status(shop, "AS3-ONLY") == "sold"
    assert rates(shop, sku.id)[0].defective == 0
    with pytest.raises(Conflict) as empty:
        fulfilment.replace_reported(shop, opened.report_no, "carol")
    assert empty.value.slug == "out-of-stock"
    add_keys(shop, sku, ["AS3-FRESH"], supplier="Second")
    done = fulfilment.replace_reported(shop, opened.report_no, "carol", "new batch arrived")
    assert done.status is fulfilment.ReportStatus.REPLACED and done.resolution == "replace"
    assert revealed(shop, no) == {2: "AS3-FRESH"}
    by_supplier = {b.supplier: b for b in rates(shop, sku.id)}
    assert by_supplier["Lone"].defective == 1 and by_supplier["Lone"].rate == 1.0
    assert by_supplier["Second"].defective == 0 and by_supplier["Second"].sold == 1


def goods_sku(shop: fulfilment.Shop, code: str, kind: str, **config: Any) -> catalog.SkuView:
    base = make_sku(shop, f"{code}-BASE")
    with shop.db.write() as s:
        return catalog.create_sku(
            s,
            catalog.SkuIn(
                code=code,
                product=base.product_slug,
                name=code,
                price_minor=1000,
                delivery_kind=catalog.DeliveryKind(kind),
                delivery_config=config or None,
                max_quantity=10,
            ),
        )


def test_shared_keys_and_licenses_go_to_review(shop: fulfilment.Shop) -> None:
    shared = goods_sku(shop, "AS-ACCT", "reusable_key", max_sales=5, per_buyer_limit=5)
    add_keys(shop, shared, ["shared-account:pass", "spare-account:pass"])
    app = goods_sku(shop, "AS-APP", "license")
    with shop.db.write() as s:
        licenses.set_policy(s, app.id, licenses.PolicyIn(activation_limit=1, product_code="app"))
    for code, why in [
        ("AS-ACCT", "a reusable key is shared by many buyers and not replaced from stock"),
        ("AS-APP", "a license is not replaced from stock"),
    ]:
        no = buy(shop, code)
        held = revealed(shop, no)
        opened = report(shop, no, 1)
        assert opened.status is fulfilment.ReportStatus.OPEN and opened.review_reason == why
        with pytest.raises(Conflict):
            fulfilment.replace_reported(shop, opened.report_no, "carol")
        assert revealed(shop, no) == held
    assert key_status(shop, "shared-account:pass") == "available"  # still everyone's


def test_wrong_token_learns_nothing_and_bad_reports_are_refused(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "AS-4")
    add_keys(shop, sku, ["AS4-KEY-0", "AS4-KEY-1"])
    no = buy(shop, "AS-4")
    other = token(shop, "K000000NOSUCHORDER000000")
    for order_no, tok in [
        (no, None),
        (no, "x" * 43),
        (no, other),
        ("K000000NOSUCHORDER000000", "y"),
    ]:
        with pytest.raises(Unauthorized) as denied:
            fulfilment.report_item(
                shop, order_no, tok, position=1, problem="key_invalid", note=None, policy=REPLACE
            )
        assert denied.value.slug == "invalid-order-token"
        with pytest.raises(Unauthorized):
            fulfilment.buyer_reports(shop, order_no, tok)
    with pytest.raises(InvalidInput) as unknown:
        report(shop, no, 7)
    assert unknown.value.where == "position" and "[1]" in unknown.value.detail
    with pytest.raises(InvalidInput) as problem:
        fulfilment.report_item(
            shop, no, token(shop, no), position=1, problem="meh", note=None, policy=REPLACE
        )
    assert problem.value.where == "problem"
    with shop.db.read() as s:
        assert s.execute(select(func.count()).select_from(Report)).scalar_one() == 0
        assert s.execute(select(Key.status).where(Key.status == "void")).first() is None
    assert revealed(shop, no) == {1: "AS4-KEY-0"}


def admin_token(shop: fulfilment.Shop, name: str, role: accounts.Role) -> dict[str, str]:
    with shop.db.write() as s:
        admin = accounts.create_admin(s, name, "correct horse battery staple", role)
        return {"Authorization": f"Bearer {accounts.issue_token(s, admin.id)}"}


def test_http_report_and_review_by_role(client: TestClient, shop: fulfilment.Shop) -> None:
    sku = make_sku(shop, "AS-5")
    add_keys(shop, sku, ["AS5-KEY-0"], supplier="Web")
    no = buy(shop, "AS-5", quantity=1)
    url = f"/api/v1/orders/{no}/reports"
    body = {"position": 1, "problem": "redemption_failed", "note": "error 42"}
    wrong = client.post(url, json=body, headers={"Authorization": "Bearer nope"})
    missing = client.post(
        "/api/v1/orders/K000000NOSUCHORDER000000/reports",
        json=body,
        headers={"Authorization": "Bearer nope"},
    )
    assert wrong.status_code == missing.status_code == 401
    assert wrong.json()["type"] == missing.json()["type"]
    auth = {"Authorization": f"Bearer {token(shop, no)}"}
    made = client.post(url, json=body, headers=auth)
    assert made.status_code == 201, made.text
    out = made.json()
    assert out["status"] == "open" and out["review_reason"] == "the shop reviews every report"
    assert client.get(url, headers=auth).json()[0]["report_no"] == out["report_no"]

    operator = admin_token(shop, "olga", accounts.Role.OPERATOR)
    finance = admin_token(shop, "fred", accounts.Role.FINANCE)
    queue = client.get("/api/admin/aftersales", headers=operator).json()
    assert [(r["order_no"], r["supplier"], r["masked"] != "") for r in queue] == [(no, "Web", True)]
    base = f"/api/admin/aftersales/{out['report_no']}"
    assert client.post(f"{base}/refund", json={}, headers=operator).status_code == 403
    assert client.post(f"{base}/reject", json={"reason": "x"}, headers=finance).status_code == 403
    paid_back = client.post(f"{base}/refund", json={"note": "ok"}, headers=finance)
    assert paid_back.status_code == 200, paid_back.text
    assert paid_back.json()["status"] == "refunded" and paid_back.json()["resolved_by"] == "fred"
    defects = client.get("/api/admin/batches/defects", params={"sku": "AS-5"}, headers=finance)
    (row,) = defects.json()
    assert (row["supplier"], row["sold"], row["defective"], row["rate"]) == ("Web", 1, 1, 1.0)
    assert client.get("/api/admin/aftersales", headers=operator).json() == []
