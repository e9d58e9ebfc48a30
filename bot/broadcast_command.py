"""`python -m bot audience` and `python -m bot broadcast`: who may be sent a campaign now, and sending it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Mapping
from datetime import UTC
from typing import TextIO

import httpx

from bot.audience import (
    REASONS,
    SEND_FAILED,
    BroadcastResult,
    BroadcastState,
    describe_audience,
)
from bot.broadcast import DEFAULT_RATE, FIRST_BACKOFF_S, MAX_RATE, Broadcaster, Tally, TokenRejected
from bot.campaign import Campaign, CampaignError, load_campaign
from bot.config import ConfigError, Mode, Settings
from bot.database import Database, DatabaseError
from bot.flow import render_welcome_text
from bot.flusher import FlushError, flush_once
from bot.graph_errors import RetryPolicy
from bot.migrations import MigrationError
from bot.recipients import (
    audience_now,
    broadcast_results,
    create_broadcast,
    set_broadcast_state,
    unfinished_broadcast,
)
from bot.startup import build_sender, command_settings, file_store, open_database

log = logging.getLogger(__name__)


class ProgressLine:
    """The run's progress on one line of `stream`, rewritten in place on a terminal (a line per tenth of the
    recipients otherwise, for logs)."""

    def __init__(self, stream: TextIO, rate_per_minute: int) -> None:
        self.stream = stream
        self.rate = rate_per_minute
        self.terminal = stream.isatty()
        self._last_tenth = -1

    def __call__(self, tally: Tally) -> None:
        total = max(tally.total, 1)
        width = 30
        filled = width * tally.done // total
        left_s = 60 * (tally.total - tally.done) / self.rate
        left = f"{left_s:.0f} s" if left_s < 120 else f"{left_s / 60:.0f} min"
        skipped = sum(tally.skipped.values())
        line = (
            f"broadcast {tally.broadcast_id} [{'#' * filled}{'.' * (width - filled)}]"
            f" {tally.done}/{tally.total} · {tally.sent} sent · {skipped} skipped"
            f" · at most {left} left"
        )
        if tally.backing_off_s:
            line += f" · the platform asked to slow down: pausing {tally.backing_off_s:.0f} s"
        if self.terminal:
            self.stream.write(f"\r\x1b[2K{line}")
        elif (tenth := 10 * tally.done // total) != self._last_tenth or tally.backing_off_s:
            self._last_tenth = tenth
            self.stream.write(f"{line}\n")
        self.stream.flush()

    def end(self) -> None:
        if self.terminal:
            self.stream.write("\n")


def audience_command(campaign_id: str, as_json: bool, *, environ: Mapping[str, str] | None = None) -> int:
    """`python -m bot audience --campaign ID [--json]`: who may be sent the campaign now; why not the rest."""
    try:
        settings = command_settings(environ)
        database = open_database(settings)
        try:
            counts = audience_now(database, campaign_id)
        finally:
            database.close()
    except (ConfigError, DatabaseError, MigrationError) as exc:
        print(f"promobot audience: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(counts.as_dict()) if as_json else describe_audience(campaign_id, counts))
    return 0


def broadcast_command(
    campaign_id: str,
    rate_per_minute: int | None,
    dry_run: bool,
    *,
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    retry: RetryPolicy | None = None,
    first_backoff_s: float = FIRST_BACKOFF_S,
) -> int:
    """`python -m bot broadcast --campaign ID [--rate PER_MINUTE] [--dry-run]`: send the campaign's welcome
    to its audience, or resume the campaign's unfinished broadcast. Returns the exit status (1: it could not
    start or could not go on; 130: stopped by Ctrl-C, resumable)."""
    if rate_per_minute is not None and not 1 <= rate_per_minute <= MAX_RATE:
        print(
            f"promobot broadcast: --rate {rate_per_minute} is not between 1 and {MAX_RATE}", file=sys.stderr
        )
        return 1
    try:
        # A dry run sends nothing: it needs the campaign and the store, not the page's secrets.
        settings = Settings.from_env(environ, mode=Mode.LOCAL if dry_run else Mode.SERVER)
        campaign = load_campaign(settings.campaign, data_dir=settings.campaign.parent)
        if campaign.id != campaign_id:
            raise ConfigError(
                f"the campaign file {settings.campaign} is campaign {campaign.id!r}, not {campaign_id!r}: "
                "a broadcast sends the welcome of the campaign the bot runs (PROMOBOT_CAMPAIGN)"
            )
        database = open_database(settings)
    except (ConfigError, CampaignError, DatabaseError, MigrationError) as exc:
        print(f"promobot broadcast: {exc}", file=sys.stderr)
        return 1
    try:
        if dry_run:
            return _dry_run(database, campaign, rate_per_minute)
        return asyncio.run(
            _broadcast(
                settings,
                database,
                campaign,
                rate_per_minute,
                transport,
                retry,
                first_backoff_s=first_backoff_s,
            )
        )
    except DatabaseError as exc:
        print(f"promobot broadcast: {exc}; run the same command again to resume", file=sys.stderr)
        return 1
    finally:
        database.close()


def sending_time(customers: int, rate_per_minute: int) -> str:
    """How long sending to `customers` takes at `rate_per_minute`, in words."""
    minutes = customers / rate_per_minute
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"about {minutes:.0f} min"
    return f"about {minutes / 60:.1f} h"


def _dry_run(database: Database, campaign: Campaign, rate_per_minute: int | None) -> int:
    counts = audience_now(database, campaign.id)
    unfinished = unfinished_broadcast(database, campaign.id)
    rate = rate_per_minute or (unfinished[1] if unfinished else DEFAULT_RATE)
    print(describe_audience(campaign.id, counts))
    what = f"resume broadcast {unfinished[0]}" if unfinished else "start a broadcast"
    print(
        f"A run now would {what} at {rate} a minute: {sending_time(counts.eligible, rate)}. It would send:\n"
        f"  {render_welcome_text(campaign, None)!r} [{campaign.yes}] [{campaign.no}]\n"
        "Dry run: nothing was sent or recorded."
    )
    return 0


async def _broadcast(
    settings: Settings,
    database: Database,
    campaign: Campaign,
    rate_per_minute: int | None,
    transport: httpx.AsyncBaseTransport | None,
    retry: RetryPolicy | None,
    *,
    first_backoff_s: float,
) -> int:
    unfinished = await asyncio.to_thread(unfinished_broadcast, database, campaign.id)
    if unfinished is not None:
        broadcast_id, stored_rate = unfinished
        rate = rate_per_minute or stored_rate
        await asyncio.to_thread(set_broadcast_state, database, broadcast_id, BroadcastState.RUNNING, rate)
        print(f"Resuming broadcast {broadcast_id} of campaign {campaign.id!r} at {rate} a minute.")
    else:
        rate = rate_per_minute or DEFAULT_RATE
        broadcast_id = await asyncio.to_thread(create_broadcast, database, campaign.id, rate)
        print(f"Broadcast {broadcast_id} of campaign {campaign.id!r} at {rate} a minute.")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    sender = build_sender(settings, campaign, database, transport=transport, retry=retry)
    progress = ProgressLine(sys.stderr, rate)
    broadcaster = Broadcaster(database, sender, campaign, first_backoff_s=first_backoff_s, report=progress)
    status = 0
    try:
        await broadcaster.run(broadcast_id, rate, stop)
    except TokenRejected as exc:
        progress.end()
        print(f"promobot broadcast: {exc}", file=sys.stderr)
        status = 1
    finally:
        await sender.replier.graph.aclose()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    progress.end()
    if stop.is_set() or status:
        await asyncio.to_thread(set_broadcast_state, database, broadcast_id, BroadcastState.STOPPED)
        status = status or 130
    else:
        await asyncio.to_thread(set_broadcast_state, database, broadcast_id, BroadcastState.FINISHED)
    with contextlib.suppress(FlushError):  # the bot's flusher writes them later otherwise
        await asyncio.to_thread(flush_once, database, file_store(settings))
    (result,) = [
        r for r in await asyncio.to_thread(broadcast_results, database) if r.broadcast_id == broadcast_id
    ]
    print(describe_result(result))
    if status == 130:
        print(f"Stopped. Run `python -m bot broadcast --campaign {campaign.id}` again to resume.")
    return status


def describe_result(result: BroadcastResult) -> str:
    """A broadcast's results in a few lines, as the command prints them at its end."""
    started = result.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Broadcast {result.broadcast_id} ({result.state}, started {started}): {result.sent} sent, "
        f"{sum(result.skipped.values())} skipped, {result.pending} not done yet."
    ]
    order = [*map(str, REASONS), SEND_FAILED]
    for reason in sorted(result.skipped, key=lambda r: order.index(r) if r in order else len(order)):
        lines.append(f"  {result.skipped[reason]:>6} {reason}")
    return "\n".join(lines)
