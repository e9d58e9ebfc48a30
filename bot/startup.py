"""Start-up: the settings checked, the process set up, and the collaborators built from them.

Every entry point (the server, local mode, the sender process, AWS Lambda, the commands) builds its Graph
client, store and sender here, the same way.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import httpx

from bot.campaign import Campaign, CampaignError, load_campaign
from bot.codes import CodesError, load_codes
from bot.config import ConfigError, Mode, Settings
from bot.database import Database, DatabaseError
from bot.graph import GraphClient
from bot.graph_errors import RetryPolicy
from bot.pool import LOW_POOL_SHARE
from bot.replies import Replier
from bot.sender import IDLE_POLL_S, LEASE_MARGIN_S, Sender
from bot.store import FileStore

log = logging.getLogger("promobot")

SHUTDOWN_REPLY_GRACE_S = 10  # how long a stop waits for the replies in flight
# Replies are sent before a Lambda's webhook is answered, and Messenger expects the answer within seconds.
INLINE_RETRY = RetryPolicy(deadline_s=3.0, request_timeout_s=1.5, first_backoff_s=0.1, max_backoff_s=1.0)
DATABASE_RETRY_FIRST_S = 0.5  # a store unreachable at start-up: the first pause before trying again
DATABASE_RETRY_MAX_S = 5.0
# How libpq and psycopg word a PostgreSQL server that did not answer, or answered that it cannot take
# connections yet or any more (SQLSTATE 57P03; psycopg gives no SQLSTATE for a failed connection, only the
# message): such a store may be back in a moment. Any other refusal, as a wrong password, an unknown
# database or role, or SSL required, is one that waiting does not mend.
UNREACHABLE = (
    "Connection refused",  # nothing listens on the port (yet)
    "timeout expired",  # nothing answers: a host frozen or restarting, packets dropped
    "failed to resolve host",  # the name is not known (yet): a compose file's database not created yet
    "could not translate host name",  # libpq's words for the same
    "No route to host",
    "Network is unreachable",
    "Connection reset",
    "server closed the connection unexpectedly",
    "SSL connection has been closed unexpectedly",
    "the database system is",  # starting up, not yet accepting connections, shutting down, in recovery
)


def load_settings(mode: Mode) -> tuple[Settings, Campaign]:
    """Settings for `mode` and the campaign, checked before anything starts.

    Raises: SystemExit with the reason when a setting, the campaign file or its codes file is wrong.
    """
    try:
        settings = Settings.from_env(mode=mode)
        campaign = load_campaign(settings.campaign, data_dir=settings.campaign.parent)
        if campaign.single_use:
            load_codes(settings.campaign.parent / (campaign.codes or ""))
    except (ConfigError, CampaignError, CodesError) as exc:
        sys.exit(f"promobot cannot start: {exc}")
    return settings, campaign


def command_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of a command that needs none of the platform's secrets: the stores, URLs and timeouts,
    checked (read as local mode reads them, which never asks for a secret).

    Raises: ConfigError for a setting that is malformed.
    """
    return Settings.from_env(environ, mode=Mode.LOCAL)


def configure_logging(level: str) -> None:
    """Log to stderr at `level`, never a Graph API URL (it carries the page token)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def tune_garbage_collector() -> None:
    """For a long-running process, once it has made what it starts with: keep that out of the cyclic
    collector's sight, and collect the young generation less often (docs/design.md)."""
    gc.freeze()
    gc.set_threshold(10_000, *gc.get_threshold()[1:])


def graph_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None, retry: RetryPolicy | None = None
) -> GraphClient:
    """The Graph API client of `settings`; on Lambda, a retry policy that fits inside the webhook.

    Parameters: `transport` replaces the network (tests, local mode's stand-in); `retry` the retry policy.
    """
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


def open_database(settings: Settings, *, wait_s: float = 0.0) -> Database:
    """The transactional store of `settings`, its schema brought up to date.

    Parameters: `wait_s` how long to keep trying while the store cannot be reached (`unreachable`), after
    pauses that grow from DATABASE_RETRY_FIRST_S to DATABASE_RETRY_MAX_S, each attempt logged.
    Raises: DatabaseError (cannot be reached, still after `wait_s`; refused the settings), MigrationError (a
    schema newer than this promobot).
    """
    deadline = time.monotonic() + wait_s
    pause = DATABASE_RETRY_FIRST_S
    while True:
        try:
            return Database.open(settings.database, Path(settings.data))
        except DatabaseError as exc:
            left = deadline - time.monotonic()
            if not unreachable(exc) or not wait_s:
                raise
            if left <= 0:
                raise DatabaseError(f"{exc}\ngave up after {wait_s:g} s (PROMOBOT_DATABASE_WAIT)") from exc
            pause = min(pause, left)
            reason = str(exc).splitlines()[0]  # libpq's hint on the next line would not say more
            log.warning("%s; trying again in %.1f s (giving up in %.1f s)", reason, pause, left)
        time.sleep(pause)
        pause = min(DATABASE_RETRY_MAX_S, 2 * pause)


def unreachable(error: DatabaseError) -> bool:
    """Whether `error` says the store could not be reached (no server answered, or it is starting up or
    shutting down): which may pass in a moment, unlike a refusal of the settings (a wrong password, an
    unknown database or role)."""
    return any(words in str(error) for words in UNREACHABLE)


def file_store(settings: Settings) -> FileStore:
    """The Parquet partitions of `settings` (a directory, or `s3://bucket/prefix`)."""
    return FileStore(settings.data)


def image_url(settings: Settings, campaign: Campaign) -> str:
    """The thank-you image's URL: a file beside the campaign is served by the bot under /media/."""
    if campaign.image_is_local:
        return f"{settings.public_url}/media/{campaign.thanks_image}"
    return campaign.thanks_image


def build_sender(
    settings: Settings,
    campaign: Campaign,
    database: Database,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    retry: RetryPolicy | None = None,
    poll_s: float = IDLE_POLL_S,
) -> Sender:
    """The sender of `campaign`'s replies: its Graph client, its Replier, and a lease longer than a reply can
    take (a profile lookup and a send, each within the retry deadline)."""
    graph = graph_client(settings, transport, retry)
    replier = Replier(
        campaign,
        graph,
        image_url=image_url(settings, campaign),
        image_urls={v.name: image_url(settings, campaign.for_variant(v.name)) for v in campaign.variants},
        till_url=settings.public_url,
        max_age_s=settings.reply_max_age_s,
    )
    lease = timedelta(seconds=2 * graph.retry.deadline_s + LEASE_MARGIN_S)
    return Sender(database, replier, lease=lease, poll_s=poll_s)


def load_pool(database: Database, campaign: Campaign, settings: Settings) -> None:
    """Add the lines of the campaign's codes file to its pool (new lines join at start-up), and log how many
    are left.

    Raises: CodesError for a file that cannot be used.
    """
    codes = load_codes(settings.campaign.parent / (campaign.codes or ""))
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
