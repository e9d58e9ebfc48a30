"""The Graph API as httpx.MockTransport handlers: for the app in-process and for a Graph client alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx

from bot.graph import GraphClient
from bot.graph_batch import read_batch
from bot.graph_errors import RetryPolicy
from bot.page_checks import NEEDED_FIELDS

# Retries in a blink, so that tests of the client's retries take no time.
FAST = RetryPolicy(
    deadline_s=2.0,
    first_backoff_s=0.01,
    max_backoff_s=0.05,
    request_timeout_s=0.5,
    first_hold_s=0.01,
    max_hold_s=0.05,
)


def platform(request: httpx.Request) -> httpx.Response:
    """A Graph API that knows every customer as Ada and accepts every send."""
    if request.method == "GET":
        return httpx.Response(200, json={"first_name": "Ada", "id": "1"})
    return httpx.Response(200, json={"recipient_id": "1", "message_id": "m_1"})


def page_platform(requests: list[httpx.Request], *, token_error: bool = False):
    """The Graph API of a page whose app is subscribed to every field the bot needs."""

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if token_error:
            return httpx.Response(400, json={"error": {"code": 190, "error_subcode": 460, "message": "no"}})
        path = request.url.path.removeprefix("/v25.0/")
        if path in ("me", "app"):
            return httpx.Response(200, json={"id": "42", "name": "Corner Bakery"})
        if path == "42/subscribed_apps":
            return httpx.Response(
                200, json={"data": [{"id": "42", "subscribed_fields": list(NEEDED_FIELDS)}]}
            )
        return platform(request)

    return httpx.MockTransport(handle)


class Platform:
    """The Send and User Profile APIs, alone or batched: every message each customer got, in order."""

    def __init__(self) -> None:
        self.messages: dict[str, list[dict]] = {}
        self.arrived = asyncio.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/me/messages"):
            return httpx.Response(200, json=self._send(json.loads(request.content)))
        if request.method == "GET":
            return httpx.Response(200, json={"first_name": "Ada", "id": "1"})
        form = {key: values[0] for key, values in parse_qs(request.content.decode()).items()}
        answers = [
            self._send(entry.body) if entry.method == "POST" else {"first_name": "Ada", "id": "1"}
            for entry in read_batch(form)
        ]
        return httpx.Response(200, json=[{"code": 200, "body": json.dumps(answer)} for answer in answers])

    def _send(self, body: dict) -> dict:
        customer = body["recipient"]["id"]
        self.messages.setdefault(customer, []).append(body["message"])
        self.arrived.set()
        return {"recipient_id": customer, "message_id": f"m_{customer}_{len(self.messages[customer])}"}

    async def wait_for(self, customer: str, count: int) -> list[dict]:
        async with asyncio.timeout(10):
            while len(self.messages.get(customer, [])) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages[customer]


def graph_over(
    handle: Callable[[httpx.Request], httpx.Response], *, policy: RetryPolicy = FAST
) -> GraphClient:
    """A client of page TOKEN whose every request goes to `handle`."""
    return GraphClient(
        base_url="https://graph.test",
        version="v25.0",
        page_token="TOKEN",
        app_secret="SECRET",
        retry=policy,
        transport=httpx.MockTransport(handle),
    )
