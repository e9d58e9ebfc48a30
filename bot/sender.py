"""The sender: claims the replies owed in the outbox, sends them, and stores each outcome.

A reply stays in the outbox until its outcome event is stored, so a reply owed when a process dies is sent
by whichever sender claims it next. Claims are leases: with PostgreSQL, any number of senders on any number
of instances share one outbox and none sends a reply another holds.

`python -m bot serve` runs the sender as a process of its own (`SenderProcess`, `python -m bot.sender`),
so that sending never takes the event loop's time from acknowledging webhooks; local mode runs it as a task
of the server, AWS Lambda inside each invocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from datetime import datetime, timedelta
from pathlib import Path

from bot.config import Mode
from bot.database import Database, DatabaseError
from bot.events import Event
from bot.flow import Reply
from bot.graph import SendError
from bot.replies import Replier

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle sender looks for replies it was not told of (other instances, leases)
PROCESS_POLL_S = 0.02  # a sender process is told of nothing: it looks this often (a read of one index entry)
RESTARTS = 5  # a sender process that dies this many times in a row is not started again
LEASE_MARGIN_S = 10.0  # on top of the time a reply can take: scheduling, storing its outcome


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
                async with asyncio.timeout(self.poll_s):
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
        thank-you's image after its text) can then be claimed."""
        try:
            while self._outcomes or self._retries:
                outcomes, self._outcomes = self._outcomes, []
                retries, self._retries = self._retries, []
                try:
                    await asyncio.to_thread(self.database.complete_many, outcomes, retries)
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
            # Not cancelled: a claim under way in its thread would commit, and the replies it leased would
            # wait for their lease to run out. The round ends, then the loop sees `_closing`.
            await asyncio.gather(self._task, return_exceptions=True)
        await self.replier.drain(grace_s)
        await self._settle()

    async def _settle(self) -> None:
        """Wait until every outcome that arrived is stored (or could not be)."""
        while self._storing is not None or self._outcomes or self._retries:
            await asyncio.gather(self._store_soon(), return_exceptions=True)


class SenderProcess:
    """`python -m bot.sender` beside the server, started again when it dies (up to RESTARTS times in a row).

    It gets the server's environment; its own session, so that Ctrl-C in a terminal reaches the server only,
    which then stops it.
    """

    def __init__(self) -> None:
        self.command = [sys.executable, "-m", "bot.sender"]
        self.process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, start_new_session=True
        )
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="promobot-sender-watch")

    async def _watch(self) -> None:
        deaths = 0
        while not self._closing and self.process is not None:
            status = await self.process.wait()
            if self._closing:
                return
            deaths += 1
            if deaths > RESTARTS:
                log.error("the sender process keeps stopping (status %s): replies wait in the outbox", status)
                return
            log.error("the sender process stopped (status %s); starting another", status)
            await asyncio.sleep(min(30.0, 0.5 * 2**deaths))
            if not self._closing:
                await self.start()

    async def close(self, grace_s: float) -> None:
        """Ask the sender to finish (SIGTERM), wait up to `grace_s` plus a little, then kill it."""
        self._closing = True
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), grace_s + 5)
            except TimeoutError:
                log.warning("the sender process did not stop in time; its replies stay owed")
                process.kill()
                await process.wait()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)


async def run_process() -> None:
    """The sender process: claim and send until SIGTERM, or until the server's end of stdin closes."""
    from bot.app import SHUTDOWN_REPLY_GRACE_S, build_sender, load_settings

    settings, campaign = load_settings(Mode.SERVER)
    database = await asyncio.to_thread(Database.open, settings.database, Path(settings.data))
    sender = build_sender(settings, campaign, database, poll_s=PROCESS_POLL_S)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.buffer.read1() or stop.set())  # EOF: server gone
    if database.engine.name == "sqlite":
        await release_leases(database)
    sender.start()
    try:
        await stop.wait()
    finally:
        await sender.close(SHUTDOWN_REPLY_GRACE_S)
        await sender.replier.graph.aclose()
        await asyncio.to_thread(database.close)


async def release_leases(database: Database) -> None:
    """For a store only this process family sends from (SQLite): what a previous sender had claimed and not
    finished is owed now, not when its lease runs out."""
    released = await asyncio.to_thread(database.release_leases)
    if released:
        log.info("%d replies owed from before the last stop; sending them now", released)


def main() -> None:
    from bot.app import configure_logging, tune_garbage_collector

    configure_logging(os.environ.get("PROMOBOT_LOG_LEVEL", "INFO").upper())
    with contextlib.suppress(OSError):
        os.nice(5)  # acknowledging webhooks comes first: on a busy machine replies wait for the CPU
    tune_garbage_collector()
    try:
        import uvloop

        uvloop.run(run_process())
    except ImportError:
        asyncio.run(run_process())


if __name__ == "__main__":
    main()
