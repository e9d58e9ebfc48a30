"""What travels between the bot and its reply worker: replies one way, outcome rows the other."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest

from bot.events import EventError, message_digest
from bot.facts import ButtonStep
from bot.flow import button_payload
from bot.replies import Replier
from bot.reply_worker import ReplyProcess, decode_outcomes, decode_replies, encode_outcomes, encode_replies
from bot.store import EventLog, event_row, row_event
from tests import payloads
from tests.test_flow import CAMPAIGN, act
from tests.test_graph import graph_over

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def declined():
    """The replies to a *No, thanks* click: a thank-you text, then the image."""
    _, replies = act(payloads.postback("42", button_payload(CAMPAIGN, ButtonStep.NO)))
    assert len(replies) == 2
    return replies


def test_the_replies_handed_over_together_travel_as_one_line_by_event_in_order():
    groups = [declined(), clicked_yes("43")]
    line = encode_replies(groups)
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert decode_replies(line) == groups


def test_a_row_gives_back_the_event_it_was_made_of():
    event = declined()[0].answers
    sent = declined()[0].sent("m_1", NOW)
    for made in (event, sent):
        assert row_event(event_row(made)) == made
        assert row_event(json.loads(json.dumps(event_row(made)))) == made  # as it travels
    assert row_event(json.loads(json.dumps(event_row(sent)))).message_digest == message_digest("m_1")


@pytest.mark.parametrize(
    "line",
    [b"not json", b"{}", b'[[["thanks_text"], ["too", "short"]]]', b'[[["no_such_kind"], null]]'],
    ids=["not-json", "not-a-pair", "not-a-row", "not-a-kind"],
)
def test_a_line_of_replies_that_is_not_one_is_refused(line):
    with pytest.raises((ValueError, TypeError)):
        decode_replies(line)


def test_a_reply_line_with_an_unknown_kind_is_refused():
    line = json.dumps([[["no_such_kind"], event_row(declined()[0].answers)]]).encode()
    with pytest.raises(ValueError, match="no_such_kind"):
        decode_replies(line)


def test_a_row_that_is_not_an_event_is_refused():
    with pytest.raises(EventError, match="not an event row"):
        row_event(["e1", 1, "page", "customer", "campaign", None, "no_such_event", None, None, None])


def test_outcomes_come_back_as_the_rows_the_event_log_stores():
    replies = declined()
    outcomes = [reply.sent(f"m_{n}", NOW) for n, reply in enumerate(replies)]
    lines = [encode_outcomes([pair]) for pair in zip(replies, outcomes, strict=True)]
    answered, rows = decode_outcomes([encode_outcomes(zip(replies, outcomes, strict=True))])
    assert answered == [reply.sent_id for reply in replies]
    assert rows == [event_row(outcome) for outcome in outcomes]
    assert decode_outcomes(lines) == (answered, rows)  # one line a turn, or several: the same outcomes


def test_an_unreadable_line_or_outcome_from_the_worker_is_skipped_and_the_others_kept(caplog):
    replies = declined()
    good = encode_outcomes([(replies[0], replies[0].sent("m_1", NOW))])
    not_json = b'[["half a line'
    not_a_pair = json.dumps([[replies[1].sent_id], [replies[1].sent_id, event_row(replies[1].answers)]])
    answered, rows = decode_outcomes([not_json, good, b"{}", not_a_pair.encode()])
    assert answered == [replies[0].sent_id, replies[1].sent_id]
    assert len(rows) == 2
    assert caplog.text.count("unreadable line from the reply worker") == 2
    assert caplog.text.count("unreadable outcome from the reply worker") == 1


# A stand-in for `python -m bot.reply_worker` that answers every reply at once, as sent.
ECHO_WORKER = """
import sys
from datetime import UTC, datetime
from bot.reply_worker import decode_replies, encode_outcomes
for line in sys.stdin.buffer:
    replies = [reply for group in decode_replies(line) for reply in group]
    sys.stdout.buffer.write(encode_outcomes((r, r.sent("m_worker", datetime.now(UTC))) for r in replies))
    sys.stdout.buffer.flush()
"""


def clicked_yes(customer: str):
    _, replies = act(payloads.postback(customer, button_payload(CAMPAIGN, ButtonStep.YES)))
    return replies


async def settled(process: ReplyProcess, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while process.pending:
        assert time.monotonic() < deadline, f"{process.pending} replies still pending"
        await asyncio.sleep(0.02)


@pytest.mark.anyio
async def test_replies_that_come_while_a_dead_worker_is_replaced_are_sent_all_the_same(tmp_path):
    def platform(request: httpx.Request) -> httpx.Response:
        customer = json.loads(request.content)["recipient"]["id"]
        return httpx.Response(200, json={"recipient_id": customer, "message_id": "m_bot"})

    events = EventLog.open(str(tmp_path / "data"), tmp_path / "wal", flush_age_s=3600)
    fallback = Replier(CAMPAIGN, graph_over(platform), events, image_url="", max_age_s=1e9)
    process = ReplyProcess(events, fallback)
    process.command = [sys.executable, "-c", ECHO_WORKER]
    await process.start_worker()
    process.start(clicked_yes("7001"))
    await settled(process)

    restarting, restarted = asyncio.Event(), asyncio.Event()
    start_worker = process.start_worker

    async def slow_start() -> None:
        restarting.set()
        await asyncio.sleep(0.3)
        await start_worker()
        restarted.set()

    process.start_worker = slow_start
    os.kill(process.worker_pid, signal.SIGKILL)
    await restarting.wait()
    process.start(clicked_yes("7002"))  # the old worker is dead, the new one not there yet
    await settled(process)
    await restarted.wait()
    process.start(clicked_yes("7003"))  # the new worker takes over
    await settled(process)
    await process.close(5)
    await fallback.graph.aclose()
    events.close()  # the worker's outcomes are written without waiting: all of them by now
    with EventLog.open(str(tmp_path / "data"), tmp_path / "wal") as log:
        sent = {e.customer_id: e.message_digest for e in log.recent(datetime(2000, 1, 1, tzinfo=UTC))}
    worker, bot = message_digest("m_worker"), message_digest("m_bot")
    assert sent == {"7001": worker, "7002": bot, "7003": worker}


# A stand-in worker with a bug: each outcome comes with a row that is no event.
BUGGY_WORKER = """
import sys
from datetime import UTC, datetime
from bot.reply_worker import decode_replies, encode_outcomes
for line in sys.stdin.buffer:
    replies = [reply for group in decode_replies(line) for reply in group]
    good = encode_outcomes((r, r.sent("m_worker", datetime.now(UTC))) for r in replies)
    bad = b'[["x.c", ["not", "a", "row"]]]\\n'
    sys.stdout.buffer.write(good[:-2] + b"," + bad[1:])
    sys.stdout.buffer.flush()
"""


@pytest.mark.anyio
async def test_an_outcome_row_that_is_no_event_is_not_logged_and_the_others_are(tmp_path, caplog):
    events = EventLog.open(str(tmp_path / "data"), tmp_path / "wal", flush_age_s=3600)
    fallback = Replier(
        CAMPAIGN, graph_over(lambda request: httpx.Response(500)), events, image_url="", max_age_s=1
    )
    process = ReplyProcess(events, fallback)
    process.command = [sys.executable, "-c", BUGGY_WORKER]
    await process.start_worker()
    process.start(clicked_yes("7001") + clicked_yes("7002"))
    await settled(process)
    await process.close(5)
    await fallback.graph.aclose()
    events.close()
    with EventLog.open(str(tmp_path / "data"), tmp_path / "wal") as log:
        logged = log.recent(datetime(2000, 1, 1, tzinfo=UTC))
    assert sorted((e.customer_id, e.message_digest) for e in logged) == [
        ("7001", message_digest("m_worker")),
        ("7002", message_digest("m_worker")),
    ]
    assert "1 unreadable outcomes from the reply worker" in caplog.text
