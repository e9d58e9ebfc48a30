"""Sending the replies the flow plans, after the webhook is acknowledged, and recording how each went.

Replies run in the background with bounded concurrency; every one ends as an event (`*_sent` with the
platform's message id, or `send_failed`). At start-up the replier looks in its own log for clicks it
acknowledged but never answered (the process died in between) and answers them, or records them as failed
once they are too old to be useful.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta

from bot.campaign import Campaign
from bot.events import Event
from bot.flow import Reply, plan_replies, render
from bot.graph import GraphClient, SendError
from bot.messenger import send_body
from bot.store import EventLog, StoreError

log = logging.getLogger(__name__)

Record = Callable[[Reply, Event], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Replier:
    def __init__(
        self,
        campaign: Campaign,
        graph: GraphClient,
        events: EventLog | None,
        *,
        image_url: str,
        max_age_s: float,
        concurrency: int = 256,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.campaign = campaign
        self.graph = graph
        self.events = events
        self.image_url = image_url
        self.max_age = timedelta(seconds=max_age_s)
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def start(self, replies: Iterable[Reply], record: Record | None = None) -> None:
        """Send in the background. Replies to one event go out in order (thank-you text, then image)."""
        for group in by_event(replies):
            task = asyncio.create_task(self.send(group, record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def send(self, replies: Iterable[Reply], record: Record | None = None) -> None:
        """Send now, one after the other, each outcome to `record` (by default: the event log).

        At most `concurrency` replies are in progress at once, however many are waiting; the Graph client
        below them queues their calls and batches them.
        """
        for reply in replies:
            async with self._slots:
                outcome = await self.outcome(reply)
            await (record or self._record)(reply, outcome)

    async def _record(self, reply: Reply, outcome: Event) -> None:
        try:
            await self.events.append([outcome])
        except StoreError as exc:
            log.error("could not record the outcome of a %s reply: %s", reply.kind, exc)

    async def outcome(self, reply: Reply) -> Event:
        """Send one reply; its outcome as an event (`*_sent`, or `send_failed`)."""
        if self.clock() - reply.answers.ts > self.max_age:
            # A coupon hours after the click only confuses; the platform's 24-hour window may be closed too.
            return reply.failed(
                self.clock(), code=None, subcode=None, reason="expired before it could be sent"
            )
        first_name = await self.graph.first_name(reply.customer_id) if reply.needs_first_name else None
        message = render(self.campaign, reply, first_name=first_name, image_url=self.image_url)
        try:
            message_id = await self.graph.send(reply.customer_id, send_body(reply.customer_id, message))
        except SendError as exc:
            log.warning(
                "%s reply not sent: %s (code %s, subcode %s)", reply.kind, exc.reason, exc.code, exc.subcode
            )
            return reply.failed(self.clock(), code=exc.code, subcode=exc.subcode, reason=exc.reason)
        return reply.sent(message_id, self.clock())

    async def drain(self, timeout_s: float) -> None:
        """Wait for replies in flight (on shutdown), at most `timeout_s`; the rest are owed at next start."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "%d replies still in flight at shutdown; they will be sent at the next start", len(pending)
            )
            await asyncio.wait(pending)


def by_event(replies: Iterable[Reply]) -> list[list[Reply]]:
    """Replies grouped by the event they answer, in order: each group is sent one reply after the other."""
    groups: dict[str, list[Reply]] = {}
    for reply in replies:
        groups.setdefault(reply.answers.event_id, []).append(reply)
    return list(groups.values())


def owed_replies(recent: Iterable[Event]) -> list[Reply]:
    """Replies planned for logged events that have neither a sent nor a failed outcome in the log."""
    events = list(recent)
    outcomes = {event.event_id for event in events}
    return [
        reply
        for event in events
        for reply in plan_replies(event)
        if reply.sent_id not in outcomes and reply.failed_id not in outcomes
    ]
