"""The webhook: the platform's notifications checked, recorded with their replies, then acknowledged."""

from __future__ import annotations

import contextlib
import hmac
import logging

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from bot import flow
from bot.database import DatabaseError
from bot.messenger import SIGNATURE_HEADER, MalformedBody, parse_body, verify_signature
from bot.runtime import Runtime, Sending

log = logging.getLogger("promobot")

# Real webhook bodies reach hundreds of KB (batched entries); anything past this is not the platform.
MAX_BODY_BYTES = 4 * 1024 * 1024


async def verify(request: Request) -> Response:
    """GET /webhook, the subscription handshake: echo the challenge when the verify token matches."""
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    token = params.get("hub.verify_token", "")
    if params.get("hub.mode") == "subscribe" and hmac.compare_digest(
        token.encode(), runtime.settings.verify_token.encode()
    ):
        return PlainTextResponse(params.get("hub.challenge", ""))
    return PlainTextResponse("verification failed", status_code=403)


class WebhookReceiver:
    """/webhook, as a plain ASGI app: POST, the route every notification takes, without a Request object and
    a new Response for each (every error it can meet is answered as an HTTP status); GET, the handshake."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await (await verify(Request(scope, receive)))(scope, receive, send)
            return
        response = await self.answer(scope["app"].state.runtime, scope, receive)
        if response is ACKNOWLEDGED:
            await send(_ACKNOWLEDGED_START)
            await send(_ACKNOWLEDGED_BODY)
        else:
            await response(scope, receive, send)

    async def answer(self, runtime: Runtime, scope: Scope, receive: Receive) -> Response:
        """The response to one notification: 200 once its events are committed, or the error's status."""
        declared = signature = None
        for name, value in scope["headers"]:  # ASGI servers give the names in lower case
            if name == b"content-length" and declared is None:
                declared = value
            elif name == _SIGNATURE and signature is None:
                signature = value.decode("latin-1")
        # bytes.isdigit() is ASCII only; past twelve digits int() may refuse them, and no body is that big.
        if declared is not None and (
            not declared.isdigit() or len(declared) > 12 or int(declared) > MAX_BODY_BYTES
        ):
            return PlainTextResponse("body too large", status_code=413)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return PlainTextResponse("client went away", status_code=400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return PlainTextResponse("body too large", status_code=413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)  # nearly always one: no copy
        if not verify_signature(runtime.settings.app_secret, body, signature):
            return PlainTextResponse("bad or missing signature", status_code=403)
        try:
            inbound = parse_body(body)
        except MalformedBody as exc:
            return PlainTextResponse(f"malformed notification: {exc}", status_code=400)

        events = [
            event for action in inbound for event in flow.record(runtime.campaign, action, runtime.rules)
        ]
        if not events:
            return ACKNOWLEDGED
        replies = [reply for event in events for reply in flow.plan_replies(event)]
        try:
            # Only events not recorded before are kept, with their replies: a redelivered webhook, whichever
            # instance it reaches, is recorded and answered once.
            new = await runtime.database.record(events, replies)
        except DatabaseError as exc:
            log.error("webhook not acknowledged, events could not be recorded: %s", exc)
            # The platform redelivers what is not acknowledged: nothing is lost while the store recovers.
            return PlainTextResponse(
                "events could not be recorded", status_code=503, headers={"Retry-After": "5"}
            )
        if replies and new:
            if runtime.sending is Sending.INLINE:
                with contextlib.suppress(DatabaseError):  # owed in the outbox: the next invocation sends them
                    await runtime.sender.send_due()
            else:
                runtime.replies_owed()
        return ACKNOWLEDGED


ACKNOWLEDGED = PlainTextResponse("EVENT_RECEIVED")  # the same for every notification: made once
_ACKNOWLEDGED_START = {"type": "http.response.start", "status": 200, "headers": ACKNOWLEDGED.raw_headers}
_ACKNOWLEDGED_BODY = {"type": "http.response.body", "body": ACKNOWLEDGED.body}
_SIGNATURE = SIGNATURE_HEADER.lower().encode()
WEBHOOK = WebhookReceiver()
