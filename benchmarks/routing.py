"""What Starlette's middleware and router cost a webhook: CPU µs per request, in-process, no network.

    python benchmarks/routing.py

The same ASGI endpoint (reads the body, answers 200) behind a Starlette app with the bot's routes, and called
directly by a Starlette subclass that dispatches POST /webhook ahead of its middleware (what the bot did
before). The difference is what routing adds to each webhook.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

ACK = PlainTextResponse("EVENT_RECEIVED")
START = {"type": "http.response.start", "status": 200, "headers": ACK.raw_headers}
BODY = {"type": "http.response.body", "body": ACK.body}


class Endpoint:
    async def __call__(self, scope, receive, send) -> None:
        await receive()
        await send(START)
        await send(BODY)


ENDPOINT = Endpoint()


class Direct(Starlette):
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/webhook" and scope["method"] == "POST":
            scope["app"] = self
            await ENDPOINT(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def routes() -> list[Route]:
    return [
        Route("/webhook", ENDPOINT, methods=["POST"]),
        Route("/webhook", ENDPOINT, methods=["GET"]),
        Route("/healthz", ENDPOINT),
        Route("/media/{name:path}", ENDPOINT),
    ]


async def cpu_us_per_request(app: Starlette, requests: int) -> float:
    message = {"type": "http.request", "body": b"x" * 600, "more_body": False}

    async def receive() -> dict:
        return message

    async def send(message: dict) -> None:
        pass

    scope = {
        "type": "http",
        "path": "/webhook",
        "method": "POST",
        "headers": [],
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    started = time.process_time()
    for _ in range(requests):
        await app(dict(scope), receive, send)
    return (time.process_time() - started) / requests * 1e6


async def main(rounds: int = 5, requests: int = 20_000) -> None:
    routed, direct = Starlette(routes=routes()), Direct(routes=routes())
    differences = []
    for _ in range(rounds):
        through_router = await cpu_us_per_request(routed, requests)
        ahead = await cpu_us_per_request(direct, requests)
        differences.append(through_router - ahead)
        print(f"through the router {through_router:.1f} µs, ahead of it {ahead:.1f} µs")
    print(f"median cost of routing: {statistics.median(differences):.1f} µs of CPU per webhook")


if __name__ == "__main__":
    asyncio.run(main())
