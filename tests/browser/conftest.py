"""A real `kami serve` on a free loopback port against the test database, and Debian's chromium
driven by Playwright (no browser download: `make test` installs the chromium package)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from kami import fulfilment
from kami.config import Settings
from tests.browser.seed import Seeded, seed, seed_plain
from tests.conftest import wait_until_serving

CHROMIUM = "/usr/bin/chromium"
PHONE = {"width": 390, "height": 844}


@dataclass(frozen=True)
class Server:
    base: str
    seeded: Seeded | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(settings: Settings, shop: fulfilment.Shop, tmp_path: Path) -> Iterator[Server]:
    """The shop with hostile texts, keys and input fields."""
    yield from _serve(settings, seed(shop), tmp_path)


@pytest.fixture
def plain_server(settings: Settings, shop: fulfilment.Shop, tmp_path: Path) -> Iterator[Server]:
    """An ordinary shop, for screenshots."""
    seed_plain(shop)
    yield from _serve(settings, None, tmp_path)


def _serve(settings: Settings, seeded: Seeded | None, tmp_path: Path) -> Iterator[Server]:
    port = _free_port()
    env = {
        **os.environ,
        "KAMI_DATABASE_URL": settings.database_url,
        "KAMI_MASTER_KEY": settings.master_key.get_secret_value(),  # type: ignore[union-attr]
        "KAMI_SANDBOX_ENABLED": "true",
        "KAMI_SANDBOX_SECRET": settings.sandbox_secret.get_secret_value(),  # type: ignore[union-attr]
        "KAMI_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "KAMI_LOG_LEVEL": "WARNING",
        "KAMI_PORT": str(port),
        "KAMI_HOST": "127.0.0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kami.cli.main", "serve"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=5) as http:
            wait_until_serving(http, proc)
        yield Server(base, seeded)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield b
    b.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        locale="zh-CN",
        user_agent=(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47 NetType/WIFI Language/zh_CN"
        ),
    )
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
