"""Test fixtures: every test runs against a real, migrated database.

`KAMI_TEST_DB=sqlite` (default) gives each test its own SQLite file copied from a migrated
template. `KAMI_TEST_DB=postgresql` uses the machine's PostgreSQL (KAMI_TEST_PG_URL, default
postgresql://postgres@127.0.0.1:5432/postgres): one fresh database per session, tables truncated
between tests. If PostgreSQL is unreachable the tests fail; they never skip.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, event, text

from kami import bootstrap, catalog, fulfilment, orders, payments, vault
from kami.config import Settings
from kami.kernel.clock import utcnow
from kami.kernel.db import Base
from kami.payments.gateways.sandbox import sign as sandbox_sign
from kami.web.app import create_app

BACKEND = os.environ.get("KAMI_TEST_DB", "sqlite")
PG_ADMIN_URL = os.environ.get(
    "KAMI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SANDBOX_SECRET = "test-sandbox-secret-0123456789abcdef"
MASTER_KEY = base64.b64encode(b"k" * 32).decode()


def pytest_report_header() -> str:
    return f"kami test database: {BACKEND}"


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database: a template file (SQLite) or a session database (PostgreSQL)."""
    if BACKEND == "sqlite":
        path = tmp_path_factory.mktemp("template") / "template.db"
        bootstrap.migrate(Settings(database_url=f"sqlite:///{path}"))
        yield str(path)
        return
    if BACKEND != "postgresql":
        raise RuntimeError(f"KAMI_TEST_DB must be sqlite or postgresql, not {BACKEND!r}")
    name = f"kami_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # fails loudly when PostgreSQL is down: no skipping
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    bootstrap.migrate(Settings(database_url=url))
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(database_template: str, tmp_path: Path) -> Iterator[str]:
    if BACKEND == "sqlite":
        path = tmp_path / "kami.db"
        shutil.copyfile(database_template, path)
        yield f"sqlite:///{path}"
        return
    yield database_template
    engine = create_engine(database_template)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        # A test that leaked an open transaction fails here instead of hanging the suite.
        conn.execute(text("SET LOCAL lock_timeout = '20s'"))
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        master_key=MASTER_KEY,
        master_key_file=tmp_path / "unused.key",
        sandbox_enabled=True,
        sandbox_secret=SANDBOX_SECRET,
        public_url="http://testserver",
        files_dir=tmp_path / "files",
        inprocess_worker=False,
        # Tests place many orders from one address; the limits have tests of their own.
        rate_limit_orders="100000/minute",
        rate_limit_reveals="100000/minute",
    )


# A statement that writes: INSERT, UPDATE, DELETE, SAVEPOINT, or a WITH … whose main statement
# writes (the claim's `WITH picked AS MATERIALIZED (…) UPDATE …`).
_WRITE_STATEMENT = re.compile(
    r"^\s*(INSERT|UPDATE|DELETE|SAVEPOINT)\b|^\s*WITH\b.*\)\s*(INSERT|UPDATE|DELETE)\b",
    re.IGNORECASE | re.DOTALL,
)


def _reads_never_write(engine: Engine) -> None:
    """Fail a test whose code writes inside `Database.read()`.

    A read is rolled back (SQLite) or runs in autocommit (PostgreSQL), so a write there was lost
    on one database and kept on the other; the console's TOTP secret was once made that way.
    """

    @event.listens_for(engine, "before_cursor_execute")
    def _check(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if conn.get_execution_options().get("kami_write"):
            return
        if _WRITE_STATEMENT.search(statement):
            raise AssertionError(f"a write inside a read transaction: {statement[:120]}")


@pytest.fixture
def container(settings: Settings) -> Iterator[bootstrap.Container]:
    c = bootstrap.build(settings)
    _reads_never_write(c.db.engine)
    yield c
    c.close()


@pytest.fixture
def shop(container: bootstrap.Container) -> fulfilment.Shop:
    return container.shop


@pytest.fixture
def client(container: bootstrap.Container) -> Iterator[TestClient]:
    with TestClient(create_app(container, worker=False)) as c:
        yield c


@contextmanager
def writer_held_by_a_thread(shop: fulfilment.Shop) -> Iterator[threading.Event]:
    """SQLite's writer held by another thread of this process until the event is set, or the
    block ends."""
    held, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with shop.db.write():
            held.set()
            leave.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        yield leave
    finally:
        leave.set()
        holder.join(10)


@pytest.fixture
def served(_uvicorn: tuple[str, uvicorn.Server]) -> str:
    """The app served by uvicorn on a loopback port, on a thread of this process; its base URL.
    (httpx's ASGI transport hands a response over only once it is complete.)"""
    return _uvicorn[0]


@pytest.fixture
def served_loop(_uvicorn: tuple[str, uvicorn.Server]) -> asyncio.AbstractEventLoop:
    """The event loop of the server of `served`."""
    loop: asyncio.AbstractEventLoop = _uvicorn[1].servers[0].get_loop()
    return loop


@pytest.fixture
def _uvicorn(container: bootstrap.Container) -> Iterator[tuple[str, uvicorn.Server]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(container, worker=False), log_level="warning", http="kami.web.wire:HttpProtocol"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    server.should_exit = True
    thread.join(10)
    sock.close()


class Inbox:
    """What a real SMTP server on loopback (aiosmtpd) received."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    """An SMTP server on a free loopback port: its inbox and the port."""
    inbox = Inbox()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


# -- helpers -----------------------------------------------------------------------------------
def wait_until_serving(
    http: httpx.Client, server: subprocess.Popen[bytes], tries: int = 200
) -> None:
    """Ask /healthz every 0.1 s until `kami serve` answers; fail if it exits or never does."""
    for _ in range(tries):
        if server.poll() is not None:
            err = server.stderr.read().decode() if server.stderr else ""
            pytest.fail(f"kami serve exited: {err[-2000:]}")
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail("kami serve did not start")


@pytest.fixture
def scratch_table(shop: fulfilment.Shop) -> Iterator[str]:
    """A table `t_scratch (n INTEGER)`, dropped afterwards (PostgreSQL keeps one database for
    the whole session, and the schema test would see it)."""
    with shop.db.write() as s:
        s.execute(text("CREATE TABLE t_scratch (n INTEGER NOT NULL)"))
    yield "t_scratch"
    with shop.db.write() as s:
        s.execute(text("DROP TABLE t_scratch"))


T = TypeVar("T")


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(main())` on a thread of its own: the browser tests keep Playwright's loop
    running on the main thread for the whole session."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, asyncio.run(main())))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


def make_sku(
    shop: fulfilment.Shop,
    code: str = "SKU-1",
    *,
    price: int = 1000,
    currency: str = "CNY",
    max_quantity: int = 10,
    display: catalog.StockDisplay = catalog.StockDisplay.EXACT,
) -> catalog.SkuView:
    with shop.db.write() as s:
        if not any(c.slug == "cat" for c in catalog.list_categories(s)):
            catalog.create_category(s, catalog.CategoryIn(slug="cat", name="Category"))
        slug = "p-" + code.lower().replace("_", "-").replace(".", "-")
        catalog.create_product(
            s,
            catalog.ProductIn(
                slug=slug, category="cat", name=f"Product {code}", redemption="use it"
            ),
        )
        return catalog.create_sku(
            s,
            catalog.SkuIn(
                code=code,
                product=slug,
                name=code,
                price_minor=price,
                currency=currency,
                max_quantity=max_quantity,
                stock_display=display,
            ),
        )


def open_flash_sale(
    shop: fulfilment.Shop,
    code: str,
    *,
    quota: int,
    limit: int = 1,
    start: timedelta = timedelta(minutes=-1),
    end: timedelta = timedelta(minutes=10),
) -> None:
    """A flash sale on `code` from now + `start` to now + `end`: price 99, two minutes to pay."""
    now = utcnow()
    with shop.db.write() as s:
        catalog.set_flash_sale(
            s,
            code,
            catalog.FlashSaleIn(
                starts_at=now + start,
                ends_at=now + end,
                price_minor=99,
                per_buyer_limit=limit,
                quota=quota,
                reservation_minutes=2,
            ),
        )


def lapse(shop: fulfilment.Shop, order: orders.OrderView) -> None:
    """The order runs out of time and the sweep expires it: its keys and quota go back."""
    with shop.db.write() as s:
        s.execute(
            text("UPDATE orders_order SET expires_at = :t WHERE id = :i"),
            {"t": utcnow() - timedelta(seconds=1), "i": order.id},
        )
    assert fulfilment.expire_orders(shop) == 1


def add_keys(
    shop: fulfilment.Shop, sku: catalog.SkuView, keys: list[str], **info: object
) -> vault.ImportReport:
    rows = [vault.GoodLine(n, vault.Secret(k)) for n, k in enumerate(keys, start=1)]
    return fulfilment.import_and_serve(shop, sku.id, rows, vault.BatchInfo(**info))  # type: ignore[arg-type]


def random_keys(n: int, prefix: str = "KEY") -> list[str]:
    return [f"{prefix}-{secrets.token_hex(8).upper()}" for _ in range(n)]


def sandbox_body(
    order_no: str,
    amount: int,
    *,
    trade_no: str | None = None,
    currency: str = "CNY",
    status: str = "paid",
) -> bytes:
    return json.dumps(
        {
            "order_no": order_no,
            "trade_no": trade_no or f"T{order_no}",
            "amount_minor": amount,
            "currency": currency,
            "status": status,
        }
    ).encode()


def sign(body: bytes, secret: str = SANDBOX_SECRET) -> str:
    return sandbox_sign(secret.encode(), body)


def raw_notification(body: bytes, signature: str | None = None) -> payments.RawNotification:
    return payments.RawNotification(
        gateway="sandbox",
        method="POST",
        headers={"x-sandbox-signature": signature if signature is not None else sign(body)},
        query={},
        body=body,
        remote_addr="127.0.0.1",
    )


def place(
    shop: fulfilment.Shop, sku: str, quantity: int = 1, email: str = "buyer@example.com"
) -> fulfilment.PlacedOrder:
    from kami import orders

    return fulfilment.place_order(
        shop, orders.OrderIn(sku=sku, quantity=quantity, email=email, gateway="sandbox")
    )


def hold_imports(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Each key import from now on (`fulfilment.import_and_serve`) sets the first event once it
    has started, then waits for the second before it imports."""
    real = fulfilment.import_and_serve
    entered, release = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> vault.ImportReport:
        entered.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(fulfilment, "import_and_serve", held)
    return entered, release
