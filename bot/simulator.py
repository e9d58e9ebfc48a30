"""The built-in stand-in for the Graph API, used in local mode so the whole bot runs with no Facebook app.

It answers the Send and User Profile calls the way the platform does and keeps each customer's messages, so
the simulator page can show them. Each message gets the platform's time when it arrives, inside the bot's
Send API call; the page sends it back as the watermark of the receipts that cover it, as Messenger does. The
bot's own Graph client talks to it through an httpx transport: the production code path, minus the network.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import httpx

from bot.graph import read_batch


@dataclass
class SimulatedCustomer:
    first_name: str | None = None
    # {"message_id", "message", "timestamp"} in the order sent; the timestamp is the platform's (ms).
    messages: list[dict] = field(default_factory=list)


class GraphStandIn(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._customers: dict[str, SimulatedCustomer] = defaultdict(SimulatedCustomer)
        self._ids = itertools.count(1)

    def set_first_name(self, customer_id: str, first_name: str | None) -> None:
        with self._lock:
            self._customers[customer_id].first_name = first_name

    def messages(self, customer_id: str, after: int = 0) -> list[dict]:
        """Messages sent to a customer, from index `after` on."""
        with self._lock:
            return list(self._customers[customer_id].messages[after:])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.strip("/").split("/")
        content = await request.aread()
        if request.method == "POST" and path[-2:] == ["me", "messages"]:
            return httpx.Response(200, json=self._send(json.loads(content)))
        if request.method == "GET" and len(path) == 2:
            return httpx.Response(200, json=self._profile(path[1]))
        if request.method == "POST" and len(path) == 1:  # a batch request, at the version's root
            answers = []
            for entry in read_batch(dict(parse_qsl(content.decode()))):
                if entry.method == "POST" and entry.path.endswith("me/messages"):
                    answers.append({"code": 200, "body": json.dumps(self._send(entry.body))})
                elif entry.method == "GET":
                    answers.append({"code": 200, "body": json.dumps(self._profile(entry.path.strip("/")))})
                else:
                    answers.append({"code": 400, "body": json.dumps(UNSUPPORTED)})
            return httpx.Response(200, json=answers)
        return httpx.Response(400, json=UNSUPPORTED)

    def _send(self, body: dict) -> dict:
        customer_id = str(body.get("recipient", {}).get("id", ""))
        message_id = f"m_local{next(self._ids):08d}"
        with self._lock:
            self._customers[customer_id].messages.append(
                {
                    "message_id": message_id,
                    "message": body.get("message"),
                    "timestamp": time.time_ns() // 1_000_000,
                }
            )
        return {"recipient_id": customer_id, "message_id": message_id}

    def _profile(self, customer_id: str) -> dict:
        with self._lock:
            name = self._customers[customer_id].first_name if customer_id in self._customers else None
        profile = {"id": customer_id}
        if name:
            profile["first_name"] = name
        return profile


UNSUPPORTED = {"error": {"message": "unsupported call", "type": "OAuthException", "code": 100}}
