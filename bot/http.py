"""uvicorn's HTTP protocol (httptools), with a bound on a request's headers.

A request whose header section outgrows `MAX_HEADER_BYTES` is answered 431 (docs/design.md).
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024  # request line and headers; real clients send a few KB
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 25\r\nconnection: close\r\n\r\nrequest headers too large"
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes the connection with 431 once a header section passes the limit."""

    _in_headers = True  # until the current request's headers are complete
    _header_bytes = 0

    def data_received(self, data: bytes) -> None:
        if not self._in_headers:
            super().data_received(data)
            return
        self._header_bytes += len(data)
        super().data_received(data)  # may complete the headers: then the rest of `data` was the body
        if self._in_headers and self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_headers, self._header_bytes = True, 0  # the next request on this connection
        super().on_message_complete()
