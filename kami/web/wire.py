"""uvicorn's HTTP protocol (httptools), with a response's status line, headers and body sent
in one write (decision 0021).

uvicorn writes a response's status line and headers, then its body, as two writes to the
socket: two system calls and, with TCP_NODELAY, two segments for the client to read. Here a
write is kept back until the next one, and the two go out as one; what is still kept goes out
when the response is complete, when the connection closes, or at the latest in the loop's next
pass (a streamed body whose next part comes later). Sending what is kept at the loop's next
pass in every case added a pass's work to every answer: a flash sale's answers waited behind
the checkouts and payments run in that pass. `kami serve` runs uvicorn with this protocol.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Gathered:
    """A connection's transport that keeps a write back until the next one (`send` sends it)."""

    __slots__ = ("_kept", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._kept: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._kept:
            self._kept.append(bytes(data))
            self._loop.call_soon(self.send)
            return
        self._kept.append(bytes(data))
        self.send()

    def send(self) -> None:
        kept, self._kept = self._kept, []
        if kept and not self._transport.is_closing():
            self._transport.write(kept[0] if len(kept) == 1 else b"".join(kept))

    def writelines(self, data: Any) -> None:
        self.write(b"".join(data))

    def write_eof(self) -> None:
        self.send()
        self._transport.write_eof()

    def close(self) -> None:
        self.send()
        self._transport.close()

    def abort(self) -> None:
        self._kept = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._kept))

    def __getattr__(self, name: str) -> Any:  # the rest is the transport's own
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `_Gathered` transport."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._gathered = _Gathered(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, self._gathered))

    def on_response_complete(self) -> None:
        self._gathered.send()  # a response without a body: its headers, now
        super().on_response_complete()
