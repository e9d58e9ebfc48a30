"""Wiring: the HTTP routes, and the lifespan that opens the campaign, the store, the sender and the flusher.

A webhook POST is checked (size, signature, shape), turned into events by the flow, and recorded with the
replies it calls for in one transaction of the store; only then is it acknowledged. The sender sends the
replies from the store's outbox, and the flusher moves the events to Parquet.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bot import doctor, flow, privacy
from bot.campaign import Campaign, CampaignError, load_campaign
from bot.codes import CodesError, load_codes
from bot.config import ConfigError, Mode, Settings
from bot.database import Database, DatabaseError
from bot.deletions import deletion_request
from bot.flusher import Flusher
from bot.graph import GraphClient, RetryPolicy
from bot.messenger import SIGNATURE_HEADER, MalformedBody, parse_body, verify_signature
from bot.pool import LOW_POOL_SHARE
from bot.replies import Replier
from bot.sender import IDLE_POLL_S, LEASE_MARGIN_S, Sender, SenderProcess, release_leases
from bot.simulator import GraphStandIn, simulator_routes
from bot.store import FileStore
from bot.till import till_routes

log = logging.getLogger("promobot")

# Real webhook bodies reach hundreds of KB (batched entries); anything past this is not the platform.
MAX_BODY_BYTES = 4 * 1024 * 1024
SHUTDOWN_REPLY_GRACE_S = 10.0
# Replies are sent before a Lambda's webhook is answered, and Messenger expects the answer within seconds.
INLINE_RETRY = RetryPolicy(deadline_s=3.0, request_timeout_s=1.5, first_backoff_s=0.1, max_backoff_s=1.0)


class Sending(StrEnum):
    """Where replies are sent."""

    INLINE = "inline"  # before acknowledging: the host freezes the process once it has answered (Lambda)
    TASK = "task"  # by a task of this process (local mode's stand-in Graph API; a transport given by tests)
    PROCESS = "process"  # by `python -m bot.sender`: never on the event loop that acknowledges webhooks


@dataclass
class Runtime:
    """What the routes share, built by the lifespan."""

    settings: Settings
    campaign: Campaign
    database: Database
    sender: Sender  # sends in this process on Lambda (inline) and in local mode (task)
    sending: Sending
    flusher: Flusher
    app_secret: str
    verify_token: str
    images: dict[str, Path]  # the local thank-you images served under /media/, by name
    rules: flow.PageRules  # opt-out and opt-in words, the bot's app id, the takeover's pause


def image_url(settings: Settings, campaign: Campaign) -> str:
    if campaign.image_is_local:
        return f"{settings.public_url}/media/{campaign.thanks_image}"
    return campaign.thanks_image


def variant_image_urls(settings: Settings, campaign: Campaign) -> dict[str, str]:
    """The thank-you image URL of each of the campaign's variants, by name (none without variants)."""
    return {v.name: image_url(settings, campaign.for_variant(v.name)) for v in campaign.variants}


def graph_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None, retry: RetryPolicy | None = None
) -> GraphClient:
    """The Graph API client `settings` call for (Lambda: a retry policy that fits inside the webhook)."""
    if retry is None:
        retry = (
            INLINE_RETRY
            if settings.mode is Mode.LAMBDA
            else RetryPolicy(
                request_timeout_s=settings.graph_timeout_s, deadline_s=4 * settings.graph_timeout_s
            )
        )
    return GraphClient(
        base_url=settings.graph_url,
        version=settings.graph_version,
        page_token=settings.page_token,
        app_secret=settings.app_secret,
        retry=retry,
        transport=transport,
    )


def load_pool(database: Database, campaign: Campaign, campaign_dir: Path, settings: Settings) -> None:
    """Add the codes of the campaign's codes file to its pool (new lines join at start-up), and say how many
    are left. Raises CodesError for a file that cannot be used."""
    codes = load_codes(campaign_dir / (campaign.codes or ""))
    status = database.add_codes(campaign.id, codes, campaign.code_expiry)
    log.info(
        "campaign %r: %d single-use codes, %d not handed out yet", campaign.id, status.total, status.free
    )
    if status.free < LOW_POOL_SHARE * status.total:
        log.warning(
            "campaign %r has only %d of its %d codes left: add codes to %s and restart",
            campaign.id,
            status.free,
            status.total,
            campaign.codes,
        )
    if settings.mode is not Mode.LOCAL and not settings.public_url.startswith("https://"):
        log.warning(
            "codes link to the till page at %s/redeem/…: set PROMOBOT_PUBLIC_URL to the bot's public https "
            "address",
            settings.public_url,
        )


def build_sender(
    settings: Settings,
    campaign: Campaign,
    database: Database,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    retry: RetryPolicy | None = None,
    poll_s: float = IDLE_POLL_S,
) -> Sender:
    """The sender of `settings`' replies: its Graph client, its Replier, and a lease longer than a reply can
    take (a profile lookup and a send, each within the retry deadline)."""
    graph = graph_client(settings, transport, retry)
    replier = Replier(
        campaign,
        graph,
        image_url=image_url(settings, campaign),
        image_urls=variant_image_urls(settings, campaign),
        till_url=settings.public_url,
        max_age_s=settings.reply_max_age_s,
    )
    lease = timedelta(seconds=2 * graph.retry.deadline_s + LEASE_MARGIN_S)
    return Sender(database, replier, lease=lease, poll_s=poll_s)


def check_no_legacy_wal(settings: Settings) -> None:
    """Refuse to start over events an earlier promobot left unflushed in its write-ahead log.

    Raises: ConfigError naming the directory and what to do.
    """
    folder = settings.legacy_wal
    if folder.is_dir() and any(folder.glob("*.wal")):
        raise ConfigError(
            f"{folder} holds events an earlier promobot had not yet written to {settings.data}: start that "
            "version once more and stop it with Ctrl-C or SIGTERM (it writes them out), then start this one"
        )


def create_app(
    settings: Settings,
    *,
    graph_transport: httpx.AsyncBaseTransport | None = None,
    retry: RetryPolicy | None = None,
) -> Starlette:
    """The bot for `settings.mode`. `graph_transport` replaces the network under the Graph client (tests);
    `retry` its retry policy.

    In local mode the app talks to a stand-in Graph API and serves the Messenger simulator at `/`; in any
    other mode those routes do not exist. In Lambda mode replies are sent before the webhook is answered.
    """
    local = settings.mode is Mode.LOCAL
    stand_in = GraphStandIn() if local else None
    campaign_dir = settings.campaign.parent
    campaign = load_campaign(settings.campaign, data_dir=campaign_dir)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        check_no_legacy_wal(settings)
        if local:
            log.warning(
                "local mode: promobot talks to its built-in Messenger simulator at %s/ instead of Facebook",
                settings.public_url,
            )
        elif campaign.local_images and not settings.public_url.startswith("https://"):
            log.warning(
                "the thank-you image is served at %s, but Messenger only fetches https URLs: set "
                "PROMOBOT_PUBLIC_URL to the bot's public https address",
                settings.public_url,
            )
        database = await asyncio.to_thread(Database.open, settings.database, Path(settings.data))
        if campaign.single_use:
            await asyncio.to_thread(load_pool, database, campaign, campaign_dir, settings)
        sender = build_sender(
            settings, campaign, database, transport=graph_transport or stand_in, retry=retry
        )
        flusher = Flusher(database, FileStore(settings.data), interval_s=settings.flush_seconds).start()
        # Where replies are sent: inside the invocation on Lambda; in a process of its own for a server (its
        # Graph API calls then never take the event loop's time from acknowledging webhooks), unless the
        # caller gives a transport, which only this process has (tests; local mode's stand-in).
        if settings.mode is Mode.LAMBDA:
            sending = Sending.INLINE
        elif settings.mode is Mode.LOCAL or graph_transport is not None:
            sending = Sending.TASK
        else:
            sending = Sending.PROCESS
        process = SenderProcess() if sending is Sending.PROCESS else None
        if sending is Sending.TASK:
            if database.engine.name == "sqlite":
                await release_leases(database)
            sender.start()
        elif process is not None:
            await process.start()
        app.state.runtime = Runtime(
            settings=settings,
            campaign=campaign,
            database=database,
            sender=sender,
            sending=sending,
            flusher=flusher,
            app_secret=settings.app_secret,
            verify_token=settings.verify_token,
            images={name: campaign_dir / name for name in campaign.local_images},
            rules=flow.PageRules.from_settings(settings),
        )
        try:
            log.info(
                "promobot ready: campaign %r, state in %s, events in %s",
                campaign.id,
                database.engine.where,
                settings.data,
            )
            yield
        finally:
            if process is not None:
                await process.close(SHUTDOWN_REPLY_GRACE_S)
            await sender.close(SHUTDOWN_REPLY_GRACE_S)
            await sender.replier.graph.aclose()
            await asyncio.to_thread(flusher.close)
            await asyncio.to_thread(database.close)
            log.info("promobot stopped; events flushed")

    # The till's routes exist for a campaign of single-use codes; the store they use opens with the app.
    till = (
        till_routes(
            lambda: app.state.runtime.database,
            campaign,
            pin=settings.staff_pin,
            secret=settings.app_secret,
            secure_cookies=settings.public_url.startswith("https://"),
            public_url=settings.public_url,
        )
        if campaign.single_use
        else []
    )
    app = Starlette(
        routes=[
            Route("/webhook", WEBHOOK, methods=["POST"]),
            Route("/webhook", verify, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/media/{name:path}", media, methods=["GET", "HEAD"]),
            Route("/data-deletion", data_deletion, methods=["POST"]),
            Route(privacy.STATUS_PATH + "{code}", deletion_status, methods=["GET"]),
            *(simulator_routes(stand_in, settings.app_secret) if stand_in is not None else []),
            *till,
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
    """POST /webhook, as a plain ASGI app: the route every notification takes, without a Request object and
    a new Response for each. Every error it can meet is answered as an HTTP status."""

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
            elif runtime.sending is Sending.TASK:
                runtime.sender.wake()  # a sender process looks for work by itself
        return ACKNOWLEDGED


ACKNOWLEDGED = PlainTextResponse("EVENT_RECEIVED")  # the same for every notification: made once
_ACKNOWLEDGED_START = {"type": "http.response.start", "status": 200, "headers": ACKNOWLEDGED.raw_headers}
_ACKNOWLEDGED_BODY = {"type": "http.response.body", "body": ACKNOWLEDGED.body}
_SIGNATURE = SIGNATURE_HEADER.lower().encode()
WEBHOOK = WebhookReceiver()


async def healthz(request: Request) -> Response:
    """Liveness and readiness, public and cheap. With `?deep=1` and `Authorization: Bearer
    <PROMOBOT_HEALTH_TOKEN>`, also the doctor's checks (`checks`; the Graph API's cached for a minute), the
    worst of them as `status`, and 503 when one fails; without the token, 401 or 403 and nothing else."""
    runtime: Runtime = request.app.state.runtime
    deep = request.query_params.get("deep", "") not in ("", "0")
    if deep:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return PlainTextResponse(
                "the health token is needed", status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        expected = runtime.settings.health_token
        # An unset token matches nothing: the deep checks are off.
        if not expected or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            return PlainTextResponse("forbidden", status_code=403)
    try:
        await asyncio.to_thread(runtime.database.check)
        owed = await asyncio.to_thread(runtime.database.owed)
    except DatabaseError as exc:
        return JSONResponse({"status": "unavailable", "store": str(exc)}, status_code=503)
    health = {
        "status": "ok",
        "campaign": runtime.campaign.id,
        "replies_owed": owed,
    }
    if runtime.flusher.last_error is not None:
        # Events wait in the store meanwhile: the bot still works, the dashboard falls behind.
        health["flush_error"] = str(runtime.flusher.last_error)
    if not deep:
        return JSONResponse(health)
    checks = []
    if runtime.settings.mode is not Mode.LOCAL:  # local mode has no page: the simulator stands in
        cached = getattr(request.app.state, "graph_checks", None)
        if cached is None:
            cached = request.app.state.graph_checks = doctor.CachedGraphChecks()
        checks += await cached.get(runtime.sender.replier.graph, deadline_s=runtime.settings.graph_timeout_s)
    checks.append(doctor.version_check(runtime.settings.graph_version, runtime.database.clock().date()))
    checks += await asyncio.to_thread(
        doctor.local_health, runtime.database, flush_seconds=runtime.settings.flush_seconds
    )
    health["status"] = doctor.worst(checks)
    health["checks"] = [check.as_dict() for check in checks]
    return JSONResponse(health, status_code=503 if health["status"] is doctor.Status.FAIL else 200)


async def media(request: Request) -> Response:
    """The campaign's local thank-you images (its own and its variants'), and nothing else from the data
    directory."""
    runtime: Runtime = request.app.state.runtime
    path = runtime.images.get(request.path_params["name"])
    if path is None:
        return PlainTextResponse("not found", status_code=404)
    return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


MAX_DELETION_BODY_BYTES = 64 * 1024  # a signed_request is a few hundred bytes


async def data_deletion(request: Request) -> Response:
    """Meta's data deletion callback: a form with a `signed_request` signed with the app secret. A valid one
    is recorded and answered at once with its status page's URL and confirmation code; the deletion runs
    after the answer. Anything else is 400 and changes nothing."""
    runtime: Runtime = request.app.state.runtime
    body = await request.body()
    if len(body) > MAX_DELETION_BODY_BYTES:
        return PlainTextResponse("body too large", status_code=413)
    fields = parse_qs(body.decode("utf-8", errors="replace"))
    try:
        payload = privacy.read_signed_request(fields.get("signed_request", [""])[0], runtime.app_secret)
    except privacy.InvalidSignedRequest as exc:
        return PlainTextResponse(str(exc), status_code=400)
    database, files = runtime.database, runtime.flusher.files
    try:
        code = await asyncio.to_thread(
            privacy.request, database, str(payload["user_id"]), privacy.Reason.META_CALLBACK
        )
    except DatabaseError as exc:
        log.error("a data deletion request could not be recorded: %s", exc)
        return PlainTextResponse("the request could not be recorded", status_code=503)
    return JSONResponse(
        {"url": f"{runtime.settings.public_url}{privacy.STATUS_PATH}{code}", "confirmation_code": code},
        background=BackgroundTask(privacy.process_pending, database, files),
    )


async def deletion_status(request: Request) -> Response:
    """A deletion request's status page, found by its confirmation code."""
    runtime: Runtime = request.app.state.runtime
    try:
        found = await asyncio.to_thread(deletion_request, runtime.database, request.path_params["code"])
    except DatabaseError:
        return PlainTextResponse("the status cannot be read now, try again later", status_code=503)
    page = privacy.status_page(found)
    return HTMLResponse(page, status_code=200 if found is not None else 404)


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
        if campaign.single_use:
            load_codes(settings.campaign.parent / (campaign.codes or ""))
    except (ConfigError, CampaignError, CodesError) as exc:
        sys.exit(f"promobot cannot start: {exc}")
    return settings, campaign


def tune_garbage_collector() -> None:
    """For a long-running process (the server), once it has made what it starts with.

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

    from bot.http import BoundedHttpToolsProtocol

    settings, _ = load_settings(mode)
    configure_logging(settings.log_level)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again with the handlers it
    # found at start. Finding these, it returns instead: a stop that flushed every event exits with 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda signum, frame: None)
    app = create_app(settings)
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
        http=BoundedHttpToolsProtocol,  # a header section past 64 KiB is refused, not read whole
    )
