"""`kami.web.wire.HttpProtocol` (decision 0021): a response's headers and body leave in one
write, a streamed body still leaves as it is made, and nothing is lost or reordered. The
protocol is uvicorn's own, fed real HTTP bytes; the transport under it records what it is
asked to send (a connection's socket is the network edge). The whole web suite's live server
(`served`) and `kami serve` run on it too."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from kami.web.app import telemetry
from kami.web.wire import HttpProtocol, _Gathered
from tests.conftest import run_async


class Recorder(asyncio.Transport):
    """A connection's transport that records each write and the close."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = self.eof = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _plain(scope: Any, receive: Any, send: Any) -> None:
    body = b'{"ok": true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _streamed(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": b"second", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _empty(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _connect(app: Any, request: bytes) -> tuple[HttpProtocol, Recorder]:
    """uvicorn's protocol for `app` on a recording transport, `request` received."""
    config = uvicorn.Config(app, log_level="warning", http=HttpProtocol)
    config.load()
    protocol = HttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Recorder()
    protocol.connection_made(transport)
    protocol.data_received(request)
    return protocol, transport


async def _serve(app: Any, request: bytes, *, settle: float = 0.0) -> Recorder:
    protocol, transport = _connect(app, request)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if protocol.cycle is not None and protocol.cycle.response_complete:
            break
    await asyncio.sleep(settle)
    protocol.connection_lost(None)
    return transport


GET = b"GET /x HTTP/1.1\r\nHost: shop\r\n\r\n"


def test_headers_and_body_leave_in_one_write() -> None:
    transport = run_async(lambda: _serve(_plain, GET))
    assert len(transport.writes) == 1
    head, body = transport.writes[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b'{"ok": true}'


def test_two_requests_on_one_connection_are_answered_in_order() -> None:
    transport = run_async(lambda: _serve(_plain, GET + GET, settle=0.1))
    sent = b"".join(transport.writes)
    assert sent.count(b"HTTP/1.1 200 OK") == 2
    assert len(transport.writes) == 2  # one write per response


def test_a_streamed_body_leaves_as_it_is_made() -> None:
    transport = run_async(lambda: _serve(_streamed, GET))
    # The headers go with the first part; the second part, made a while later, on its own.
    assert len(transport.writes) >= 2
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK")
    assert transport.writes[0].endswith(b"5\r\nfirst\r\n")
    assert b"".join(transport.writes).endswith(b"6\r\nsecond\r\n0\r\n\r\n")


def test_a_response_without_a_body_leaves_when_complete() -> None:
    async def run() -> Recorder:
        protocol, transport = _connect(_empty, GET)
        while protocol.cycle is None or not protocol.cycle.response_complete:
            await asyncio.sleep(0)
        # Sent by the time the response is complete, not at the loop's next pass.
        assert len(transport.writes) == 1
        return transport

    transport = run_async(run)
    assert transport.writes[0].startswith(b"HTTP/1.1 204 No Content")


def test_a_close_sends_what_is_kept_first() -> None:
    # Without a body, the headers are still kept when uvicorn closes the connection.
    request = b"GET /x HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n"
    transport = run_async(lambda: _serve(_empty, request))
    assert transport.closed
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 204 No Content")


def test_fastapi_telemetry_is_on_only_where_opentelemetry_is_configured() -> None:
    assert telemetry({"PATH": "/usr/bin"}) == {"tracing": False, "metrics": False, "logs": False}
    assert telemetry({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) is None
    assert telemetry({"FASTAPI_OTEL_AUTO_CONFIGURE": "true"}) is None
    assert telemetry({"FASTAPI_OTEL_AUTO_CONFIGURE": "false"}) is not None  # FastAPI's reading


def test_writelines_and_write_eof_keep_the_order() -> None:
    async def run() -> Recorder:
        transport = Recorder()
        gathered = _Gathered(transport, asyncio.get_running_loop())
        gathered.writelines([b"a", b"b"])
        gathered.write(b"c")
        gathered.write(b"d")
        gathered.write_eof()
        return transport

    transport = run_async(run)
    assert transport.writes == [b"abc", b"d"] and transport.eof
