"""What every adapter does when the supplier's side misbehaves at the HTTP level: the outcome is
UNKNOWN (never a failure that would let the caller buy elsewhere), redirects are not followed
and oversized answers are not read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kami.suppliers import (
    MAX_RESPONSE,
    SUPPLIER_SPECS,
    Supplier,
    SupplierOrderStatus,
    SupplierRequest,
)

SPECS = {spec.protocol: spec for spec in SUPPLIER_SPECS}


class Hostile:
    """Answers by the first path segment: redirect, huge, error, garbage, silent."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.release = threading.Event()
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hostile.hits.append(self.path)
                mode = self.path.strip("/").split("/")[0]
                try:
                    if mode == "redirect":
                        self.send_response(302)
                        self.send_header("Location", "/target/")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    elif mode == "huge":
                        size = MAX_RESPONSE + 1024 * 1024
                        self.send_response(200)
                        self.send_header("Content-Length", str(size))
                        self.end_headers()
                        chunk = b"{" + b" " * (64 * 1024 - 1)
                        for _ in range(size // len(chunk)):
                            self.wfile.write(chunk)
                    elif mode == "silent":
                        hostile.release.wait(10)
                    else:
                        status, body = (500, b"oops") if mode == "error" else (200, b"<html>")
                        self.send_response(status)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    h = Hostile()
    yield h
    h.close()


def supplier_at(protocol: str, url: str) -> Supplier:
    options = {
        "fulu": {"gateway_url": url, "app_key": "k", "app_secret": "s" * 32},
        "dayuanren": {"base_url": url, "userid": "1", "apikey": "k"},
        "generic": {"base_url": url, "key_id": "k", "secret": "s" * 16},
    }[protocol]
    return SPECS[protocol].build(protocol, dict(options, timeout="0.3"))


REQUEST = SupplierRequest("KH1", "10000001", 1, "13800138000")


@pytest.mark.parametrize("protocol", ["fulu", "dayuanren", "generic"])
@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("redirect", "redirect refused"),
        ("huge", "larger than"),
        ("error", "HTTP 500"),
        ("garbage", ""),
        ("silent", "timed out"),
    ],
)
def test_misbehaving_answers_are_unknown(
    hostile: Hostile, protocol: str, mode: str, words: str
) -> None:
    supplier = supplier_at(protocol, f"{hostile.url}/{mode}")
    for result in (supplier.submit(REQUEST), supplier.query("KH1")):
        assert result.status is SupplierOrderStatus.UNKNOWN
        assert words in (result.detail or "")
        assert len(result.raw) <= 8000
    assert not [hit for hit in hostile.hits if hit.startswith("/target")]


def test_an_unreachable_supplier_is_unknown() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens there any more
    for protocol in ("fulu", "dayuanren", "generic"):
        result = supplier_at(protocol, f"http://127.0.0.1:{port}").submit(REQUEST)
        assert result.status is SupplierOrderStatus.UNKNOWN
        assert "connection" in (result.detail or "")
