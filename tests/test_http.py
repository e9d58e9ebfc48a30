"""The server's HTTP protocol on a real port: a connection that is slow to send its request is closed, and
one that sends it in time is answered however long the app takes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from bot.http import BoundedHttpToolsProtocol
from tests.support.ports import free_port

READ_S = 0.5  # the deadline these tests give a request, instead of the server's own


class QuickProtocol(BoundedHttpToolsProtocol):
    request_read_s = READ_S


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, takes longer than the deadline to think, then answers with the body's length."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size, more = size + len(message.get("body", b"")), message.get("more_body", False)
    await asyncio.sleep(2 * READ_S)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(str(size)))],
        }
    )
    await send({"type": "http.response.body", "body": str(size).encode()})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    config = uvicorn.Config(
        echo_length, host="127.0.0.1", port=free_port(), http=QuickProtocol, lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield config.port
    server.should_exit = True
    thread.join(10)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bytes:
    """What the server sent before it closed `sock`, sending `trickle` every tenth of a second meanwhile.
    Fails if it is still open after `seconds`."""
    deadline = time.monotonic() + seconds
    received = b""
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            if trickle:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(trickle)
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"still open after {seconds} s (the deadline is {READ_S} s)")


def test_headers_trickled_past_the_deadline_are_answered_408_and_closed(port):
    with connect(port) as sock:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: bot\r\n")
        answer = closed_within(sock, 10 * READ_S, trickle=b"X-A: b\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_connection_that_never_sends_a_request_is_closed(port):
    with connect(port) as sock:
        assert closed_within(sock, 10 * READ_S) == b""


def test_a_body_trickled_past_the_deadline_is_cut_off(port):
    with connect(port) as sock:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: bot\r\nContent-Length: 100000\r\n\r\n")
        assert closed_within(sock, 10 * READ_S, trickle=b"a") == b""


def test_a_request_sent_in_time_is_answered_however_long_the_app_takes(port):
    with connect(port) as sock:
        for _ in range(2):  # and the next request on the same connection too
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: bot\r\nContent-Length: 5\r\n\r\nhello")
            answer = b""
            while not answer.endswith(b"\r\n\r\n5"):
                chunk = sock.recv(4096)
                assert chunk, f"closed after {answer!r}"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
