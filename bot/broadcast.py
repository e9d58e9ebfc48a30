"""A broadcast: a campaign's welcome sent at a steady pace, resumable.

It goes to the customers Messenger lets the page message now; a stopped broadcast resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.audience import (
    SEND_FAILED,
    Reason,
)
from bot.campaign import Campaign
from bot.customers import unreachable
from bot.database import Database
from bot.events import Event
from bot.facts import EventName
from bot.flow import Reply
from bot.graph_errors import TOKEN_INVALID, SendError
from bot.recipients import (
    pending_recipients,
    reclaim_stranded,
    release_recipient,
    take_recipient,
)
from bot.sender import Sender

log = logging.getLogger(__name__)

# One welcome a second: a thousand customers in under 17 minutes, a small share of what the platform allows a
# page (its Send API limits are per second, and per day in proportion to the people the page talks to), and
# room left for the bot's own replies to customers who answer.
DEFAULT_RATE = 60
MAX_RATE = 600  # per minute; past this a broadcast competes with the replies to the customers it wakes
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

    def due_in(self) -> float:
        """Seconds until the next slot (0: now)."""
        return max(0.0, self._next - self.clock())

    async def wait(self, stop: asyncio.Event) -> bool:
        """Wait for the next slot; False when `stop` was set meanwhile."""
        return not await stopped_within(stop, self.due_in())

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
            if isinstance(outcome, SendError):
                # Not sent: back to pending, so that it is checked again when its turn comes back.
                await asyncio.to_thread(release_recipient, self.database, broadcast_id, taken)
                # A rejected token is put off by the Replier like a failure for now (the page's failure).
                if outcome.code == TOKEN_INVALID:
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
