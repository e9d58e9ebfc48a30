"""The bodies of public routes' requests, read with a bound on their size (the webhook reads its own)."""

from __future__ import annotations

from starlette.requests import Request


async def read_body(request: Request, limit: int) -> bytes | None:
    """A request's body, or None once it is declared or found to be longer than `limit` bytes: for public
    routes, whose bodies are never read whole before their size is known."""
    declared = request.headers.get("content-length", "")
    # At most twelve ASCII digits: int() refuses thousands of them, and reads digits of other scripts.
    if declared and not (
        declared.isascii() and declared.isdigit() and len(declared) <= 12 and int(declared) <= limit
    ):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body
