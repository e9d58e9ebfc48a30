"""The sender: claims the replies owed in the outbox, sends them, and stores each outcome.

A reply stays in the outbox until its outcome event is stored; claims are leases, so with PostgreSQL any
number of senders share one outbox and none sends a reply another holds (docs/design.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from bot.database import Database, DatabaseError
from bot.events import Event
from bot.flow import Reply
from bot.graph_errors import SendError
from bot.replies import Replier

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle sender looks for replies it was not told of (other instances, leases)
CLAIM_INTERVAL_S = 0.02  # at most one claim this often: a busy sender's wake-ups share one
RESTARTS = 5  # a sender process that dies this many times in a row is not started again
LEASE_MARGIN_S = 10.0  # on top of the time a reply can take: scheduling, storing its outcome
# Outcomes the store refused (it restarts, another process holds its lock): tried again after these pauses,
# while the replies are still this sender's, then left: the replies are sent again when their lease ends.
STORE_RETRY_PAUSES_S = (0.2, 0.5, 1.0, 2.0, 4.0)


class Sender:
    """Sends the outbox's replies with `replier`, at most `limit` at a time.

    Parameters: `database` the store holding the outbox; `replier` sends and reports outcomes; `lease` how
    long a claimed reply is this sender's (longer than a reply can take: then no other sender sends it).
    """

    def __init__(
        self,
        database: Database,
        replier: Replier,
        *,
        lease: timedelta,
        limit: int = 256,
        poll_s: float = IDLE_POLL_S,
    ) -> None:
        self.database = database
        self.poll_s = poll_s
        self.replier = replier
        self.lease = lease
        self.limit = limit
        self.failures = 0  # database errors in a row; reset by a round that works
        self._outcomes: list[tuple[str, Event]] = []
        self._retries: list[tuple[str, datetime]] = []
        self._storing: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> int:
        """Replies claimed and not yet stored as sent or failed."""
        return self.replier.pending + len(self._outcomes) + len(self._retries)

    def start(self) -> None:
        """Run in the background until `close`; the first look for due replies is at once (owed before)."""
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="promobot-sender")

    def wake(self) -> None:
        """Look for due replies now (a webhook recorded some)."""
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_claim = -CLAIM_INTERVAL_S
        while not self._closing:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for loses a cancellation that arrives as the
            # event is set, and the sender would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            # Each claim is a transaction of its own (a commit, an fsync) that the webhooks' commits wait
            # behind: under load the wake-ups of many webhooks share one claim.
            pause = last_claim + CLAIM_INTERVAL_S - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()
            if self._closing:
                return
            last_claim = loop.time()
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
            self.replier.start(replies, self._record, self._postpone)
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
            await self.replier.send(replies, self._record, self._postpone)
            await self._settle()

    def _record(self, reply: Reply, outcome: Event) -> None:
        self._outcomes.append((reply.sent_id, outcome))
        self._store_soon()

    def _postpone(self, reply: Reply, error: SendError) -> None:
        """A send that failed for now: due again after a pause that grows with the reply's age (10 s to 5
        minutes), until the Replier finds it too old (PROMOBOT_REPLY_MAX_AGE) and records it failed."""
        now = self.replier.clock()
        age = (now - reply.answers.ts).total_seconds()
        self._retries.append((reply.sent_id, now + timedelta(seconds=min(300.0, max(10.0, age / 2)))))
        self._store_soon()

    def _store_soon(self) -> asyncio.Task[None]:
        """The task storing the outcomes and retries that arrived (started if none is under way)."""
        if self._storing is None:
            self._storing = asyncio.create_task(self._store_outcomes())
        return self._storing

    async def _store_outcomes(self) -> None:
        """Store the outcomes that arrived, one transaction per round; the replies due after them (a
        thank-you's image after its text) can then be claimed. A round the store refuses is tried again
        (after STORE_RETRY_PAUSES_S; once more and at once while closing): a reply sent and not marked so is
        sent twice."""
        failures = 0
        try:
            while self._outcomes or self._retries:
                outcomes, self._outcomes = self._outcomes, []
                retries, self._retries = self._retries, []
                try:
                    await asyncio.to_thread(self.database.complete_many, outcomes, retries)
                except DatabaseError as exc:
                    if failures < len(STORE_RETRY_PAUSES_S) and not (self._closing and failures):
                        pause = 0.0 if self._closing else STORE_RETRY_PAUSES_S[failures]
                        failures += 1
                        log.error(
                            "could not store the outcome of %d replies, trying again in %g s: %s",
                            len(outcomes) + len(retries),
                            pause,
                            exc,
                        )
                        self._outcomes[:0], self._retries[:0] = outcomes, retries
                        await asyncio.sleep(pause)
                        continue
                    # The replies stay claimed: when their leases run out they are sent again. A duplicate
                    # message is the lesser harm than a reply never sent.
                    log.error("could not store the outcome of %d replies: %s", len(outcomes), exc)
                    failures = 0
                    continue
                failures = 0
                self._wake.set()
        finally:
            self._storing = None

    async def close(self, grace_s: float) -> None:
        """Stop claiming, give the replies in flight up to `grace_s` to end, and store their outcomes. What
        has not ended stays owed in the outbox."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # Not cancelled: a claim under way in its thread would commit, and the replies it leased would
            # wait for their lease to run out. The round ends, then the loop sees `_closing`.
            await asyncio.gather(self._task, return_exceptions=True)
        await self.replier.drain(grace_s)
        await self._settle()

    async def _settle(self) -> None:
        """Wait until every outcome that arrived is stored (or could not be)."""
        while self._storing is not None or self._outcomes or self._retries:
            await asyncio.gather(self._store_soon(), return_exceptions=True)


async def release_leases(database: Database) -> None:
    """On SQLite, which only this process family sends from: what a previous sender had claimed and not
    finished is owed now, not when its lease runs out. On PostgreSQL other instances may hold leases: none."""
    if database.engine.name != "sqlite":
        return
    released = await asyncio.to_thread(database.release_leases)
    if released:
        log.info("%d replies owed from before the last stop; sending them now", released)
