"""uvicorn's HTTP protocol (httptools), with bounds on the size of a request's headers and on its pace.

A request whose header section outgrows `MAX_HEADER_BYTES` is answered 431 (docs/design.md). A connection
that has not delivered a whole request (headers and body) within `REQUEST_READ_S` of its first byte, or of
being opened, is closed (408 when headers were under way): uvicorn itself waits for ever, so connections that
trickle a byte now and then would hold the server's file descriptors until no webhook can connect.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024  # request line and headers; real clients send a few KB
# The platform and the till's phones send a request within a second or two; the app's own time to answer
# is not counted.
REQUEST_READ_S = 20.0
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 25\r\nconnection: close\r\n\r\nrequest headers too large"
)
_TOO_SLOW = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nrequest took too long"
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes the connection with 431 once a header section passes the limit, and
    closes it when a request is not read whole within `request_read_s`."""

    request_read_s = REQUEST_READ_S
    _in_headers = True  # until the current request's headers are complete
    _header_bytes = 0
    _read_deadline: asyncio.TimerHandle | None = None  # armed while a request is being read

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # an opened connection that sends nothing holds a file descriptor as well

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_headers:
            super().data_received(data)
            return
        if self._header_bytes == 0 and self._read_deadline is None:
            self._arm()  # the next request on a kept-alive connection starts
        self._header_bytes += len(data)
        super().data_received(data)  # may complete the headers: then the rest of `data` was the body
        if self._in_headers and self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()  # read whole: how long the app takes to answer is its own business
        self._in_headers, self._header_bytes = True, 0  # the next request on this connection
        super().on_message_complete()

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self.request_read_s, self._too_slow)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _too_slow(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self._in_headers and self._header_bytes:
            self.transport.write(_TOO_SLOW)
        # Mid-body, the app reading it is told the client went away.
        self.transport.close()
