"""Sending replies through the Graph API, each ending as an outcome event.

The outcome (`*_sent` with the digest of the platform's message id, or `send_failed`) is handed to the
caller's `record`; bot.sender stores it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta

from bot.campaign import Campaign
from bot.events import Event
from bot.facts import EventName
from bot.flow import IssuedCode, Reply, ReplyKind, render, render_code, render_code_qr
from bot.graph import Attempts, GraphClient
from bot.graph_batch import Encoded
from bot.graph_errors import TOKEN_INVALID, SendError
from bot.messenger import send_body

log = logging.getLogger(__name__)

Record = Callable[[Reply, Event], None]  # gets each reply's outcome as soon as it has one
Postpone = Callable[[Reply, SendError], None]  # gets a reply whose send failed for now (transient error)
MESSAGE_CACHE_SIZE = 4096  # rendered messages kept: one per reply kind and variant, a welcome per first name


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Answer:
    """The replies to one event, sent one after the other, each outcome to `record`."""

    __slots__ = ("attempts", "done", "index", "postpone", "record", "replies")

    def __init__(
        self, replies: list[Reply], record: Record, done: Callable[[], None] | None, postpone: Postpone | None
    ) -> None:
        self.replies = replies
        self.record = record
        self.postpone = postpone  # None: a transient failure is an outcome like any other
        self.done = done  # called once every reply has its outcome
        self.index = 0
        self.attempts: Attempts | None = None  # the Graph API call under way


class Replier:
    """Sends replies and records how each went, without a task per reply: a reply moves on from one Graph
    API answer to the next (callbacks), so that thousands in flight cost little more than their calls."""

    def __init__(
        self,
        campaign: Campaign,
        graph: GraphClient,
        *,
        image_url: str,
        image_urls: Mapping[str, str] | None = None,
        till_url: str = "",
        max_age_s: float,
        concurrency: int = 256,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.campaign = campaign
        self.graph = graph
        self.image_url = image_url  # the campaign's thank-you image, as Messenger fetches it
        self.image_urls = dict(image_urls or {})  # a variant's, by name, where the campaign has variants
        self.till_url = till_url  # the bot's public URL: single-use codes link to its /redeem pages
        self.max_age = timedelta(seconds=max_age_s)
        self.clock = clock
        self._concurrency = concurrency
        self._active: set[_Answer] = set()
        self._queued: deque[_Answer] = deque()
        self._admitting = False
        self._messages: dict[tuple[ReplyKind, str | None, str | None], Encoded] = {}
        self._idle: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        return len(self._active) + len(self._queued)

    def start(self, replies: Iterable[Reply], record: Record, postpone: Postpone | None = None) -> None:
        """Send in the background. Replies to one event go out in order (thank-you text, then image).

        At most `concurrency` events are answered at once: a reply's deadline starts when its turn comes,
        so a backlog does not expire in the Graph client's queue. With `postpone`, a reply that failed only
        for now goes there instead of to `record`, and the event's later replies are not sent.
        """
        self._enqueue(by_event(replies), record, None, postpone)

    async def send(self, replies: Iterable[Reply], record: Record, postpone: Postpone | None = None) -> None:
        """Send now: returns once every reply has its outcome (to `record`, or `postpone`: see `start`)."""
        groups = by_event(replies)
        if not groups:
            return
        finished = asyncio.get_running_loop().create_future()
        remaining = len(groups)

        def done() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0 and not finished.done():
                finished.set_result(None)

        self._enqueue(groups, record, done, postpone)
        await finished

    def _enqueue(
        self,
        groups: list[list[Reply]],
        record: Record,
        done: Callable[[], None] | None,
        postpone: Postpone | None,
    ) -> None:
        for group in groups:
            self._queued.append(_Answer(group, record, done, postpone))
        self._admit()

    def _admit(self) -> None:
        if self._admitting:
            return  # an answer that ended at once, inside this loop: the loop goes on
        self._admitting = True
        try:
            while self._queued and len(self._active) < self._concurrency:
                answer = self._queued.popleft()
                self._active.add(answer)
                self._next(answer)
        finally:
            self._admitting = False

    def _next(self, answer: _Answer) -> None:
        """The answer's next reply, or its end."""
        if answer.index == len(answer.replies):
            self._active.discard(answer)
            if answer.done is not None:
                answer.done()
            if not self.pending and self._idle is not None:
                self._idle.set()
            self._admit()
            return
        reply = answer.replies[answer.index]
        if self.clock() - reply.answers.ts > self.max_age:
            # A coupon hours after the click only confuses; the platform's 24-hour window may be closed too.
            reason = "expired before it could be sent"
            self._settle(answer, reply.failed(self.clock(), code=None, subcode=None, reason=reason))
        elif reply.needs_first_name:
            answer.attempts = self.graph.first_name_soon(
                reply.customer_id, lambda first_name: self._send(answer, reply, first_name)
            )
        else:
            self._send(answer, reply, None)

    def _send(self, answer: _Answer, reply: Reply, first_name: str | None) -> None:
        if reply.issued is not None:
            code_message = render_code_qr if reply.kind is ReplyKind.CODE_QR else self._code_text
            message: dict[str, object] | Encoded = code_message(reply.issued, self.till_url)
        elif reply.kind is ReplyKind.CODE_QR or (reply.kind is ReplyKind.CODE and self.campaign.code is None):
            # Owed from before the campaign switched to single-use codes: there is no code to show.
            reason = "no code: the campaign now hands out single-use codes"
            self._settle(answer, reply.failed(self.clock(), code=None, subcode=None, reason=reason))
            return
        else:
            message = self._message(reply.kind, reply.answers.variant, first_name)
        body = send_body(reply.customer_id, message, _messaging_type(reply))
        answer.attempts = self.graph.send_soon(
            reply.customer_id, body, lambda outcome: self._sent(answer, reply, outcome)
        )

    def _code_text(self, issued: IssuedCode, till_url: str) -> dict[str, object]:
        return render_code(self.campaign, issued, till_url)

    def _message(self, kind: ReplyKind, variant: str | None, first_name: str | None) -> Encoded:
        """The reply's message in the texts of `variant` (that of the event it answers), rendered and encoded
        once for every customer who gets the same."""
        key = (kind, variant, first_name)
        message = self._messages.get(key)
        if message is None:
            campaign = self.campaign.for_variant(variant)
            image_url = self.image_urls.get(campaign.variant or "", self.image_url)
            rendered = render(campaign, kind, first_name=first_name, image_url=image_url)
            if len(self._messages) >= MESSAGE_CACHE_SIZE:
                self._messages.clear()
            message = self._messages[key] = Encoded(rendered)
        return message

    def _sent(self, answer: _Answer, reply: Reply, outcome: str | SendError | None) -> None:
        # A rejected page token is the page's failure, not the customer's: their reply waits for a new token
        # (and the restart that brings it) as it would for the platform to come back.
        if (
            isinstance(outcome, SendError)
            and (outcome.transient or outcome.code == TOKEN_INVALID)
            and answer.postpone is not None
        ):
            log.info("%s reply not sent for now (%s): trying again later", reply.kind, outcome.reason)
            answer.attempts = None
            answer.index = len(answer.replies)  # the event's later replies wait for this one
            try:
                answer.postpone(reply, outcome)
            except Exception:
                log.exception("could not postpone a %s reply", reply.kind)
            self._next(answer)
            return
        if isinstance(outcome, SendError):
            log.warning(
                "%s reply not sent: %s (code %s, subcode %s)",
                reply.kind,
                outcome.reason,
                outcome.code,
                outcome.subcode,
            )
            event = reply.failed(
                self.clock(), code=outcome.code, subcode=outcome.subcode, reason=outcome.reason
            )
        else:
            event = reply.sent(outcome, self.clock())
        self._settle(answer, event)

    def _settle(self, answer: _Answer, outcome: Event) -> None:
        answer.attempts = None
        reply = answer.replies[answer.index]
        answer.index += 1
        try:
            answer.record(reply, outcome)
        except Exception:  # a recording bug must not stop the replies after this one
            log.exception("could not record the outcome of a %s reply", reply.kind)
        self._next(answer)

    async def drain(self, timeout_s: float | None) -> None:
        """Wait for replies in flight (on shutdown), at most `timeout_s`; the rest are owed at next start."""
        if not self.pending:
            return
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning(
                "%d replies still in flight at shutdown; they will be sent at the next start", self.pending
            )
            self.abandon()

    def abandon(self) -> None:
        """Stop every reply not yet sent: no outcome is recorded for them, so they are owed."""
        answers = [*self._active, *self._queued]
        self._active.clear()
        self._queued.clear()
        for answer in answers:
            if answer.attempts is not None:
                answer.attempts.abandon()
            if answer.done is not None:
                answer.done()  # whoever waits for them (`send`) waits no more


def _messaging_type(reply: Reply) -> str:
    """`UPDATE` for what the page sends of itself (the Send API's "sent proactively and not in response to
    a received message"): a broadcast's welcome, the thanks when a code is used at the till; `RESPONSE` for
    every answer to a customer's action. Both only inside the customer's window."""
    proactive = reply.kind is ReplyKind.REDEEMED or reply.answers.event is EventName.BROADCAST_SENT
    return "UPDATE" if proactive else "RESPONSE"


def by_event(replies: Iterable[Reply]) -> list[list[Reply]]:
    """Replies grouped by the event they answer, in order: each group is sent one reply after the other."""
    groups: dict[str, list[Reply]] = {}
    for reply in replies:
        groups.setdefault(reply.answers.event_id, []).append(reply)
    return list(groups.values())
