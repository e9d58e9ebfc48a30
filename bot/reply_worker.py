"""Replies sent from a process of their own: the Graph API's cost and slowness never touch the webhook.

The bot hands the replies its webhooks planned in one turn of its event loop to the worker as one line of
JSON on its stdin (for each event: the kinds of its replies, in order, and the event's row); the worker sends
them (with the Graph client's timeouts, retries, backoff and batching) and writes the outcomes of one turn of
its own loop back as one line on its stdout, as the rows the event log stores; the bot records the outcomes
that arrive together with one append that nobody waits for (an outcome lost in a crash of the machine means
the reply is sent again at the next start). The bot's event log stays the only writer of the store. A reply
with no outcome when the worker stops is owed, and sent at the next start.

    python -m bot.reply_worker      (started by the bot; configured by the same environment)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterable

from bot import jsontext
from bot.campaign import Campaign, load_campaign
from bot.config import Settings
from bot.events import Event
from bot.flow import Reply, ReplyKind
from bot.graph import GraphClient, RetryPolicy
from bot.replies import Replier, by_event
from bot.store import EventLog, StoreError, event_row, is_event_row, row_event

log = logging.getLogger(__name__)
RESTART_LIMIT = 5  # worker deaths in a row before the bot sends replies itself


def encode_replies(groups: Iterable[list[Reply]]) -> bytes:
    """One line: for each event, the kinds of its replies in the order they are sent, and the event's row."""
    items = [[[str(r.kind) for r in group], event_row(group[0].answers)] for group in groups]
    return jsontext.dumps(items) + b"\n"


def decode_replies(line: bytes) -> list[list[Reply]]:
    """The replies in a line made by `encode_replies`, by event. Raises ValueError or TypeError for anything
    else (EventError, a ValueError, for a row that is no event)."""
    items = jsontext.loads(line)
    if not isinstance(items, list):
        raise TypeError(f"not a list of replies: {line!r:.200}")
    groups = []
    for kinds, row in items:
        answers = row_event(row)
        groups.append([Reply(ReplyKind(kind), answers) for kind in kinds])
    return groups


def encode_outcomes(outcomes: Iterable[tuple[Reply, Event]]) -> bytes:
    """One line: each reply answered, and its outcome as the event log's row."""
    return jsontext.dumps([[reply.sent_id, event_row(outcome)] for reply, outcome in outcomes]) + b"\n"


def decode_outcomes(lines: Iterable[bytes]) -> tuple[list[str], list[list]]:
    """The replies answered and the outcome rows in lines from the worker; unreadable ones are logged.

    The rows are not checked here: the event log checks what it is asked to append.
    """
    answered, rows = [], []
    for line in lines:
        try:
            outcomes = jsontext.loads(line)
        except ValueError as exc:
            log.error("unreadable line from the reply worker: %s", exc)
            continue
        if not isinstance(outcomes, list):
            log.error("unreadable line from the reply worker: %.200r", line)
            continue
        for outcome in outcomes:
            if isinstance(outcome, list) and len(outcome) == 2 and isinstance(outcome[0], str):
                answered.append(outcome[0])
                rows.append(outcome[1])
            else:
                log.error("unreadable outcome from the reply worker: %.200r", outcome)
    return answered, rows


class ReplyProcess:
    """The bot's side: hands replies to the worker, records their outcomes, restarts a worker that dies."""

    def __init__(self, events: EventLog, fallback: Replier) -> None:
        self.events = events
        self.fallback = fallback  # sends in-process while a worker is replaced, or when none keeps running
        self.command = [sys.executable, "-m", "bot.reply_worker"]
        self._pending: dict[str, Reply] = {}
        self._groups: list[list[Reply]] = []  # replies for the worker, written at the end of this turn
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._deaths = 0

    @property
    def pending(self) -> int:
        return len(self._pending) + self.fallback.pending

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id; None while there is none."""
        return self._process.pid if self._process is not None else None

    async def start_worker(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=os.environ.copy(),
            # Its own session: Ctrl-C in a terminal reaches the bot only, which then lets the worker finish.
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read_outcomes(self._process))

    def start(self, replies: Iterable[Reply]) -> None:
        replies = list(replies)
        if not replies:
            return
        if self._process is None or self._process.stdin is None or self._process.stdin.is_closing():
            self.fallback.start(replies)
            return
        if not self._groups:
            # What the webhooks of one turn of the event loop hand over goes to the worker as one line.
            asyncio.get_running_loop().call_soon(self._hand_over)
        for reply in replies:
            self._pending[reply.sent_id] = reply
        self._groups += by_event(replies)

    def _hand_over(self) -> None:
        groups, self._groups = self._groups, []
        stdin = self._process.stdin if self._process is not None else None
        if groups and stdin is not None and not stdin.is_closing():
            stdin.write(encode_replies(groups))
        # Otherwise the worker stopped in between: these replies are pending, and the next worker gets them
        # (a write to a worker that has just died is lost the same way, and its replies are resent alike).

    async def _read_outcomes(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        rest = b""
        while chunk := await process.stdout.read(1 << 16):
            *lines, rest = (rest + chunk).split(b"\n")
            # Every outcome that has arrived is recorded with one append, which rides along with the next
            # commit of the webhook's events instead of costing an fsync of its own.
            answered, rows = decode_outcomes(lines)
            self._record(rows)
            for reply_id in answered:
                self._pending.pop(reply_id, None)
            self._deaths = 0
        status = await process.wait()
        if self._closing:
            return
        # The worker died: start another and hand it what had no outcome yet. Replies that come meanwhile are
        # sent from the bot's own process (written to the dead worker, they would wait for the next start).
        self._process = None
        self._deaths += 1
        log.error("the reply worker stopped (status %s); %d replies to resend", status, len(self._pending))
        owed = list(self._pending.values())
        self._pending.clear()
        self._groups.clear()
        if self._deaths > RESTART_LIMIT:
            log.error("the reply worker keeps stopping; sending replies from the bot's own process")
            self.fallback.start(owed)
            return
        try:
            await self.start_worker()
        except OSError as exc:
            log.error("could not start a reply worker (%s); sending replies from the bot's own process", exc)
            self.fallback.start(owed)
            return
        self.start(owed)

    def _record(self, rows: list) -> None:
        try:
            self.events.append_soon(rows)
        except ValueError:
            # A bug in the worker: keep what can be kept.
            good = [row for row in rows if is_event_row(row)]
            log.error("%d unreadable outcomes from the reply worker", len(rows) - len(good))
            self._record(good)
        except StoreError as exc:
            log.error("could not record the outcome of %d replies: %s", len(rows), exc)

    async def close(self, timeout_s: float) -> None:
        """Let the worker finish what it has (up to `timeout_s`), record the outcomes, stop it."""
        self._closing = True
        self._hand_over()
        process, reader = self._process, self._reader
        if process is not None and process.stdin is not None:
            process.stdin.close()  # end of input: the worker finishes and exits
            try:
                await asyncio.wait_for(asyncio.shield(reader), timeout_s)
            except TimeoutError:
                log.warning(
                    "%d replies still in flight at shutdown; they will be sent at the next start",
                    len(self._pending),
                )
                process.kill()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        await self.fallback.drain(timeout_s)


# -- the worker -----------------------------------------------------------------------------------------


async def work(replier: Replier) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)

    outcomes: list[tuple[Reply, Event]] = []  # written to the bot at the end of this turn, as one line

    def write_outcomes() -> None:
        writer.write(encode_outcomes(outcomes))
        outcomes.clear()

    def record(reply: Reply, outcome: Event) -> None:
        if not outcomes:
            loop.call_soon(write_outcomes)
        outcomes.append((reply, outcome))

    rest = b""
    while chunk := await reader.read(1 << 16):
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            try:
                groups = decode_replies(line)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable replies from the bot: %s", exc)
                continue
            for group in groups:
                replier.start(group, record)
        await writer.drain()  # the bot reads slower than replies end: take no more until it catches up
    await replier.drain(None)
    if outcomes:
        write_outcomes()
    await writer.drain()
    await replier.graph.aclose()


def main() -> None:
    from bot.app import configure_logging, image_url, tune_garbage_collector

    # Acknowledging webhooks comes first: on a busy machine the replies wait for the CPU, not the webhook.
    with contextlib.suppress(OSError):
        os.nice(5)

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    campaign: Campaign = load_campaign(settings.campaign, data_dir=settings.campaign.parent)
    graph = GraphClient(
        base_url=settings.graph_url,
        version=settings.graph_version,
        page_token=settings.page_token or "",
        app_secret=settings.app_secret,
        retry=RetryPolicy(
            request_timeout_s=settings.graph_timeout_s, deadline_s=4 * settings.graph_timeout_s
        ),
    )
    replier = Replier(
        campaign, graph, None, image_url=image_url(settings, campaign), max_age_s=settings.reply_max_age_s
    )
    tune_garbage_collector()
    try:
        import uvloop

        uvloop.run(work(replier))
    except ImportError:
        asyncio.run(work(replier))


if __name__ == "__main__":
    main()
