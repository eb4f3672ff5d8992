"""The order e-mail goes through the outbox to a real SMTP server on loopback."""

from __future__ import annotations

import re
import socket

from fastapi.testclient import TestClient

from kami import bootstrap, fulfilment
from kami.config import Settings, SmtpConfig
from kami.web.app import create_app
from kami.worker import runner
from tests.conftest import Inbox, add_keys, make_sku, place, raw_notification, sandbox_body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_delivery_mail_carries_a_working_link(settings: Settings, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    settings = settings.model_copy(
        update={
            "smtp": SmtpConfig(
                host="127.0.0.1", port=port, security="none", sender="shop@example.com"
            )
        }
    )
    container = bootstrap.build(settings)
    try:
        shop = container.shop
        sku = make_sku(shop, price=100)
        add_keys(shop, sku, ["MAIL-KEY-0001"])
        o = place(shop, sku.code, email="buyer@example.com").order
        fulfilment.handle_notification(shop, raw_notification(sandbox_body(o.order_no, 100)))
        assert inbox.messages == []  # nothing leaves the process inside the transaction
        assert runner.run_once(container, sweep=False) == 1
        assert len(inbox.messages) == 1
        msg = inbox.messages[0]
        assert msg["To"] == "buyer@example.com"
        assert o.order_no in msg["Subject"]
        body = msg.get_payload(decode=True).decode()  # type: ignore[union-attr]
        assert "MAIL-KEY-0001" not in body  # the key itself never travels by mail
        link = re.search(r"http://testserver/orders/(\w+)#t=([\w-]+)", body)
        assert link and link.group(1) == o.order_no
        with TestClient(create_app(container, worker=False)) as client:
            r = client.post(
                f"/api/v1/orders/{o.order_no}/reveal",
                headers={"Authorization": f"Bearer {link.group(2)}"},
            )
        assert r.json()["items"][0]["card"] == "MAIL-KEY-0001"
        # The outbox holds the order number only: no token, no address.
        with shop.db.read() as s:
            from sqlalchemy import text

            payloads = [str(p) for (p,) in s.execute(text("SELECT payload FROM kernel_outbox"))]
        assert all(link.group(2) not in p and "buyer@" not in p for p in payloads)
    finally:
        container.close()


def test_smtp_down_means_retry_not_loss(settings: Settings) -> None:
    port = _free_port()  # nothing listens here
    settings = settings.model_copy(
        update={"smtp": SmtpConfig(host="127.0.0.1", port=port, security="none")}
    )
    container = bootstrap.build(settings)
    try:
        shop = container.shop
        sku = make_sku(shop, price=100)
        add_keys(shop, sku, ["K-1"])
        o = place(shop, sku.code).order
        fulfilment.handle_notification(shop, raw_notification(sandbox_body(o.order_no, 100)))
        runner.run_once(container, sweep=False)
        from kami.kernel import outbox

        with shop.db.read() as s:
            (job,) = outbox.list_jobs(s, ref=o.order_no)
        assert job.status == "pending" and job.attempts == 1 and job.last_error
    finally:
        container.close()
