"""The `kami` command line, run as a seller runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kami.cli.main import app
from kami.config import Settings
from tests.conftest import BACKEND, Inbox, wait_until_serving

runner = CliRunner()
DEMO_ORDER = {
    "sku": "TX-VIP-MONTH",
    "quantity": 1,
    "email": "buyer@example.com",
    "gateway": "sandbox",
}


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    e = {
        "KAMI_DATABASE_URL": settings.database_url,
        "KAMI_SANDBOX_ENABLED": "true",
        "KAMI_LOG_LEVEL": "WARNING",
        "COLUMNS": "220",
    }
    if BACKEND == "sqlite":
        # The embedded default: no master key given, one is generated into the key file.
        e["KAMI_MASTER_KEY_FILE"] = str(tmp_path / "var" / "master.key")
    else:
        e["KAMI_MASTER_KEY"] = settings.master_key.get_secret_value()  # type: ignore[union-attr]
    return e


def kami(env: dict[str, str], *args: str, input: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env, input=input)
    return result.exit_code, result.output


def test_demo_stock_admin_and_errors(env: dict[str, str], tmp_path: Path) -> None:
    code, out = kami(env, "db", "upgrade")
    assert code == 0, out
    code, out = kami(env, "demo")
    assert code == 0, out
    if BACKEND == "sqlite":
        assert "Back it up" in out.replace("\n", " ")
        assert (tmp_path / "var" / "master.key").exists()
    code, out = kami(env, "demo")
    assert code == 1 and "already exists" in out
    assert kami(env, "demo", "--if-empty")[0] == 0
    code, out = kami(env, "keys", "stock")
    assert code == 0 and "TX-VIP-MONTH" in out and "20" in out

    keys = tmp_path / "keys.txt"
    keys.write_text("NEW-0001----PW1\nNEW-0002----PW2\nNEW-0001----PW1\nno-separator\n")
    code, out = kami(
        env,
        "keys",
        "import",
        "--sku",
        "NETEASE-50",
        "--separator",
        "----",
        "--unit-cost",
        "45.00",
        "--supplier",
        "acme",
        str(keys),
    )
    assert code == 0, out
    assert "2 imported" in out and "1 duplicate in file" in out and "1 invalid" in out
    assert "line 4: separator not found" in out

    code, out = kami(env, "keys", "import", "--sku", "NOPE", str(keys))
    assert code == 2 and "no SKU with code 'NOPE'" in out and "Traceback" not in out
    code, out = kami(env, "keys", "import", "--sku", "NETEASE-50", str(tmp_path / "missing.txt"))
    assert code == 2 and "no such file" in out
    code, out = kami(
        env, "keys", "import", "--sku", "NETEASE-50", "--unit-cost", "1.005", str(keys)
    )
    assert code == 2 and "--unit-cost" in out

    code, out = kami(env, "admin", "create", "boss", "--password", "correct horse battery")
    assert code == 0 and "kami_" in out
    code, out = kami(env, "admin", "create", "boss2", "--password", "short")
    assert code == 2 and "at least 10" in out
    code, out = kami(env, "orders", "show", "K000NOSUCH")
    assert code == 2 and "no order" in out
    code, out = kami(env, "orders", "sync", "K000NOSUCH")
    assert code == 2 and "no order" in out
    code, out = kami(env, "vault", "status")
    assert code == 0 and "current master key version: 1" in out
    if BACKEND == "sqlite":
        code, out = kami(env, "vault", "rotate")
        assert code == 0 and "re-wrapped to version 2" in out
        assert "version 2:" in kami(env, "vault", "status")[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_sells_a_demo_key(env: dict[str, str], tmp_path: Path) -> None:
    """What `make run` does: migrate, load the demo, serve; a sandbox purchase delivers a key."""
    assert kami(env, "db", "upgrade")[0] == 0
    assert kami(env, "demo", "--if-empty")[0] == 0
    port = _free_port()
    proc_env = {**os.environ, **env, "KAMI_PORT": str(port)}
    server = subprocess.Popen(
        [sys.executable, "-m", "kami.cli.main", "serve"],
        env=proc_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            wait_until_serving(http, server)
            assert "腾讯视频" in http.get("/").text
            created = http.post(
                "/api/v1/orders",
                json=DEMO_ORDER,
            )
            assert created.status_code == 201, created.text
            order = created.json()
            assert order["payment"]["url"] == f"{base}/pay/sandbox/{order['order_no']}"
            assert http.get(f"/pay/sandbox/{order['order_no']}").status_code == 200
            assert http.post(f"/pay/sandbox/{order['order_no']}").json()["verdict"] == "accepted"
            auth = {"Authorization": f"Bearer {order['access_token']}"}
            revealed = http.post(f"/api/v1/orders/{order['order_no']}/reveal", headers=auth).json()
            card = revealed["items"][0]["card"]
            assert len(card) == 19 and card.count("-") == 3
            page = http.get(f"/orders/{order['order_no']}")
            assert page.status_code == 200 and card not in page.text
            assert "default-src 'self'" in page.headers["content-security-policy"]
    finally:
        server.terminate()
        server.wait(10)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_serve_with_several_processes_runs_the_jobs_in_the_supervisor(
    env: dict[str, str], tmp_path: Path, smtp: tuple[Inbox, int]
) -> None:
    """The request processes run no jobs (none holds the interpreter while a request waits);
    the supervising process does, so the buyer's mail still goes out."""
    inbox, smtp_port = smtp
    assert kami(env, "db", "upgrade")[0] == 0
    assert kami(env, "demo", "--if-empty")[0] == 0
    port = _free_port()
    proc_env = {
        **os.environ,
        **env,
        "KAMI_PORT": str(port),
        "KAMI_WORKER_POLL_SECONDS": "0.2",
        "KAMI_SMTP__HOST": "127.0.0.1",
        "KAMI_SMTP__PORT": str(smtp_port),
        "KAMI_SMTP__SECURITY": "none",
        "KAMI_SMTP__SENDER": "shop@example.com",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "kami.cli.main", "serve", "--workers", "2"],
        env=proc_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            wait_until_serving(http, server)
            children = [
                int(p)
                for p in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
            ]
            requests = [
                c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
            ]
            assert len(requests) == 2
            assert {_environ(c)["KAMI_INPROCESS_WORKER"] for c in requests} == {"false"}
            created = http.post(
                "/api/v1/orders",
                json=DEMO_ORDER,
            ).json()
            assert http.post(f"/pay/sandbox/{created['order_no']}").json()["verdict"] == "accepted"
            for _ in range(200):
                if inbox.messages:
                    break
                time.sleep(0.1)
            assert [m["To"] for m in inbox.messages] == ["buyer@example.com"]
            body = inbox.messages[0].get_payload(decode=True)
            assert isinstance(body, bytes) and created["order_no"] in body.decode()
    finally:
        os.killpg(server.pid, 15)
        server.wait(20)


def test_a_bad_setting_is_named_without_a_traceback(env: dict[str, str]) -> None:
    code, out = kami(env | {"KAMI_TIMEZONE": "Mars/Base"}, "db", "upgrade")
    assert code == 2 and "Traceback" not in out
    assert "KAMI_TIMEZONE: unknown time zone 'Mars/Base'" in " ".join(out.split())
    code, out = kami(env | {"KAMI_DB_CONCURRENCY": "0"}, "db", "upgrade")
    assert code == 2 and "KAMI_DB_CONCURRENCY" in out and "Traceback" not in out
