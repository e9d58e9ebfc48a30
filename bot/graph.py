"""The Graph API client: the Send and User Profile APIs, with timeouts, retries and batching.

Calls that queue up together go out as one batch request (docs/design.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import random
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import quote

import httpx

from bot.graph_batch import batch_entry, form_quote, plain
from bot.graph_errors import (
    RATE_LIMIT_CODES,
    TOKEN_INVALID,
    TRANSIENT_CODES,
    PermanentSendError,
    RetryPolicy,
    SendError,
    TransientSendError,
    Usage,
    usage_of,
)

log = logging.getLogger(__name__)

BATCH_LIMIT = 50  # the platform's most calls in one batch request


class _TurnTooLate(TransientSendError):
    """A call whose deadline passed while it waited in the client's queue: it was not sent."""


class _BatchTimedOut(TransientSendError):
    """No answer in time to a batch request: one slow call holds up all of them, so each goes alone next."""


class _RedactCredentials(logging.Filter):
    """httpx logs request URLs at INFO and Graph URLs carry the page token: redact it, whatever the config."""

    _pattern = re.compile(r"(access_token|appsecret_proof)=[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "access_token" in message or "appsecret_proof" in message:
            record.msg, record.args = self._pattern.sub(r"\1=***", message), ()
        return True


logging.getLogger("httpx").addFilter(_RedactCredentials())

Outcome = Callable[[object], None]  # gets a call's answer: the response body, or a SendError
_T = TypeVar("_T")


@dataclass(slots=True, eq=False)
class _Call:
    """A Graph API call waiting for its turn; `answer` gets the response body or a SendError."""

    method: str
    path: str
    params: Mapping[str, str] | None
    body: Mapping[str, object] | None
    deadline: float
    answer: Outcome
    alone: bool = False  # never in a batch request (its last one timed out)
    abandoned: bool = False  # its caller stopped waiting: not sent, not answered


class Attempts:
    """One Graph API call through its attempts, until it has an outcome or its caller abandons it.

    Each attempt waits in the client's queue; a transient failure is tried again after an exponential
    backoff with full jitter, as long as the deadline allows.
    """

    __slots__ = ("_attempt", "_backoff", "_call", "_client", "_error", "_outcome", "_timer")

    def __init__(
        self,
        client: GraphClient,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, object] | None,
        deadline: float,
        outcome: Outcome,
    ) -> None:
        self._client = client
        self._call = _Call(method, path, params, body, deadline, self._answered)
        self._outcome = outcome
        self._backoff = client.retry.first_backoff_s
        self._attempt = 0
        self._error: SendError | None = None
        self._timer: asyncio.TimerHandle | None = None

    def abandon(self) -> None:
        """Stop: no more attempts, no outcome (a call already on its way is not undone)."""
        self._call.abandoned = True
        if self._timer is not None:
            self._timer.cancel()

    def _next(self) -> None:
        self._timer = None
        self._attempt += 1
        self._client._enqueue(self._call)

    def _answered(self, answer: object) -> None:
        if not isinstance(answer, SendError):
            self._outcome(answer)
            return
        error, last = answer, self._error
        if isinstance(error, _TurnTooLate):
            if last is not None:
                # The deadline passed while the call waited for its turn: the failure worth telling is the
                # one that made it wait.
                waited, error = error, last.gave_up(self._attempt - 1)
                error.__cause__ = waited
        elif isinstance(error, TransientSendError):
            self._error = error
            call = self._call
            call.alone = call.alone or isinstance(error, _BatchTimedOut)
            # Full jitter: concurrent retries spread out instead of hitting a recovering server together.
            pause = random.uniform(0, self._backoff)  # jitter, not cryptography
            if time.monotonic() + pause < call.deadline:
                log.debug(
                    "Graph API %s %s failed (%s); retrying in %.2f s",
                    call.method,
                    call.path,
                    error.reason,
                    pause,
                )
                self._backoff = min(self._backoff * 2, self._client.retry.max_backoff_s)
                self._timer = asyncio.get_running_loop().call_later(pause, self._next)
                return
            error = error.gave_up(self._attempt)
        elif error.code == TOKEN_INVALID:
            self._client._token_rejected(error)
        self._outcome(error)


class GraphClient:
    """The Send and User Profile APIs of one page."""

    def __init__(
        self,
        *,
        base_url: str,
        version: str,
        page_token: str,
        app_secret: str | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 16,
        batch_size: int = BATCH_LIMIT,
        batch_window_s: float = 0.05,
        profile_cache_size: int = 10_000,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._batch_size = max(1, min(batch_size, BATCH_LIMIT))
        self._max_requests = max_connections
        self._waiting: deque[_Call] = deque()
        self._requests = 0  # HTTP requests under way
        self._window_s = batch_window_s
        self._pump_due: asyncio.AbstractEventLoop | None = None
        self._last_dispatch = float("-inf")
        self._dispatches: set[asyncio.Task[None]] = set()
        self._hold_until = float("-inf")  # time.monotonic() before which no call goes out (rate-limited)
        self._hold_began = float("-inf")  # when that hold was decided
        self._hold_s = 0.0  # the last hold guessed from refusals that stated no time
        self._near_limit = False  # the last usage read is past `retry.slow_at_usage_pct`: one request at once
        params = {"access_token": page_token}
        if app_secret:
            # Accepted always, required when the app enables "Require App Secret".
            params["appsecret_proof"] = hmac.new(
                app_secret.encode(), page_token.encode(), hashlib.sha256
            ).hexdigest()
        self._client = httpx.AsyncClient(
            base_url=f"{base_url.rstrip('/')}/{version}/",
            params=params,
            timeout=httpx.Timeout(self.retry.request_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            headers={"User-Agent": "promobot"},
        )
        self._names: OrderedDict[str, str | None] = OrderedDict()
        self._names_size = profile_cache_size
        self._token_warned = False

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, recipient_id: str, body: Mapping[str, object]) -> str | None:
        """POST a Send API body; returns the platform's message id. Raises SendError."""
        outcome: str | SendError | None = await self._outcome_of(
            lambda done: self.send_soon(recipient_id, body, done)
        )
        if isinstance(outcome, SendError):
            raise outcome
        return outcome

    async def first_name(self, customer_id: str) -> str | None:
        """The customer's first name, or None when the profile cannot be had: the greeting goes on without."""
        return await self._outcome_of(lambda done: self.first_name_soon(customer_id, done))

    async def get(
        self, path: str, params: Mapping[str, str] | None = None, *, deadline_s: float | None = None
    ) -> object:
        """GET a Graph API object or edge, e.g. `get("me", {"fields": "id,name"})`, through the client's
        retrying queue.

        Parameters: `path` relative to the version, never starting with "/"; `deadline_s` how long all
        attempts may take (default: the retry policy's).
        Returns: the decoded JSON body. Raises: SendError.
        """
        return await self._call("GET", path, params, None, deadline_s)

    async def post(self, path: str, body: Mapping[str, object], *, deadline_s: float | None = None) -> object:
        """POST `body`'s fields to a Graph API edge, e.g. `post("123/subscribed_apps", {...})`, as `get` does.

        Returns: the decoded JSON body. Raises: SendError.
        """
        return await self._call("POST", path, None, body, deadline_s)

    async def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, object] | None,
        deadline_s: float | None,
    ) -> object:
        deadline = self.retry.deadline_s if deadline_s is None else deadline_s
        outcome: object = await self._outcome_of(
            lambda done: self._submit(method, path, params, body, deadline, done)
        )
        if isinstance(outcome, SendError):
            raise outcome
        return outcome

    def send_soon(
        self, recipient_id: str, body: Mapping[str, object], outcome: Callable[[str | SendError | None], None]
    ) -> Attempts:
        """`send` without waiting: `outcome` gets the message id or the SendError. Values of the body may be
        `Encoded`."""

        def sent(answer: object) -> None:
            if isinstance(answer, SendError):
                outcome(answer)
                return
            message_id = answer.get("message_id") if isinstance(answer, dict) else None
            outcome(message_id if isinstance(message_id, str) else None)

        return self._submit("POST", "me/messages", None, body, self.retry.deadline_s, sent)

    def first_name_soon(self, customer_id: str, outcome: Callable[[str | None], None]) -> Attempts | None:
        """`first_name` without waiting: `outcome` gets it, at once when it is known already."""
        if customer_id in self._names:
            self._names.move_to_end(customer_id)
            outcome(self._names[customer_id])
            return None

        def answered(answer: object) -> None:
            if isinstance(answer, SendError):
                log.info("no profile for a customer (%s); greeting without a name", answer.reason)
                outcome(None)  # not cached: the next conversation tries again
                return
            name = answer.get("first_name") if isinstance(answer, dict) else None
            name = name.strip() if isinstance(name, str) and name.strip() else None
            self._names[customer_id] = name
            if len(self._names) > self._names_size:
                self._names.popitem(last=False)
            outcome(name)

        # Profile lookups are a courtesy: a short deadline, so the welcome is not held up.
        # Quoted: an id is the platform's digits, but a path it could bend must never reach another endpoint.
        path = quote(customer_id, safe="")
        return self._submit("GET", path, {"fields": "first_name"}, None, 3.0, answered)

    @staticmethod
    async def _outcome_of(start: Callable[[Callable[[_T], None]], Attempts | None]) -> _T:
        """Wait for the outcome a `*_soon` call gives; a caller that is cancelled abandons the call."""
        future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()

        def settle(outcome: _T) -> None:
            if not future.done():
                future.set_result(outcome)

        attempts = start(settle)
        try:
            return await future
        except asyncio.CancelledError:
            if attempts is not None:
                attempts.abandon()
            raise

    def _submit(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, object] | None,
        deadline_s: float,
        outcome: Outcome,
    ) -> Attempts:
        attempts = Attempts(self, method, path, params, body, time.monotonic() + deadline_s, outcome)
        attempts._next()
        return attempts

    def _token_rejected(self, error: SendError) -> None:
        if not self._token_warned:
            self._token_warned = True
            log.error(
                "the Graph API rejects the page access token (code 190, subcode %s): no message can be sent "
                "until PROMOBOT_PAGE_TOKEN is replaced",
                error.subcode,
            )

    # -- the queue: each call alone when the way is clear, batched when calls wait together ------------------

    def _enqueue(self, call: _Call) -> None:
        if call.deadline <= self._hold_until:
            # Held past its deadline: it fails now, not at the end of a hold that may last minutes (on the
            # loop's next turn: never before `send_soon` has returned).
            asyncio.get_running_loop().call_soon(self._held_too_long, call)
            return
        self._waiting.append(call)
        self._schedule()

    @staticmethod
    def _held_too_long(call: _Call) -> None:
        if not call.abandoned:
            _answer(call, _TurnTooLate("the Graph API asks to wait past its deadline"))

    def _fail_those_the_hold_outlasts(self) -> None:
        """Answer now the waiting calls whose deadline passes before the hold ends."""
        late = [call for call in self._waiting if call.deadline <= self._hold_until]
        if late:
            self._waiting = deque(call for call in self._waiting if call.deadline > self._hold_until)
            for call in late:  # (after the queue is whole: their callers may call again at once)
                self._held_too_long(call)

    def _schedule(self) -> None:
        """Send what waits: at once when the client is idle or a batch is full; else after a short window.

        A customer who writes while nothing else is going on gets an answer with no delay; under steady
        traffic, calls wait up to `batch_window_s` for company, so they go out as fewer, fuller batches.
        """
        loop = asyncio.get_running_loop()
        if self._pump_due is loop or not self._waiting:
            return
        self._pump_due = loop  # (a loop, not a flag: a loop that ended with a pump due leaves none behind)
        now = time.monotonic()
        idle = self._requests == 0 and now - self._last_dispatch > self._window_s
        if now < self._hold_until:
            loop.call_later(self._hold_until - now, self._pump)
        elif idle or len(self._waiting) >= self._batch_size:
            loop.call_soon(self._pump)
        else:
            loop.call_later(self._window_s, self._pump)

    def _pump(self) -> None:
        self._pump_due = None
        now = time.monotonic()
        if now < self._hold_until:  # asked to slow down since this pump was due
            self._schedule()
            return
        most = 1 if self._near_limit else self._max_requests
        while self._waiting and self._requests < most:
            calls: list[_Call] = []
            while self._waiting and len(calls) < self._batch_size:
                call = self._waiting.popleft()
                if call.abandoned:
                    continue
                if call.deadline <= now:
                    _answer(call, _TurnTooLate("waited past its deadline for its turn"))
                    continue
                if call.alone and calls:
                    self._waiting.appendleft(call)  # the next request is its own
                    break
                calls.append(call)
                if call.alone:
                    break
            if not calls:
                return
            self._requests += 1
            self._last_dispatch = now
            task = asyncio.create_task(self._dispatch(calls))
            self._dispatches.add(task)
            task.add_done_callback(self._dispatches.discard)

    async def _dispatch(self, calls: list[_Call]) -> None:
        sent_at = time.monotonic()
        try:
            usage: Usage | None = None
            try:
                outcomes, usage = await (self._alone(calls[0]) if len(calls) == 1 else self._batch(calls))
            except Exception as exc:  # a bug must not leave callers waiting: they retry, then record failure
                log.exception("Graph API request failed unexpectedly")
                outcomes = [TransientSendError(f"unexpected error: {type(exc).__name__}") for _ in calls]
            self._slow_down_if_asked(outcomes, usage, sent_at)
        finally:
            self._requests -= 1
            self._schedule()
        for call, outcome in itertools.zip_longest(calls, outcomes[: len(calls)]):
            if not call.abandoned:
                _answer(call, TransientSendError("no answer for this call") if outcome is None else outcome)

    def _slow_down_if_asked(self, outcomes: list[object], usage: Usage | None, sent_at: float) -> None:
        """Hold every call of this client when the platform asks to slow down: each call's own retries alone
        would keep knocking (and a page's limits are shared by all its calls).

        A time the platform states (usage headers, on any answer) is kept, up to a day; a refusal that states
        none holds `first_hold_s`, doubling while refusals go on, up to `max_hold_s`. Usage past
        `slow_at_usage_pct` sends one request at a time, `first_hold_s` apart, until an answer reports less.
        """
        retry = self.retry
        limited = [o for o in outcomes if isinstance(o, SendError) and o.code in RATE_LIMIT_CODES]
        if not limited and any(not isinstance(o, SendError) for o in outcomes):
            self._hold_s = 0.0  # a call got through
        percent = usage.percent if usage is not None else None
        if percent is not None and (percent >= retry.slow_at_usage_pct) != self._near_limit:
            self._near_limit = not self._near_limit
            if self._near_limit:
                log.warning(
                    "Graph API usage at %g%% of a rate limit: one request at a time, %g s apart",
                    percent,
                    retry.first_hold_s,
                )
            else:
                log.info("Graph API usage back under %g%% of its rate limits", retry.slow_at_usage_pct)
        if sent_at < self._hold_began:
            return  # under way when the hold began: its answer does not lengthen the hold
        now = time.monotonic()
        if usage is not None and usage.regain_s > 0:
            hold_s = usage.regain_s
            log.warning("the Graph API refuses calls for %g min more: no call until then", hold_s / 60)
        elif limited:
            self._hold_s = min(retry.max_hold_s, 2 * self._hold_s) if self._hold_s else retry.first_hold_s
            hold_s = self._hold_s
            log.warning(
                "the Graph API asks to slow down (code %s): no call for %g s", limited[0].code, hold_s
            )
        elif percent is not None and self._near_limit:
            hold_s = retry.first_hold_s  # the pace near the limit (logged once, above)
        else:
            return
        self._hold_began, self._hold_until = now, now + hold_s
        self._fail_those_the_hold_outlasts()

    def _timeout(self, deadline: float) -> httpx.Timeout:
        return httpx.Timeout(max(0.05, min(self.retry.request_timeout_s, deadline - time.monotonic())))

    async def _alone(self, call: _Call) -> tuple[list[object], Usage | None]:
        try:
            response = await self._client.request(
                call.method,
                call.path,
                params=call.params,
                json=plain(call.body) if call.body is not None else None,
                timeout=self._timeout(call.deadline),
            )
        except httpx.HTTPError as exc:
            return [_transport_error(exc)], None
        usage = usage_of(response.headers)
        try:
            return [self._check(response)], usage
        except SendError as exc:
            return [exc], usage

    async def _batch(self, calls: list[_Call]) -> tuple[list[object], Usage | None]:
        """The calls' outcomes, and the usage the batch request's answer reports (the calls' own answers carry
        no headers: `include_headers=false`)."""
        batch = json.dumps(
            [batch_entry(call.method, call.path, call.params, call.body) for call in calls],
            separators=(",", ":"),
        )
        try:
            response = await self._client.post(
                "",
                content=f"include_headers=false&batch={form_quote(batch)}".encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=self._timeout(max(call.deadline for call in calls)),
            )
        except httpx.TimeoutException:
            # Maybe one call the platform is slow to do: the others should not wait for it again.
            return [_BatchTimedOut("timed out in a batch request") for _ in calls], None
        except httpx.HTTPError as exc:
            return [_transport_error(exc) for _ in calls], None
        usage = usage_of(response.headers)
        try:
            answers = self._check(response)
        except SendError as exc:
            # The batch as a whole failed (bad token, rate limit, 5xx): so did each call in it.
            return [_copy(exc) for _ in calls], usage
        if not isinstance(answers, list) or len(answers) != len(calls):
            return [TransientSendError("a batch answer that does not match its calls") for _ in calls], usage
        outcomes: list[object] = []
        for answer in answers:
            if not isinstance(answer, dict) or not isinstance(answer.get("code"), int):
                # The platform answers null for calls it did not get to (a batch that ran out of time).
                outcomes.append(TransientSendError("not done within its batch request"))
                continue
            try:
                payload = json.loads(answer["body"]) if isinstance(answer.get("body"), str) else None
            except ValueError:
                payload = None
            try:
                outcomes.append(self._classify(answer["code"], payload, f"code {answer['code']}"))
            except SendError as exc:
                outcomes.append(exc)
        return outcomes, usage

    @classmethod
    def _check(cls, response: httpx.Response) -> object:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        return cls._classify(response.status_code, payload, response.reason_phrase)

    @staticmethod
    def _classify(status: int, payload: object, phrase: str) -> object:
        """The body of a successful answer; raises SendError for any other."""
        if 200 <= status < 300:
            if payload is None:
                raise TransientSendError(f"HTTP {status} with a body that is not JSON")
            return payload
        error = payload.get("error") if isinstance(payload, dict) else None
        error = error if isinstance(error, dict) else {}
        code = error.get("code") if isinstance(error.get("code"), int) else None
        subcode = error.get("error_subcode") if isinstance(error.get("error_subcode"), int) else None
        message = error.get("message") if isinstance(error.get("message"), str) else phrase
        reason = f"HTTP {status}: {message}"
        transient = (
            error.get("is_transient") is True or code in TRANSIENT_CODES or status == 429 or status >= 500
        )
        if transient:
            raise TransientSendError(reason, code=code, subcode=subcode)
        raise PermanentSendError(reason, code=code, subcode=subcode)


def _answer(call: _Call, outcome: object) -> None:
    try:
        call.answer(outcome)
    except Exception:  # one caller's bug must not keep the others of its batch from their answers
        log.exception("handling the answer to a Graph API call failed")


def _transport_error(exc: httpx.HTTPError) -> TransientSendError:
    if isinstance(exc, httpx.TimeoutException):
        return TransientSendError("timed out")
    return TransientSendError(f"connection failed: {type(exc).__name__}")


def _copy(exc: SendError) -> SendError:
    """A SendError of its own for each call of a failed batch: each is raised in its own caller."""
    kind = TransientSendError if exc.transient else PermanentSendError
    return kind(exc.reason, code=exc.code, subcode=exc.subcode)
