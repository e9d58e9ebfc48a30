"""A fake Graph API: a real HTTP server on loopback that answers Send and User Profile calls.

Tests script how it answers each customer (errors, slowness, rate limits) and read what it received. The
`graph` fixture (a plugin, registered in tests/conftest.py) serves one for a test.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest

from bot.graph_batch import BatchEntry, read_batch
from tests.support.home import PAGE_TOKEN


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: dict | list | None = None  # None: the platform's success body
    delay_s: float = 0.0


def graph_error(
    code: int, subcode: int | None = None, *, status: int = 400, transient: bool = False
) -> Answer:
    error = {"message": f"(#{code}) fake error", "type": "OAuthException", "code": code, "fbtrace_id": "AbC"}
    if subcode is not None:
        error["error_subcode"] = subcode
    if transient:
        error["is_transient"] = True
    return Answer(status, {"error": error})


class FakeGraph:
    def __init__(self, token: str) -> None:
        self.token = token
        self.sent: list[dict] = []  # {"recipient", "body", "message_id"} for each accepted send
        self.attempts: dict[str, int] = {}
        self.profile_calls: list[str] = []
        self.batches: list[int] = []  # the number of calls in each batch request received
        self.send_log: list[tuple[float, str, int]] = []  # (time.monotonic(), customer, status; 0: hung)
        self.names: dict[str, str] = {}
        self._sends: dict[str, list[Answer]] = {}
        self._profiles: dict[str, list[Answer]] = {}
        # The page the token is for, the token's app, and each app's webhook fields on the page (GET /me,
        # GET /app, GET and POST /{page}/subscribed_apps); `subscribing` lists each POST's fields.
        self.page = {"id": "100000000000001", "name": "Corner Bakery"}
        self.app = {"id": "700000000000001", "name": "promobot"}
        self.subscriptions: dict[str, list[str]] = {}
        self.subscribing: list[str] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeGraph:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script_sends(self, customer: str, *answers: Answer) -> None:
        """The next sends to `customer` get these answers, in order; later ones succeed."""
        with self._lock:
            self._sends[customer] = list(answers)

    def script_profile(self, customer: str, *answers: Answer) -> None:
        with self._lock:
            self._profiles[customer] = list(answers)

    def messages_to(self, customer: str) -> list[dict]:
        with self._lock:
            return [s["body"]["message"] for s in self.sent if s["recipient"] == customer]

    def wait_for(self, customer: str, count: int, timeout_s: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            messages = self.messages_to(customer)
            if len(messages) >= count:
                return messages
            time.sleep(0.02)
        raise AssertionError(f"{customer} got {self.messages_to(customer)}, expected {count} messages")

    def _next(self, scripts: dict[str, list[Answer]], customer: str) -> Answer:
        with self._lock:
            queue = scripts.get(customer)
            return queue.pop(0) if queue else Answer()

    def _send(self, body: dict) -> tuple[Answer, dict]:
        """How a Send API call is answered (recording it when it succeeds), and the success body."""
        customer = body["recipient"]["id"]
        with self._lock:
            self.attempts[customer] = self.attempts.get(customer, 0) + 1
        answer = self._next(self._sends, customer)
        with self._lock:
            self.send_log.append((time.monotonic(), customer, 0 if answer.delay_s else answer.status))
        message_id = f"m_fake{next(self._ids):06d}"
        if answer.status == 200 and answer.body is None and not answer.delay_s:
            with self._lock:
                self.sent.append({"recipient": customer, "body": body, "message_id": message_id})
        return answer, {"recipient_id": customer, "message_id": message_id}

    def _profile(self, customer: str) -> tuple[Answer, dict]:
        with self._lock:
            self.profile_calls.append(customer)
        profile = {"id": customer}
        if customer in self.names:
            profile["first_name"] = self.names[customer]
        return self._next(self._profiles, customer), profile

    def _page_call(self, method: str, path: str, fields: str | None) -> dict | None:
        """The answer to a call about the page or its app; None for any other call."""
        name = path.rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            if method == "GET" and name in ("me", "app"):
                return dict(self.page if name == "me" else self.app)
            if name != "subscribed_apps":
                return None
            if method == "POST":
                self.subscribing.append(fields or "")
                self.subscriptions[self.app["id"]] = (fields or "").split(",")
                return {"success": True}
            apps = [
                {"id": app_id, "name": "an app", "subscribed_fields": list(subscribed)}
                for app_id, subscribed in self.subscriptions.items()
            ]
            return {"data": apps}

    def _batch(self, form: dict[str, str]) -> list[dict | None]:
        """The answers to a batch request's calls.

        A call scripted to hang holds up the whole batch, and the batch then answers null for every call
        (not done in time, as the platform answers); the other calls are not processed, so their scripts wait
        for their retries.
        """
        entries = read_batch(form)
        with self._lock:
            self.batches.append(len(entries))
        for entry in entries:
            scripts, customer = self._script_of(entry)
            with self._lock:
                queue = scripts.get(customer)
                hang = queue[0].delay_s if queue else 0.0
                if hang:
                    queue.pop(0)
                    if scripts is self._sends:
                        self.attempts[customer] = self.attempts.get(customer, 0) + 1
            if hang:
                time.sleep(hang)
                return [None] * len(entries)
        answers: list[dict | None] = []
        for entry in entries:
            page_call = self._page_call(entry.method, entry.path, entry.body.get("subscribed_fields"))
            if page_call is not None:
                answers.append({"code": 200, "body": json.dumps(page_call)})
                continue
            if entry.method == "POST" and entry.path.endswith("me/messages"):
                answer, default = self._send(entry.body)
            elif entry.method == "GET":
                answer, default = self._profile(entry.path.rstrip("/").rsplit("/", 1)[-1])
            else:
                answer, default = graph_error(100), {}
            body = answer.body if answer.body is not None else default
            answers.append({"code": answer.status, "body": json.dumps(body)})
        return answers

    def _script_of(self, entry: BatchEntry) -> tuple[dict[str, list[Answer]], str]:
        if entry.method == "POST":
            return self._sends, str(entry.body.get("recipient", {}).get("id"))
        return self._profiles, entry.path.rstrip("/").rsplit("/", 1)[-1]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, answer: Answer, default: dict) -> None:
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                payload = json.dumps(answer.body if answer.body is not None else default).encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting, as it should

            def _authorized(self, query: dict) -> bool:
                if query.get("access_token") == [fake.token]:
                    return True
                self._reply(graph_error(190, 463), {})
                return False

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if not self._authorized(parse_qs(parts.query)):
                    return
                if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                    answers = fake._batch(dict(parse_qsl(raw.decode())))
                    self._reply(Answer(body=answers), {})
                    return
                if parts.path.endswith("/subscribed_apps"):
                    fields = json.loads(raw).get("subscribed_fields")
                    self._reply(Answer(), fake._page_call("POST", parts.path, fields) or {})
                    return
                if not parts.path.endswith("/me/messages"):
                    self._reply(graph_error(100), {})
                    return
                answer, default = fake._send(json.loads(raw))
                if answer.delay_s:
                    # A hung platform: the client gives up first, and the message is not sent.
                    time.sleep(answer.delay_s)
                    return
                self._reply(answer, default)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if not self._authorized(parse_qs(parts.query)):
                    return
                page_call = fake._page_call("GET", parts.path, None)
                if page_call is not None:
                    self._reply(Answer(), page_call)
                    return
                answer, profile = fake._profile(parts.path.rstrip("/").rsplit("/", 1)[-1])
                self._reply(answer, profile)

        return Handler


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    """A fake Graph API for the test page's token, serving while the test runs."""
    with FakeGraph(PAGE_TOKEN) as fake:
        yield fake
