import json
from datetime import UTC, datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.events import (
    FILE_SCHEMA,
    SCHEMA,
    Event,
    EventError,
    EventName,
    detail_json,
    from_table,
    message_digest,
    to_table,
)

T0 = datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC)


def make(**overrides):
    values = dict(
        event_id="e1", ts=T0, page_id="p", customer_id="c", campaign_id="spring-sale", event="welcome_sent"
    )
    values.update(overrides)
    return Event(**values)


def test_event_names_are_the_designed_ones():
    # DESIGN.md's eleven, plus `code_sent` (the code shown after a reveal is a reply like the others, and
    # every reply ends in an event), and single-use codes' three: a pool found empty, the message saying
    # so, and a code used at the till; then issue 19's: reactions, opting out and in, staff taking over,
    # and broadcasts; and a promotion withdrawn unsent when its customer opted out or was taken over.
    assert {str(n) for n in EventName} == {
        "conversation_started",
        "welcome_sent",
        "coupon_requested",
        "declined",
        "coupon_sent",
        "coupon_revealed",
        "code_sent",
        "thanks_sent",
        "message_delivered",
        "message_read",
        "text_received",
        "send_failed",
        "coupon_pool_empty",
        "all_gone_sent",
        "coupon_redeemed",
        "reaction_received",
        "opted_out",
        "opted_in",
        "handed_over",
        "broadcast_sent",
        "broadcast_skipped",
        "deletion_requested",
        "reply_withdrawn",
    }


def test_unknown_event_name_is_refused():
    with pytest.raises(EventError, match="unknown event name 'coupon_clicked'"):
        make(event="coupon_clicked")


def test_an_event_name_given_as_text_becomes_the_event_name():
    event = make(event="welcome_sent")
    assert event.event is EventName.WELCOME_SENT


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("event_id", 7, "'event_id' must be a string"),
        ("page_id", None, "missing required key 'page_id'"),
        ("customer_id", b"c", "'customer_id' must be a string"),
        ("campaign_id", "", "missing required key 'campaign_id'"),
        ("variant", 1, "'variant' must be a string or None"),
        ("button", ["YES"], "'button' must be a string or None"),
        ("message_digest", "m_1", "'message_digest' must be an integer or None"),
        ("message_digest", 2.5, "'message_digest' must be an integer or None"),
        ("message_digest", False, "'message_digest' must be an integer or None"),
        ("detail", {"code": 1}, "'detail' must be a string or None"),
        ("watermark", "1700000000500", "'watermark' must be an integer or None"),
        ("watermark", 1.7e12, "'watermark' must be an integer or None"),
        ("watermark", True, "'watermark' must be an integer or None"),
        ("ts", "2026-03-01T00:00:00Z", "'ts' must be a datetime"),
        ("ts", None, "missing required key 'ts'"),
        ("event", None, "missing required key 'event'"),
    ],
)
def test_every_key_of_the_wrong_type_is_named(key, value, message):
    # Well-formed events take a fast path (an EventName, not its text: only `key` is off it); each of
    # these must fall off it and be refused by name.
    with pytest.raises(EventError, match=message):
        make(**{"event": EventName.WELCOME_SENT, key: value})


def test_naive_timestamp_is_refused():
    with pytest.raises(EventError, match="timezone-aware"):
        make(ts=datetime(2026, 3, 1, 12, 0))


def test_missing_key_is_named():
    record = make().to_dict()
    del record["customer_id"]
    with pytest.raises(EventError, match="missing required key 'customer_id'"):
        Event.from_dict(record)


def test_empty_required_value_is_refused():
    with pytest.raises(EventError, match="'page_id'"):
        make(page_id="")


def test_timestamp_is_normalised_to_utc_and_dates_the_partition():
    # 01:30 in UTC+2 on March 2 is 23:30 UTC on March 1.
    event = make(ts=datetime(2026, 3, 2, 1, 30, tzinfo=timezone(timedelta(hours=2))))
    assert event.ts.tzinfo is UTC
    assert event.event_date.isoformat() == "2026-03-01"


def test_round_trip_through_arrow_keeps_every_value():
    events = [
        make(),
        make(event_id="e2", event="send_failed", detail='{"code":551}', button="YES", source="ad:23850"),
        make(event_id="e3", event="message_read", watermark=1_772_409_599_000),
        make(event_id="e4", event="coupon_sent", message_digest=-(2**63)),
        make(event_id="e5", event="message_delivered", message_digest=2**63 - 1, watermark=1_772_409_598_000),
    ]
    table = to_table(events)
    assert table.schema == SCHEMA
    assert from_table(table) == events
    assert to_table(events, FILE_SCHEMA).schema == FILE_SCHEMA
    assert "event_date" not in FILE_SCHEMA.names


def test_a_receipts_watermark_is_a_nullable_integer_of_milliseconds():
    assert SCHEMA.field("watermark").type == pa.int64()
    assert SCHEMA.field("watermark").nullable
    assert make().watermark is None
    read = Event.from_dict({**make(event="message_read").to_dict(), "watermark": 1_772_409_599_000})
    assert read.watermark == 1_772_409_599_000
    assert read.to_dict()["watermark"] == 1_772_409_599_000


def test_a_message_is_kept_as_a_digest_of_its_platform_id():
    assert SCHEMA.field("message_digest").type == pa.int64()
    assert SCHEMA.field("message_digest").nullable
    assert "message_id" not in SCHEMA.names
    assert make().message_digest is None


@given(st.text(), st.text())
def test_a_message_digest_is_an_int64_the_same_for_one_id_and_different_for_two(one, other):
    digest = message_digest(one)
    assert digest.__class__ is int
    assert -(2**63) <= digest < 2**63
    assert message_digest(one) == digest
    if other != one:
        assert message_digest(other) != digest  # 64 bits: a clash in these few draws would be a broken digest


def test_an_id_with_a_lone_surrogate_still_has_a_digest():
    # The Graph API's answers are read by `json`, which gives a lone surrogate for "\ud83d".
    assert message_digest("m_\ud83d") != message_digest("m_\ufffd")


def test_a_message_digest_is_computed_alike_in_sql_from_an_id_the_platform_names():
    # An analyst matches an id from Meta or an export to our rows in SQL: the first 8 bytes of its SHA-256,
    # a signed big-endian int64.
    ids = [
        "m_qr6GPBlzTU4jqP0PBqaIoIAcfn2p3T7uiO5jm0L_PMTKMJhEIUGFkEKQBhGkpCnPXVZNsYdkN7A2Sel0dOz_Iw",
        "m_ünï",
        "",
    ]
    ids += [f"m_fake{n:06d}" for n in range(40)]  # some digests negative, some not
    unsigned = "('0x' || left(sha256(id), 16))::ubigint::hugeint"
    signed = f"({unsigned} - case when {unsigned} >= {2**63} then {2**64} else 0 end)::bigint"
    found = duckdb.connect().execute(f"select id, {signed} from unnest(?) as t(id)", [ids]).fetchall()
    in_sql = dict(found)
    assert in_sql == {mid: message_digest(mid) for mid in ids}
    assert min(in_sql.values()) < 0 < max(in_sql.values())


def test_schema_stores_microseconds_in_utc():
    assert SCHEMA.field("ts").type == pa.timestamp("us", tz="UTC")
    table = to_table([make()])
    assert table.column("ts")[0].as_py() == T0


@given(
    st.dictionaries(
        st.sampled_from(["watermark", "code", "reason", "part", "ref", "ünï"]),
        st.none() | st.booleans() | st.integers() | st.text(),
        min_size=1,
        max_size=3,
    )
)
def test_a_detail_is_compact_json_with_sorted_keys(fields):
    detail = detail_json(**fields)
    assert json.loads(detail) == fields
    assert detail == json.dumps(fields, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
