"""The bodies of public routes' requests, read with a bound on their size (the webhook reads its own)."""

from __future__ import annotations

from starlette.requests import Request


def small_number(text: str) -> int | None:
    """`text` as a number of at most twelve ASCII digits, else None: int() refuses thousands of digits, and
    reads digits of other scripts, which a client may send."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 12 else None


async def read_body(request: Request, limit: int) -> bytes | None:
    """A request's body, or None once it is declared or found to be longer than `limit` bytes: for public
    routes, whose bodies are never read whole before their size is known."""
    declared = request.headers.get("content-length", "")
    if declared and ((length := small_number(declared)) is None or length > limit):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body
