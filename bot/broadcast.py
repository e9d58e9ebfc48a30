"""`python -m bot broadcast` and `python -m bot audience`: a campaign's welcome sent, at a steady pace, to
the customers Messenger lets the page message now; a stopped broadcast resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TextIO

import httpx

from bot.audience import (
    REASONS,
    SEND_FAILED,
    BroadcastResult,
    BroadcastState,
    Reason,
    describe_audience,
)
from bot.campaign import Campaign
from bot.config import Settings
from bot.customers import unreachable
from bot.database import Database
from bot.events import Event
from bot.facts import EventName
from bot.flow import Reply, render_welcome_text
from bot.graph_errors import TOKEN_INVALID, RetryPolicy, SendError
from bot.recipients import (
    audience_now,
    broadcast_results,
    create_broadcast,
    pending_recipients,
    reclaim_stranded,
    release_recipient,
    set_broadcast_state,
    take_recipient,
    unfinished_broadcast,
)
from bot.sender import Sender
from bot.startup import build_sender, command_settings, file_store, open_database

log = logging.getLogger(__name__)

# One welcome a second: a thousand customers in under 17 minutes, a small share of what the platform allows a
# page (its Send API limits are per second, and per day in proportion to the people the page talks to), and
# room left for the bot's own replies to customers who answer.
DEFAULT_RATE = 60
MAX_RATE = 600  # per minute; past this a broadcast competes with the replies to the customers it wakes
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613})  # the Graph API's "slow down" codes
FIRST_BACKOFF_S = 60.0  # the first pause after the platform asked to slow down (or failed for now)
MAX_BACKOFF_S = 900.0
STRANDED_POLL_S = 1.0  # how often a resumed broadcast looks whether a dead run's welcome was settled


class TokenRejected(RuntimeError):
    """The Graph API refuses the page token (code 190): no welcome goes out until the page is reconnected."""


@dataclass
class Tally:
    """How far a broadcast run is: recipients decided of `total`, sent, skipped by reason."""

    broadcast_id: int
    total: int
    sent: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    backing_off_s: float = 0.0  # the pause under way after the platform asked to slow down

    @property
    def done(self) -> int:
        return self.sent + sum(self.skipped.values())


class Pacer:
    """At most `rate_per_minute` sends a minute, evenly spaced: a send waits for its slot."""

    def __init__(self, rate_per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = 60.0 / rate_per_minute
        self.clock = clock
        self._next = clock()

    async def wait(self, stop: asyncio.Event) -> bool:
        """Wait for the next slot; False when `stop` was set meanwhile."""
        return not await stopped_within(stop, self._next - self.clock())

    def sent(self) -> None:
        """A send took the slot: the next one is an interval later."""
        self._next = self.clock() + self.interval_s


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less if `stop` is set; whether it was."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
    return stop.is_set()


class Broadcaster:
    """Sends one broadcast's welcomes with `sender`'s Replier and lease (bot.startup.build_sender).

    Parameters: `campaign` the campaign whose welcome is sent (each customer in their variant's texts);
    `first_backoff_s`/`max_backoff_s` the pause after the platform asks to slow down, doubling while it
    goes on; `report` gets the tally after each recipient.
    """

    def __init__(
        self,
        database: Database,
        sender: Sender,
        campaign: Campaign,
        *,
        first_backoff_s: float = FIRST_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        report: Callable[[Tally], None] | None = None,
    ) -> None:
        self.database = database
        self.replier = sender.replier
        self.lease = sender.lease
        self.campaign = campaign
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.report = report or (lambda tally: None)

    async def run(self, broadcast_id: int, rate_per_minute: int, stop: asyncio.Event) -> Tally:
        """Send the broadcast's welcomes until every recipient is decided or `stop` is set (then after the
        send under way). Returns the tally of this run.

        Raises: TokenRejected (the broadcast can go on once the page is reconnected), DatabaseError.
        """
        await self._settle_stranded(broadcast_id, stop)
        recipients = await asyncio.to_thread(pending_recipients, self.database, broadcast_id)
        tally = Tally(broadcast_id, len(recipients))
        pacer = Pacer(rate_per_minute)
        backoff = self.first_backoff_s
        index = 0
        while index < len(recipients) and await pacer.wait(stop):
            page_id, customer_id = recipients[index]
            taken = await asyncio.to_thread(
                take_recipient,
                self.database,
                broadcast_id,
                page_id,
                customer_id,
                campaign_id=self.campaign.id,
                variant=self._variant(customer_id),
                lease=self.lease,
            )
            if not isinstance(taken, Reply):
                index += 1
                if taken is not None:
                    tally.skipped[taken] = tally.skipped.get(taken, 0) + 1
                    self.report(tally)
                continue  # nothing sent: the slot is still free
            pacer.sent()
            outcome = await self._send(taken)
            if isinstance(outcome, SendError) or _token_rejected(outcome):
                # Not sent: back to pending, so that it is checked again when its turn comes back.
                await asyncio.to_thread(release_recipient, self.database, broadcast_id, taken)
                if not isinstance(outcome, SendError):
                    raise TokenRejected(
                        "the Graph API rejects the page access token (code 190): reconnect the page and set "
                        "PROMOBOT_PAGE_TOKEN, then run the same command again to resume"
                    )
                log.warning("the platform said %s; pausing the broadcast %.0f s", outcome.reason, backoff)
                tally.backing_off_s = backoff
                self.report(tally)
                await stopped_within(stop, backoff)
                tally.backing_off_s = 0.0
                backoff = min(2 * backoff, self.max_backoff_s)
                continue
            backoff = self.first_backoff_s
            await asyncio.to_thread(self.database.complete_many, [(taken.sent_id, outcome)])
            index += 1
            if outcome.event is EventName.SEND_FAILED:
                reason = str(Reason.UNREACHABLE) if unreachable(outcome) else SEND_FAILED
                tally.skipped[reason] = tally.skipped.get(reason, 0) + 1
            else:
                tally.sent += 1
            self.report(tally)
        return tally

    def _variant(self, customer_id: str) -> str | None:
        campaign = self.campaign
        return campaign.assigned_variant(customer_id) if campaign.variants else campaign.variant

    async def _send(self, reply: Reply) -> Event | SendError:
        """The welcome's outcome event, or the SendError of a failure for now (the platform asked to slow
        down, or is down)."""
        outcomes: list[Event | SendError] = []
        await self.replier.send(
            [reply], lambda _, event: outcomes.append(event), lambda _, error: outcomes.append(error)
        )
        return outcomes[0]

    async def _settle_stranded(self, broadcast_id: int, stop: asyncio.Event) -> None:
        """A run killed while a welcome was in the outbox left it leased: wait until its lease runs out (or
        the bot's sender, which may have taken it over, stores its outcome), then check that customer
        again."""
        while await asyncio.to_thread(reclaim_stranded, self.database, broadcast_id):
            if await stopped_within(stop, STRANDED_POLL_S):
                return


def _detail(event: Event) -> dict[str, Any]:
    detail: dict[str, Any] = json.loads(event.detail or "{}")
    return detail


def _token_rejected(outcome: Event) -> bool:
    return outcome.event is EventName.SEND_FAILED and _detail(outcome).get("code") == TOKEN_INVALID


# -- the commands ------------------------------------------------------------------------------------------


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
    from bot.config import ConfigError
    from bot.database import DatabaseError
    from bot.migrations import MigrationError

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
    from bot.campaign import CampaignError, load_campaign
    from bot.config import ConfigError, Mode
    from bot.database import DatabaseError
    from bot.migrations import MigrationError

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


def _dry_run(database: Database, campaign: Campaign, rate_per_minute: int | None) -> int:
    counts = audience_now(database, campaign.id)
    unfinished = unfinished_broadcast(database, campaign.id)
    rate = rate_per_minute or (unfinished[1] if unfinished else DEFAULT_RATE)
    print(describe_audience(campaign.id, counts))
    what = f"resume broadcast {unfinished[0]}" if unfinished else "start a broadcast"
    print(
        f"A run now would {what} at {rate} a minute: about {counts.eligible / rate:.0f} min. It would send:\n"
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
    from bot.flusher import FlushError, flush_once

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
