"""Talking to the Graph API: the Send API and the User Profile API, with timeouts, retries and backoff.

One `httpx.AsyncClient` is shared by every call. Transient failures (timeouts, connection errors, 5xx, 429,
and the platform's transient codes) are retried with exponential backoff and full jitter until a deadline;
permanent ones fail at once with the platform's code and subcode.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)


class _RedactCredentials(logging.Filter):
    """httpx logs request URLs at INFO and Graph URLs carry the page token: redact it, whatever the config."""

    _pattern = re.compile(r"(access_token|appsecret_proof)=[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "access_token" in message or "appsecret_proof" in message:
            record.msg, record.args = self._pattern.sub(r"\1=***", message), ()
        return True


logging.getLogger("httpx").addFilter(_RedactCredentials())

# Graph API error codes worth retrying: 1 unknown, 2 service unavailable, 4 / 17 / 32 / 613 rate limits.
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 613})
TOKEN_INVALID = 190


class SendError(Exception):
    """A Graph API call that did not succeed; `code`/`subcode` are the platform's when it gave them."""

    def __init__(self, reason: str, *, code: int | None = None, subcode: int | None = None, transient: bool):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.subcode = subcode
        self.transient = transient


class PermanentSendError(SendError):
    def __init__(self, reason: str, *, code: int | None = None, subcode: int | None = None):
        super().__init__(reason, code=code, subcode=subcode, transient=False)


class TransientSendError(SendError):
    def __init__(self, reason: str, *, code: int | None = None, subcode: int | None = None):
        super().__init__(reason, code=code, subcode=subcode, transient=True)


@dataclass(frozen=True)
class RetryPolicy:
    deadline_s: float = 20.0  # give up on a message after this long, all attempts together
    first_backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    request_timeout_s: float = 5.0  # one attempt, connect to last byte


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
        profile_cache_size: int = 10_000,
    ) -> None:
        self.retry = retry or RetryPolicy()
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

    async def send(self, recipient_id: str, body: dict) -> str | None:
        """POST a Send API body; returns the platform's message id. Raises SendError."""
        payload = await self._call("POST", "me/messages", json=body)
        message_id = payload.get("message_id") if isinstance(payload, dict) else None
        return message_id if isinstance(message_id, str) else None

    async def first_name(self, customer_id: str) -> str | None:
        """The customer's first name, or None when the profile cannot be had: the greeting goes on without."""
        if customer_id in self._names:
            self._names.move_to_end(customer_id)
            return self._names[customer_id]
        try:
            # Profile lookups are a courtesy: a short deadline, so the welcome is not held up.
            payload = await self._call("GET", customer_id, params={"fields": "first_name"}, deadline_s=3.0)
        except SendError as exc:
            log.info("no profile for a customer (%s); greeting without a name", exc.reason)
            return None  # not cached: the next conversation tries again
        name = payload.get("first_name") if isinstance(payload, dict) else None
        name = name.strip() if isinstance(name, str) and name.strip() else None
        self._names[customer_id] = name
        if len(self._names) > self._names_size:
            self._names.popitem(last=False)
        return name

    async def _call(self, method: str, path: str, *, deadline_s: float | None = None, **kwargs) -> object:
        policy = self.retry
        deadline = time.monotonic() + (deadline_s or policy.deadline_s)
        backoff = policy.first_backoff_s
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            try:
                timeout = httpx.Timeout(max(0.05, min(policy.request_timeout_s, remaining)))
                response = await self._client.request(method, path, timeout=timeout, **kwargs)
                return self._check(response)
            except TransientSendError as exc:
                error: SendError = exc
            except httpx.TimeoutException:
                error = TransientSendError("timed out")
            except httpx.TransportError as exc:
                error = TransientSendError(f"connection failed: {type(exc).__name__}")
            except PermanentSendError as exc:
                if exc.code == TOKEN_INVALID and not self._token_warned:
                    self._token_warned = True
                    log.error(
                        "the Graph API rejects the page access token (code 190, subcode %s): no message "
                        "can be sent until PROMOBOT_PAGE_TOKEN is replaced",
                        exc.subcode,
                    )
                raise
            # Full jitter: concurrent retries spread out instead of hitting a recovering server together.
            pause = random.uniform(0, backoff)  # jitter, not cryptography
            if time.monotonic() + pause >= deadline:
                error.reason = f"{error.reason} (gave up after {attempt} attempts)"
                raise error
            log.debug("Graph API %s %s failed (%s); retrying in %.2f s", method, path, error.reason, pause)
            await asyncio.sleep(pause)
            backoff = min(backoff * 2, policy.max_backoff_s)

    @staticmethod
    def _check(response: httpx.Response) -> object:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_success:
            if payload is None:
                raise TransientSendError(f"HTTP {response.status_code} with a body that is not JSON")
            return payload
        error = payload.get("error") if isinstance(payload, dict) else None
        error = error if isinstance(error, dict) else {}
        code = error.get("code") if isinstance(error.get("code"), int) else None
        subcode = error.get("error_subcode") if isinstance(error.get("error_subcode"), int) else None
        message = error.get("message") if isinstance(error.get("message"), str) else response.reason_phrase
        reason = f"HTTP {response.status_code}: {message}"
        transient = (
            error.get("is_transient") is True
            or code in TRANSIENT_CODES
            or response.status_code == 429
            or response.status_code >= 500
        )
        if transient:
            raise TransientSendError(reason, code=code, subcode=subcode)
        raise PermanentSendError(reason, code=code, subcode=subcode)
