"""What travels between the bot and its reply worker: replies one way, outcome rows the other."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from bot.flow import Step, button_payload
from bot.reply_worker import decode_outcomes, decode_replies, encode_outcome, encode_replies
from bot.store import event_row
from tests import payloads
from tests.test_flow import CAMPAIGN, act

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def declined():
    """The replies to a *No, thanks* click: a thank-you text, then the image."""
    _, replies = act(payloads.postback("42", button_payload(CAMPAIGN, Step.NO)))
    assert len(replies) == 2
    return replies


def test_the_replies_to_one_event_travel_as_one_line_in_order():
    replies = declined()
    line = encode_replies(replies)
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    assert decode_replies(line) == replies


def test_outcomes_come_back_as_the_rows_the_event_log_stores():
    replies = declined()
    outcomes = [reply.sent(f"m_{n}", NOW) for n, reply in enumerate(replies)]
    lines = [encode_outcome(reply, outcome) for reply, outcome in zip(replies, outcomes, strict=True)]
    answered, rows = decode_outcomes(lines)
    assert answered == [reply.sent_id for reply in replies]
    assert rows == [event_row(outcome) for outcome in outcomes]


def test_an_unreadable_line_from_the_worker_is_skipped_and_the_others_kept(caplog):
    replies = declined()
    good = encode_outcome(replies[0], replies[0].sent("m_1", NOW))
    not_json = b'["half a line'
    not_a_row = json.dumps([replies[1].sent_id, ["too", "short"]]).encode()
    answered, rows = decode_outcomes([not_json, good, not_a_row])
    assert answered == [replies[0].sent_id]
    assert len(rows) == 1
    assert caplog.text.count("unreadable line from the reply worker") == 2
