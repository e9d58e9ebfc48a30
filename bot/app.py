"""Wiring: the HTTP routes, and the lifespan that opens the campaign, the event log and the Graph client.

A webhook POST is checked (size, signature, shape), turned into events by the flow, made durable in the
event log, and only then acknowledged; the replies go out after the acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import signal
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bot import flow
from bot.campaign import Campaign, CampaignError, load_campaign
from bot.config import ConfigError, Mode, Settings
from bot.events import Event
from bot.graph import GraphClient, RetryPolicy
from bot.messenger import SIGNATURE_HEADER, MalformedBody, parse_body, verify_signature
from bot.replies import Replier, owed_replies, utc_now
from bot.reply_worker import ReplyProcess
from bot.simulator import GraphStandIn, simulator_routes
from bot.store import EventLog, StoreError

log = logging.getLogger("promobot")

# Real webhook bodies reach hundreds of KB (batched entries); anything past this is not the platform.
MAX_BODY_BYTES = 4 * 1024 * 1024
SHUTDOWN_REPLY_GRACE_S = 10.0
SEEN_IDS = 100_000


@dataclass
class Runtime:
    """What the routes share, built by the lifespan."""

    settings: Settings
    campaign: Campaign
    events: EventLog
    graph: GraphClient
    replier: Replier
    outbox: Replier | ReplyProcess  # where replies go after the acknowledgement
    app_secret: str
    verify_token: str
    image_path: Path | None
    inline_replies: bool
    seen: OrderedDict[str, None]

    def first_time(self, event_id: str) -> bool:
        if event_id in self.seen:
            return False
        self.seen[event_id] = None
        if len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        return True


def image_url(settings: Settings, campaign: Campaign) -> str:
    if campaign.image_is_local:
        return f"{settings.public_url}/media/{campaign.thanks_image}"
    return campaign.thanks_image


def create_app(
    settings: Settings,
    *,
    graph_transport: httpx.AsyncBaseTransport | None = None,
    inline_replies: bool = False,
    retry: RetryPolicy | None = None,
    owed_from_store: bool = True,
    reply_process: bool = False,
) -> PromobotApp:
    """The bot. `graph_transport` replaces the network under the Graph client (tests, the simulator).

    `inline_replies` sends replies before answering the webhook, for hosts that freeze the process once the
    response is out (AWS Lambda). `owed_from_store=False` looks for replies owed after a crash only among the
    events the write-ahead log replayed, not in the store: right where every run flushes before it ends.
    `reply_process` sends replies from a worker process (`python -m bot serve` does), so that the Graph
    API's cost never slows acknowledgements; local mode keeps them in-process, for its built-in stand-in.
    It also has the event log fsync from a process of its own (quicker under load than a thread).
    In local mode (`settings.mode`) the app talks to a stand-in Graph API and serves the Messenger simulator
    at `/`; in any other mode those routes do not exist.
    """
    local = settings.mode is Mode.LOCAL
    stand_in = GraphStandIn() if local else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        campaign_dir = settings.campaign.parent
        campaign = load_campaign(settings.campaign, data_dir=campaign_dir)
        transport = graph_transport or stand_in
        if local:
            log.warning(
                "local mode: promobot talks to its built-in Messenger simulator at %s/ instead of Facebook",
                settings.public_url,
            )
        elif campaign.image_is_local and not settings.public_url.startswith("https://"):
            log.warning(
                "the thank-you image is served at %s, but Messenger only fetches https URLs: set "
                "PROMOBOT_PUBLIC_URL to the bot's public https address",
                settings.public_url,
            )
        events = await asyncio.to_thread(
            EventLog.open,
            settings.data,
            settings.wal_path,
            flush_age_s=settings.flush_seconds,
            sync_process=reply_process,
        )
        graph = GraphClient(
            base_url=settings.graph_url,
            version=settings.graph_version,
            page_token=settings.page_token,
            app_secret=settings.app_secret,
            retry=retry
            or RetryPolicy(
                request_timeout_s=settings.graph_timeout_s, deadline_s=4 * settings.graph_timeout_s
            ),
            transport=transport,
        )
        replier = Replier(
            campaign,
            graph,
            events,
            image_url=image_url(settings, campaign),
            max_age_s=settings.reply_max_age_s,
        )
        use_worker = reply_process and not inline_replies and not local
        outbox = ReplyProcess(events, replier) if use_worker else replier
        if isinstance(outbox, ReplyProcess):
            await outbox.start_worker()
        runtime = Runtime(
            settings=settings,
            campaign=campaign,
            events=events,
            graph=graph,
            replier=replier,
            outbox=outbox,
            app_secret=settings.app_secret,
            verify_token=settings.verify_token,
            image_path=campaign_dir / campaign.thanks_image if campaign.image_is_local else None,
            inline_replies=inline_replies,
            seen=OrderedDict(),
        )
        app.state.runtime = runtime
        try:
            # Clicks acknowledged by a previous run that died before answering them.
            if owed_from_store:
                horizon = utc_now() - timedelta(seconds=settings.reply_max_age_s) - timedelta(days=1)
                recent = await asyncio.to_thread(events.recent, horizon)
            else:
                recent = events.replayed
            for event in recent:
                runtime.first_time(event.event_id)
            owed = owed_replies(recent)
            if owed:
                log.info("%d replies owed from before the last stop; sending them now", len(owed))
                outbox.start(owed)
            log.info("promobot ready: campaign %r, events in %s", campaign.id, settings.data)
            yield
        finally:
            if isinstance(outbox, ReplyProcess):
                await outbox.close(SHUTDOWN_REPLY_GRACE_S)
            else:
                await replier.drain(SHUTDOWN_REPLY_GRACE_S)
            await graph.aclose()
            await asyncio.to_thread(events.close)
            log.info("promobot stopped; events flushed")

    app = PromobotApp(
        routes=[
            Route("/webhook", WEBHOOK, methods=["POST"]),
            Route("/webhook", verify, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/media/{name:path}", media, methods=["GET", "HEAD"]),
            *(simulator_routes(stand_in, settings.app_secret) if stand_in is not None else []),
        ],
        lifespan=lifespan,
    )
    return app


# -- routes --------------------------------------------------------------------------------------------------


async def verify(request: Request) -> Response:
    """The subscription handshake: echo the challenge when the verify token matches."""
    runtime: Runtime = request.app.state.runtime
    params = request.query_params
    token = params.get("hub.verify_token", "")
    if params.get("hub.mode") == "subscribe" and hmac.compare_digest(
        token.encode(), runtime.verify_token.encode()
    ):
        return PlainTextResponse(params.get("hub.challenge", ""))
    return PlainTextResponse("verification failed", status_code=403)


class WebhookReceiver:
    """POST /webhook, as a plain ASGI app: the route every notification takes, without a Request object,
    an exception-wrapping layer and a new Response for each. `PromobotApp` calls it ahead of its router."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.answer(scope["app"].state.runtime, scope, receive)
        if response is ACKNOWLEDGED:
            await send(_ACKNOWLEDGED_START)
            await send(_ACKNOWLEDGED_BODY)
        else:
            await response(scope, receive, send)

    async def answer(self, runtime: Runtime, scope: Scope, receive: Receive) -> Response:
        declared = signature = None
        for name, value in scope["headers"]:  # ASGI servers give the names in lower case
            if name == b"content-length" and declared is None:
                declared = value
            elif name == _SIGNATURE and signature is None:
                signature = value.decode("latin-1")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
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
        if not verify_signature(runtime.app_secret, body, signature):
            return PlainTextResponse("bad or missing signature", status_code=403)
        try:
            inbound = parse_body(body)
        except MalformedBody as exc:
            return PlainTextResponse(f"malformed notification: {exc}", status_code=400)

        new: list[Event] = []
        for action in inbound:
            for event in flow.record(runtime.campaign, action):
                if runtime.first_time(event.event_id):  # a redelivered webhook is recorded and answered once
                    new.append(event)
        if new:
            try:
                await runtime.events.append(new)
            except StoreError as exc:
                for event in new:
                    runtime.seen.pop(event.event_id, None)
                log.error("webhook not acknowledged, events could not be recorded: %s", exc)
                # The platform redelivers what is not acknowledged: nothing is lost while the store recovers.
                return PlainTextResponse(
                    "events could not be recorded", status_code=503, headers={"Retry-After": "5"}
                )
        replies = [reply for event in new for reply in flow.plan_replies(event)]
        if runtime.inline_replies:
            await runtime.replier.send(replies)
        else:
            runtime.outbox.start(replies)
        return ACKNOWLEDGED


ACKNOWLEDGED = PlainTextResponse("EVENT_RECEIVED")  # the same for every notification: made once
_ACKNOWLEDGED_START = {"type": "http.response.start", "status": 200, "headers": ACKNOWLEDGED.raw_headers}
_ACKNOWLEDGED_BODY = {"type": "http.response.body", "body": ACKNOWLEDGED.body}
_SIGNATURE = SIGNATURE_HEADER.lower().encode()
WEBHOOK = WebhookReceiver()


class PromobotApp(Starlette):
    """The Starlette app, with the route almost every request takes dispatched ahead of the middleware.

    A notification has no use for Starlette's error and exception layers and its router (a fifth of what
    acknowledging one costs): the webhook answers every error it can meet itself, as an HTTP status.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/webhook" and scope["method"] == "POST":
            scope["app"] = self
            await WEBHOOK(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def healthz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        await asyncio.to_thread(runtime.events.check)
    except StoreError as exc:
        return JSONResponse({"status": "unavailable", "store": str(exc)}, status_code=503)
    return JSONResponse(
        {"status": "ok", "campaign": runtime.campaign.id, "replies_in_flight": runtime.outbox.pending}
    )


async def media(request: Request) -> Response:
    """The campaign's local thank-you image, and nothing else from the data directory."""
    runtime: Runtime = request.app.state.runtime
    if runtime.image_path is None or request.path_params["name"] != runtime.campaign.thanks_image:
        return PlainTextResponse("not found", status_code=404)
    return FileResponse(runtime.image_path, headers={"Cache-Control": "public, max-age=3600"})


# -- running it ----------------------------------------------------------------------------------------------


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs request URLs at INFO, and Graph URLs carry the page token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def load_settings(mode: Mode) -> tuple[Settings, Campaign]:
    """Settings for `mode` and the campaign, checked before the server starts; exits with the reason when
    they are wrong."""
    try:
        settings = Settings.from_env(mode=mode)
        campaign = load_campaign(settings.campaign, data_dir=settings.campaign.parent)
    except (ConfigError, CampaignError) as exc:
        sys.exit(f"promobot cannot start: {exc}")
    return settings, campaign


def tune_garbage_collector() -> None:
    """For a long-running process (the server, the reply worker), once it has made what it starts with.

    All of that lives as long as the process: frozen out of the cyclic garbage collector's sight, its full
    collections stop walking tens of thousands of objects (a 30+ ms pause each, the webhook's p99). And the
    young generation is collected every 10,000 allocations instead of 700: a webhook allocates dozens of
    containers that reference counting frees, and the default ran a collection every 50 or so requests
    (about 2 µs of each one's CPU) looking for cycles that are seldom there.
    """
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


def serve(mode: Mode, host: str = "127.0.0.1", port: int = 8000) -> None:
    """The bot under uvicorn until SIGINT/SIGTERM, then flush and exit 0.

    `python -m bot serve` runs it in server mode; `run-local` in local mode, on 127.0.0.1 only
    (`bot.local.serve_local`).
    """
    import uvicorn

    settings, _ = load_settings(mode)
    configure_logging(settings.log_level)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again with the handlers it
    # found at start. Finding these, it returns instead: a stop that flushed every event exits with 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda signum, frame: None)
    app = create_app(settings, reply_process=True)
    tune_garbage_collector()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_REPLY_GRACE_S,
        # Nothing is built from a request's client address or scheme (links use PROMOBOT_PUBLIC_URL): the
        # X-Forwarded-* headers of a proxy in front need no reading.
        proxy_headers=False,
        access_log=False,
        server_header=False,  # no need to tell the world which server answers
    )
