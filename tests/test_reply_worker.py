"""What travels between the bot and its reply worker: replies one way, outcome rows the other."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bot.events import EventError
from bot.flow import Step, button_payload
from bot.reply_worker import decode_outcomes, decode_replies, encode_outcome, encode_replies
from bot.store import event_row, row_event
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


def test_a_row_gives_back_the_event_it_was_made_of():
    event = declined()[0].answers
    assert row_event(event_row(event)) == event
    assert row_event(json.loads(json.dumps(event_row(event)))) == event  # as it travels


@pytest.mark.parametrize(
    "line",
    [b"not json", b"{}", b'[["thanks_text"], ["too", "short"]]', b'[["no_such_kind"], null]'],
    ids=["not-json", "not-a-pair", "not-a-row", "not-a-kind"],
)
def test_a_line_of_replies_that_is_not_one_is_refused(line):
    with pytest.raises((ValueError, TypeError)):
        decode_replies(line)


def test_a_reply_line_with_an_unknown_kind_is_refused():
    line = json.dumps([["no_such_kind"], event_row(declined()[0].answers)]).encode()
    with pytest.raises(ValueError, match="no_such_kind"):
        decode_replies(line)


def test_a_row_that_is_not_an_event_is_refused():
    with pytest.raises(EventError, match="not an event row"):
        row_event(["e1", 1, "page", "customer", "campaign", None, "no_such_event", None, None, None])


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
