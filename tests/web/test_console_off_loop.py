"""The console's work runs off the event loop that answers the buyers, and a key import shows
its progress while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import pkgutil
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from kami import accounts, fulfilment, vault
from kami.kernel.errors import InvalidInput
from kami.web import console
from kami.web.admin.api import IMPORTS
from kami.web.console import keys as console_keys
from kami.web.console.frame import ConsoleRoute
from kami.web.console.keys import PROGRESS
from tests.browser.seed import Seeded
from tests.conftest import hold_imports, run_async
from tests.web.conftest import asgi_scope, make_admin, sign_in
from tests.web.test_console import paid_order


def _console_routes() -> list[ConsoleRoute]:
    modules = [
        importlib.import_module(f"kami.web.console.{m.name}")
        for m in pkgutil.iter_modules(console.__path__)
    ]
    return [
        r
        for module in modules
        for r in getattr(getattr(module, "router", None), "routes", [])
        if isinstance(r, ConsoleRoute)
    ]


def test_every_console_handler_is_a_plain_function() -> None:
    """FastAPI runs a plain function on a worker thread and a coroutine on the event loop. What
    a console handler must await (the session, the form) comes in as dependencies."""
    routes = _console_routes()
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
    assert any("console import failed: RuntimeError" in r.getMessage() for r in caplog.records)
    assert "disk full" not in caplog.text  # the type only: a message could carry a key


def _console_posts() -> list[str]:
    """Every console form's path, its parameters filled in, but signing in and out."""
    filled = {"order_no": "NO-SUCH", "line_id": "1", "slug": "x", "code": "x", "job_id": "1"}
    paths = []
    for route in _console_routes():
        if "POST" in route.methods and route.path not in ("/admin/login", "/admin/logout"):
            paths.append(re.sub(r"\{(\w+)\}", lambda m: filled[m.group(1)], route.path))
    return sorted(paths)


@pytest.mark.parametrize("path", _console_posts())
def test_a_post_without_a_live_session_is_sent_to_sign_in_before_its_form_is_read(
    client: TestClient, path: str
) -> None:
    """The session is checked before the form (`Admin` before `Form`): an expired session gets
    the sign-in page, not a CSRF error, and nobody's upload is read before it is known whose."""
    client.cookies.set("kami_console", "an-expired-session-id", path="/admin")
    r = client.post(path, data={"csrf_token": "wrong"}, follow_redirects=False)
    assert (r.status_code, r.headers.get("location")) == (303, "/admin/login")


def test_an_import_whose_answer_cannot_be_sent_still_happens(
    owner: TestClient, shop: fulfilment.Shop, seeded: Seeded
) -> None:
    """A server may find the browser gone when it starts the answer (ASGI 2.4: `send` raises),
    before the streamed body is ever asked for: the import was started by then."""
    request = owner.build_request(
        "POST",
        "/admin/keys/import",
        data={"csrf_token": owner.cookies.get("kami_csrf"), "sku": seeded.plain_sku},
        files={"file": ("keys.txt", b"ZQGONE-0001\nZQGONE-0002\n", "text/plain")},
        headers={"Accept": PROGRESS},
    )
    body = request.read()
    scope = asgi_scope(request, "2.4")  # `send` may raise once the browser is gone

    async def scene() -> None:
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                raise OSError("the browser went away")

        with contextlib.suppress(Exception):
            await owner.app(scope, receive, send)

    run_async(scene)
    for _ in range(500):  # the import runs on its own thread: until it has committed
        if _stocked(shop, seeded.plain_sku, "ZQGONE-"):
            break
        time.sleep(0.02)
    assert _stocked(shop, seeded.plain_sku, "ZQGONE-") == 2


def _stocked(shop: fulfilment.Shop, sku: str, prefix: str) -> int:
    with shop.db.read() as s:
        found = s.execute(
            text(
                "SELECT count(*) FROM vault_key k JOIN catalog_sku c ON c.id = k.sku_id "
                "WHERE c.code = :sku AND k.masked LIKE :p"
            ),
            {"sku": sku, "p": prefix[:2] + "%"},
        ).scalar_one()
    return int(found)


def test_an_import_whose_report_page_fails_does_not_say_nothing_was_imported(
    served: str,
    shop: fulfilment.Shop,
    seeded: Seeded,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def undrawable(*_args: Any) -> Any:
        raise RuntimeError("the page could not be drawn")

    monkeypatch.setattr(console_keys, "_report_page", undrawable)
    with _signed_in(served, shop) as http:
        *_, last = _stream_import(http, seeded.plain_sku, b"ZQDRAWN-0001\nZQDRAWN-0002\n")
    assert last["status"] == 500 and "nothing was imported" not in last["page"]
    assert _stocked(shop, seeded.plain_sku, "ZQDRAWN-") == 2
    assert "failed: RuntimeError" in caplog.text and "could not be drawn" not in caplog.text


def test_console_imports_share_the_cap_on_imports_at_once_and_give_their_slots_back(
    served: str, shop: fulfilment.Shop, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one import streams, one more (the limit here being one) gets a page that says why
    at once; a streamed import gives its slot back when it ends, even when it breaks."""
    monkeypatch.setattr(IMPORTS, "limit", 1)
    real = fulfilment.import_and_serve

    def broken(*_args: Any, **_kwargs: Any) -> vault.ImportReport:
        raise RuntimeError("disk full")

    entered, release = hold_imports(monkeypatch)
    with _signed_in(served, shop) as http, ThreadPoolExecutor(1) as pool:
        first = pool.submit(_stream_import, http, seeded.plain_sku, b"HELD-0001\n")
        assert entered.wait(30)
        with httpx.Client(base_url=served, cookies=http.cookies, timeout=30) as other:
            refused = other.post(
                "/admin/keys/import",
                data={"csrf_token": http.cookies.get("kami_csrf"), "sku": seeded.plain_sku},
                files={"file": ("keys.txt", b"HELD-0002\n", "text/plain")},
            )
        release.set()
        *_, done = first.result()
        assert done["status"] == 200
        assert refused.status_code == 429
        assert "already running 1 key import," in refused.text
        monkeypatch.setattr(fulfilment, "import_and_serve", broken)
        *_, last = _stream_import(http, seeded.plain_sku, b"BROKEN-0001\n")
        assert last["status"] == 500
        monkeypatch.setattr(fulfilment, "import_and_serve", real)
        *_, last = _stream_import(http, seeded.plain_sku, b"AFTER-0001\n")
        assert last["status"] == 200 and 'id="imported">1<' in last["page"]
