"""The built-in stand-in for the Graph API in local mode, and the simulator page's routes.

It answers the Send and User Profile calls as the platform does and keeps the last messages of the most
recently active customers for the page; its routes exist only in local mode.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict
from urllib.parse import parse_qsl

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot import jsontext
from bot.graph_batch import read_batch

LOCAL_PAGE_ID = "100000000000001"  # the simulated business page in local mode
SIMULATOR_PAGE = Path(__file__).with_name("simulator.html")
MAX_CUSTOMERS = 1_000  # customers remembered, the most recently active ones
MAX_MESSAGES = 200  # messages remembered per customer, the last ones
MAX_CUSTOMER_BODY = 4096  # a simulated customer: an id and a first name
MAX_NAME = 100  # characters kept of a simulated customer's id and first name


class SentMessage(TypedDict):
    """A message the bot sent, as the simulator page reads it."""

    message_id: str
    message: object  # the Send API's `message` object
    timestamp: int  # the platform's time of its arrival (ms)


@dataclass
class SimulatedCustomer:
    first_name: str | None = None
    messages: deque[SentMessage] = field(default_factory=deque)  # in the order sent
    dropped: int = 0  # messages forgotten from the front: indices stay those of every message ever sent


class GraphStandIn(httpx.AsyncBaseTransport):
    """The Graph API's Send and User Profile calls, in memory.

    Parameters:
        max_customers: customers remembered; the one least recently sent to or named is forgotten first.
        max_messages: messages remembered per customer; the oldest is forgotten first.
    """

    def __init__(self, max_customers: int = MAX_CUSTOMERS, max_messages: int = MAX_MESSAGES) -> None:
        self._lock = threading.Lock()
        self._customers: OrderedDict[str, SimulatedCustomer] = OrderedDict()
        self._max_customers = max_customers
        self._max_messages = max_messages
        self._ids = itertools.count(1)

    def _customer(self, customer_id: str) -> SimulatedCustomer:
        """The customer, made the most recently active (created if new, the oldest forgotten if too many)."""
        customer = self._customers.get(customer_id)
        if customer is None:
            customer = self._customers[customer_id] = SimulatedCustomer()
            if len(self._customers) > self._max_customers:
                self._customers.popitem(last=False)
        else:
            self._customers.move_to_end(customer_id)
        return customer

    def set_first_name(self, customer_id: str, first_name: str | None) -> None:
        with self._lock:
            self._customer(customer_id).first_name = first_name

    def messages(self, customer_id: str, after: int = 0) -> list[SentMessage]:
        """Messages sent to a customer and still remembered, from index `after` (counting every message
        ever sent to them) on."""
        with self._lock:
            customer = self._customers.get(customer_id)
            if customer is None:
                return []
            return list(customer.messages)[max(0, after - customer.dropped) :]

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

    def _send(self, body: Mapping[str, object]) -> dict[str, str]:
        recipient = body.get("recipient")
        customer_id = str(recipient.get("id", "")) if isinstance(recipient, dict) else ""
        message_id = f"m_local{next(self._ids):08d}"
        with self._lock:
            customer = self._customer(customer_id)
            customer.messages.append(
                {
                    "message_id": message_id,
                    "message": body.get("message"),
                    "timestamp": time.time_ns() // 1_000_000,
                }
            )
            if len(customer.messages) > self._max_messages:
                customer.messages.popleft()
                customer.dropped += 1
        return {"recipient_id": customer_id, "message_id": message_id}

    def _profile(self, customer_id: str) -> dict[str, str]:
        with self._lock:
            customer = self._customers.get(customer_id)
            name = customer.first_name if customer is not None else None
        profile = {"id": customer_id}
        if name:
            profile["first_name"] = name
        return profile


UNSUPPORTED = {"error": {"message": "unsupported call", "type": "OAuthException", "code": 100}}


def simulator_routes(stand_in: GraphStandIn, app_secret: str) -> list[Route]:
    """The simulator page at `/` and what it polls, for local mode only.

    Parameters:
        stand_in: the Graph API stand-in the bot sends to; the page shows what it received.
        app_secret: local mode's throwaway secret, which the page signs its webhooks with.
    """

    async def page(request: Request) -> Response:
        # The page signs its webhooks like the platform does, with this process's throwaway secret.
        config = json.dumps({"secret": app_secret, "page": LOCAL_PAGE_ID}).replace("</", "<\\/")
        html = SIMULATOR_PAGE.read_text(encoding="utf-8").replace("__CONFIG__", config)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def messages(request: Request) -> Response:
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            return PlainTextResponse("`after` must be a number", status_code=400)
        customer = request.query_params.get("customer", "")
        return JSONResponse(stand_in.messages(customer, after=max(0, after)))

    async def customer(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_CUSTOMER_BODY:
                return PlainTextResponse("body too large", status_code=413)
        try:
            document = jsontext.loads(body)
            customer_id, first_name = document["id"], document.get("first_name")
        except (ValueError, KeyError, TypeError, AttributeError):
            return PlainTextResponse('expected {"id": …, "first_name": …}', status_code=400)
        if not isinstance(customer_id, str | int) or isinstance(customer_id, bool) or not str(customer_id):
            return PlainTextResponse("`id` must be a string or a number", status_code=400)
        customer_id = str(customer_id)[:MAX_NAME]
        name = first_name[:MAX_NAME] if isinstance(first_name, str) else None
        stand_in.set_first_name(customer_id, name)
        return JSONResponse({"id": customer_id})

    return [
        Route("/", page, methods=["GET"]),
        Route("/simulator/messages", messages, methods=["GET"]),
        Route("/simulator/customers", customer, methods=["POST"]),
    ]
