"""The sender: claims the replies owed in the outbox, sends them, and stores each outcome.

A reply stays in the outbox until its outcome event is stored, so a reply owed when a process dies is sent
by whichever sender claims it next. Claims are leases: with PostgreSQL, any number of senders on any number
of instances share one outbox and none sends a reply another holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from bot.database import Database, DatabaseError
from bot.events import Event
from bot.flow import Reply
from bot.replies import Replier

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle sender looks for replies it was not told of (other instances, leases)
LEASE_MARGIN_S = 10.0  # on top of the time a reply can take: scheduling, storing its outcome


class Sender:
    """Sends the outbox's replies with `replier`, at most `limit` at a time.

    Parameters: `database` the store holding the outbox; `replier` sends and reports outcomes; `lease` how
    long a claimed reply is this sender's (longer than a reply can take: then no other sender sends it).
    """

    def __init__(self, database: Database, replier: Replier, *, lease: timedelta, limit: int = 256) -> None:
        self.database = database
        self.replier = replier
        self.lease = lease
        self.limit = limit
        self.failures = 0  # database errors in a row; reset by a round that works
        self._outcomes: list[tuple[str, Event]] = []
        self._storing: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> int:
        """Replies claimed and not yet stored as sent or failed."""
        return self.replier.pending + len(self._outcomes)

    def start(self) -> None:
        """Run in the background until `close`."""
        self._task = asyncio.create_task(self._run(), name="promobot-sender")

    def wake(self) -> None:
        """Look for due replies now (a webhook recorded some)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for loses a cancellation that arrives as the
            # event is set, and the sender would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_S):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                await self.round()
            except DatabaseError as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 60 == 0:
                    log.error("could not claim replies (trying again): %s", exc)
                await asyncio.sleep(min(30.0, 0.5 * self.failures))

    async def round(self) -> int:
        """Claim what is due, as far as there is room, and start sending it; returns how many were claimed.

        Raises: DatabaseError.
        """
        room = self.limit - self.replier.pending
        if room <= 0 or not await asyncio.to_thread(self.database.due):
            return 0
        replies = await asyncio.to_thread(self.database.claim, room, self.lease)
        self.failures = 0
        if replies:
            self.replier.start(replies, self._record)
        if len(replies) == room:
            self._wake.set()  # more may be due
        return len(replies)

    async def send_due(self) -> None:
        """Send everything due now and store the outcomes before returning (hosts that freeze the process
        once it has answered: AWS Lambda). Raises: DatabaseError."""
        while True:
            room = self.limit - self.replier.pending
            replies = await asyncio.to_thread(self.database.claim, room, self.lease)
            if not replies:
                break
            await self.replier.send(replies, self._record)
            await self._settle()

    def _record(self, reply: Reply, outcome: Event) -> None:
        self._outcomes.append((reply.sent_id, outcome))
        if self._storing is None:
            self._storing = asyncio.create_task(self._store_outcomes())

    async def _store_outcomes(self) -> None:
        """Store the outcomes that arrived, one transaction per round; the replies due after them (a
        thank-you's image after its text) can then be claimed."""
        try:
            while self._outcomes:
                outcomes, self._outcomes = self._outcomes, []
                try:
                    await asyncio.to_thread(self.database.complete_many, outcomes)
                except DatabaseError as exc:
                    # The replies stay claimed: when their leases run out they are sent again. A duplicate
                    # message is the lesser harm than a reply never sent.
                    log.error("could not store the outcome of %d replies: %s", len(outcomes), exc)
                    continue
                self._wake.set()
        finally:
            self._storing = None

    async def close(self, grace_s: float) -> None:
        """Stop claiming, give the replies in flight up to `grace_s` to end, and store their outcomes. What
        has not ended stays owed in the outbox."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.replier.drain(grace_s)
        await self._settle()

    async def _settle(self) -> None:
        """Wait until every outcome that arrived is stored (or could not be)."""
        while self._storing is not None or self._outcomes:
            if self._storing is None:
                self._storing = asyncio.create_task(self._store_outcomes())
            await asyncio.gather(self._storing, return_exceptions=True)
