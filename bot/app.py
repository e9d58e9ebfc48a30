"""The app: its routes, and the lifespan that opens the campaign's store, sender and flusher around them.

A webhook POST is checked, turned into events by the flow and recorded with the replies it calls for in one
transaction of the store (bot.webhook); the sender sends the replies from the store's outbox, and the flusher
moves the events to Parquet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from bot import flow, privacy, routes
from bot.campaign import load_campaign
from bot.config import Mode, Settings
from bot.flusher import Flusher
from bot.graph_errors import RetryPolicy
from bot.runtime import Runtime, Sending
from bot.sender import release_leases
from bot.sender_process import SenderProcess
from bot.simulator import GraphStandIn, simulator_routes
from bot.startup import (
    SHUTDOWN_REPLY_GRACE_S,
    build_sender,
    check_no_legacy_wal,
    file_store,
    load_pool,
    open_database,
)
from bot.till import till_routes
from bot.webhook import WEBHOOK

log = logging.getLogger("promobot")


def create_app(
    settings: Settings,
    *,
    graph_transport: httpx.AsyncBaseTransport | None = None,
    retry: RetryPolicy | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Starlette:
    """The bot for `settings.mode`. `graph_transport` replaces the network under the Graph client (tests);
    `retry` its retry policy; `on_ready` is called once the start-up has made everything, before the first
    request.

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
        database = await asyncio.to_thread(open_database, settings)
        if campaign.single_use:
            await asyncio.to_thread(load_pool, database, campaign, settings)
        sender = build_sender(
            settings, campaign, database, transport=graph_transport or stand_in, retry=retry
        )
        flusher = Flusher(database, file_store(settings), interval_s=settings.flush_seconds).start()
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
            images={name: campaign_dir / name for name in campaign.local_images},
            rules=flow.PageRules.from_settings(settings),
            sender_process=process,
        )
        if on_ready is not None:
            on_ready()
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
            proxies=settings.proxies,
            replies_owed=lambda: app.state.runtime.replies_owed(),
        )
        if campaign.single_use
        else []
    )
    app = Starlette(
        routes=[
            Route("/webhook", WEBHOOK, methods=["GET", "POST"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/media/{name:path}", routes.media, methods=["GET", "HEAD"]),
            Route("/data-deletion", routes.data_deletion, methods=["POST"]),
            Route(privacy.STATUS_PATH + "{code}", routes.deletion_status, methods=["GET"]),
            *(simulator_routes(stand_in, settings.app_secret) if stand_in is not None else []),
            *till,
        ],
        lifespan=lifespan,
    )
    return app
