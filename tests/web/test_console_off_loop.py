"""The console's work runs off the event loop that answers the buyers, and a key import shows
its progress while it runs."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import pkgutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from kami import accounts, fulfilment, vault
from kami.kernel.errors import InvalidInput
from kami.web import console
from kami.web.console.frame import ConsoleRoute
from kami.web.console.keys import PROGRESS
from tests.browser.seed import Seeded
from tests.conftest import run_async
from tests.web.conftest import make_admin, sign_in
from tests.web.test_console import paid_order


def test_every_console_handler_is_a_plain_function() -> None:
    """FastAPI runs a plain function on a worker thread and a coroutine on the event loop. What
    a console handler must await (the session, the form) comes in as dependencies."""
    modules = [
        importlib.import_module(f"kami.web.console.{m.name}")
        for m in pkgutil.iter_modules(console.__path__)
    ]
    routes = [
        r
        for module in modules
        for r in getattr(getattr(module, "router", None), "routes", [])
        if isinstance(r, ConsoleRoute)
    ]
    assert len(routes) > 20
    assert [r.path for r in routes if inspect.iscoroutinefunction(r.endpoint)] == []


ACTIONS = {
    "sync": ("/admin/orders/{no}/sync", "sync_order", {}),
    "redeliver": ("/admin/orders/{no}/redeliver", "redeliver", {}),
    "refund": ("/admin/orders/{no}/refund", "request_refund", {"reason": "r", "refund_key": "k"}),
    "deliver by hand": ("/admin/orders/{no}/lines/1/deliver", "fulfil_by_hand", {"goods": "X"}),
    "import": ("/admin/keys/import", "import_and_serve", {}),
}


@pytest.mark.parametrize("action", list(ACTIONS))
def test_the_shop_answers_while_a_console_action_waits(
    owner: TestClient,
    shop: fulfilment.Shop,
    seeded: Seeded,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    """Asking a payment channel about an order or for a refund can take seconds, an import of a
    million keys twenty: while one waits, the process goes on answering everyone else."""
    path, name, data = ACTIONS[action]
    order_no = paid_order(shop, seeded.plain_sku)
    entered, answered = threading.Event(), threading.Event()
    seen: list[tuple[bool, bool]] = []  # (ran on the event loop, /healthz answered meanwhile)

    def held(*_args: Any, **_kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        entered.set()
        seen.append((on_loop, answered.wait(10)))  # on the loop, nothing can set it: 10 s
        return vault.ImportReport(batch="B-held", sku_id=1) if name == "import_and_serve" else None

    monkeypatch.setattr(fulfilment, name, held)
    token = owner.cookies.get("kami_csrf")
    form = {"csrf_token": token, "sku": seeded.plain_sku, **data}
    files = {"file": ("keys.txt", b"HELD-0001\n", "text/plain")} if action == "import" else None

    async def scene() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=owner.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", cookies=owner.cookies
        ) as ac:
            posted = asyncio.create_task(
                ac.post(path.format(no=order_no), data=form, files=files)  # type: ignore[arg-type]
            )
            for _ in range(1000):
                if entered.is_set():
                    break
                await asyncio.sleep(0.01)
            health = await ac.get("/healthz")
            answered.set()
            return health.status_code, (await posted).status_code

    health, status = run_async(scene)
    assert seen == [(False, True)]
    assert health == 200 and status in (200, 303)


@contextmanager
def _signed_in(served: str, shop: fulfilment.Shop) -> Iterator[httpx.Client]:
    make_admin(shop, "boss", accounts.Role.OWNER)
    with httpx.Client(base_url=served, timeout=30) as http:
        sign_in(http, "boss")  # type: ignore[arg-type]
        yield http


def _stream_import(
    http: httpx.Client, sku: str, content: bytes, on_line: Any = None
) -> list[dict[str, Any]]:
    """The JSON lines of an import asked for as the console's script asks; `on_line(line)` is
    called with each as it arrives."""
    lines: list[dict[str, Any]] = []
    with http.stream(
        "POST",
        "/admin/keys/import",
        data={"csrf_token": http.cookies.get("kami_csrf"), "sku": sku},
        files={"file": ("keys.txt", content, "text/plain")},
        headers={"Accept": PROGRESS},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(PROGRESS)
        assert r.headers["cache-control"] == "no-store"
        for raw in r.iter_lines():
            lines.append(json.loads(raw))
            if on_line:
                on_line(lines[-1])
    return lines


def test_an_import_streams_its_progress_then_its_report(
    served: str, shop: fulfilment.Shop, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import is held after its first chunk of keys until the client has read a line that
    counts them: the lines come while it runs, not all at the end."""
    content = b"".join(b"STREAM-%06d\n" % i for i in range(5000))
    real = fulfilment.import_and_serve
    counted = threading.Event()
    held: list[bool] = []

    def gated(*args: Any, on_chunk: Any, **kwargs: Any) -> vault.ImportReport:
        def chunk(report: vault.ImportReport) -> None:
            on_chunk(report)
            if report.imported and not held:
                held.append(counted.wait(10))

        return real(*args, on_chunk=chunk, **kwargs)

    monkeypatch.setattr(fulfilment, "import_and_serve", gated)

    def read(line: dict[str, Any]) -> None:
        if line.get("imported"):
            counted.set()

    with _signed_in(served, shop) as http:
        lines = _stream_import(http, seeded.plain_sku, content, read)
    assert held == [True]
    *progress, last = lines
    during = next(p for p in progress if p["imported"])
    assert 0 < during["imported"] < 5000 and 0 < during["done"] <= len(content)
    assert progress[-1] == {
        "done": len(content),
        "total": len(content),
        "imported": 5000,
        "lines": 5000,
    }
    assert last["status"] == 200 and 'id="imported">5000<' in last["page"]


def test_a_refused_import_ends_its_stream_with_the_error_page(
    served: str, shop: fulfilment.Shop, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*_args: Any, **_kwargs: Any) -> vault.ImportReport:
        raise InvalidInput("line 3: the key is too long", where="line 3")

    monkeypatch.setattr(fulfilment, "import_and_serve", refused)
    with _signed_in(served, shop) as http:
        *_, last = _stream_import(http, seeded.plain_sku, b"A-1\nA-2\n")
    assert last["status"] == 422
    assert "line 3: the key is too long" in last["page"]


def test_an_import_that_breaks_ends_its_stream_with_a_500_page_and_a_log_line(
    served: str,
    shop: fulfilment.Shop,
    seeded: Seeded,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> vault.ImportReport:
        raise RuntimeError("disk full")

    monkeypatch.setattr(fulfilment, "import_and_serve", broken)
    with _signed_in(served, shop) as http:
        *_, last = _stream_import(http, seeded.plain_sku, b"A-1\n")
    assert last["status"] == 500
    assert "nothing was imported" in last["page"] and "disk full" not in last["page"]
    assert any("console import failed" in r.getMessage() for r in caplog.records)
