"""The sample journeys keep the platform's two clocks: what the dashboard, the tests and the benchmarks read
must have the semantics of real Messenger data (docs: DESIGN.md, "Two clocks")."""

from __future__ import annotations

import json
import random
import statistics
from datetime import UTC, datetime, timedelta

import pyarrow
import pyarrow.compute as pc
import pyarrow.dataset
import pytest

import analytics
from analytics.sample import (
    AD_ID,
    AD_TITLE,
    EXPERIMENT,
    Journey,
    assigned_variant,
    generate,
    journey,
    write_sample,
)
from bot.events import Event
from bot.facts import SEND_ALLOWANCE, EventName

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
START_US = 1_772_000_000 * 1_000_000  # 2026-02-25
SENT = {EventName.WELCOME_SENT, EventName.COUPON_SENT, EventName.THANKS_SENT, EventName.CODE_SENT}
RECEIPTS = {EventName.MESSAGE_DELIVERED, EventName.MESSAGE_READ}
CLICKS = {EventName.COUPON_REQUESTED, EventName.DECLINED}
SOURCED = {EventName.CONVERSATION_STARTED, EventName.WELCOME_SENT, EventName.SEND_FAILED}


@pytest.fixture(scope="module")
def journeys() -> list[Journey]:
    rng = random.Random(20)
    return [
        journey(rng, str(6_000_000_000_000_000 + i), START_US + i * 60_000_000, "spring-sale")
        for i in range(4000)
    ]


def us(event: Event) -> int:
    return (event.ts - EPOCH) // timedelta(microseconds=1)


def sent_by_platform_time(j: Journey) -> dict[int, Event]:
    """The bot's record of each page message, by the platform's time of that message."""
    return {j.platform_ms[e.message_digest]: e for e in j.events if e.event in SENT}


def first(j: Journey, name: EventName) -> Event | None:
    return next((e for e in j.events if e.event == name), None)


def test_every_page_message_is_stamped_by_the_bot_a_round_trip_after_the_platforms_time(journeys):
    trips = []
    for j in journeys:
        sent = [e for e in j.events if e.event in SENT]
        assert {e.message_digest for e in sent} == set(j.platform_ms)
        for e in sent:
            trip = us(e) - j.platform_ms[e.message_digest] * 1000
            assert 0 < trip <= SEND_ALLOWANCE.total_seconds() * 1_000_000, e
            trips.append(trip / 1_000_000)

    assert 0.1 < statistics.median(trips) < 1.5
    assert max(trips) > 2  # now and then the Send API is slow


def test_every_watermark_is_the_platform_time_of_an_earlier_page_message(journeys):
    checked = 0
    for j in journeys:
        sent = sent_by_platform_time(j)
        delivered = set()
        for e in sorted((e for e in j.events if e.event in RECEIPTS), key=lambda e: e.ts):
            mark = e.watermark
            assert mark in sent, f"{e} covers no page message"
            assert mark * 1000 < us(e)  # the receipt comes after the message it covers
            assert mark * 1000 < us(sent[mark])  # and the bot stamped that message later still
            if e.event == EventName.MESSAGE_DELIVERED:
                assert e.message_digest == sent[mark].message_digest
                delivered.add(mark)
            else:
                assert mark in delivered  # a customer reads what reached the phone
            checked += 1
        assert all(e.watermark is None for e in j.events if e.event not in RECEIPTS)
        assert all(e.detail is None for e in j.events if e.event in RECEIPTS)  # as the bot records them
    assert checked > 10_000


def test_each_message_is_delivered_after_the_previous_customer_action(journeys):
    for j in journeys:
        events = sorted(j.events, key=lambda e: e.ts)
        clicks = [e for e in events if e.event in CLICKS | {EventName.COUPON_REVEALED}]
        sent = sent_by_platform_time(j)
        for click in clicks:
            answer = next(m for m, e in sent.items() if e.event_id.startswith(click.event_id + "."))
            assert answer * 1000 > us(click)  # the platform has the answer after the click


def test_a_few_customers_tap_before_the_bots_stamp_of_the_welcome(journeys):
    quick = 0
    for j in journeys:
        welcome = first(j, EventName.WELCOME_SENT)
        click = next((e for e in j.events if e.event in CLICKS), None)
        if welcome is None or click is None:
            continue
        assert us(click) > j.platform_ms[welcome.message_digest] * 1000  # never before the welcome was there
        quick += click.ts < welcome.ts

    assert 0.01 * len(journeys) < quick < 0.06 * len(journeys)


def test_a_read_of_the_welcome_may_arrive_after_the_coupon_was_sent(journeys):
    late = 0
    for j in journeys:
        welcome, coupon = first(j, EventName.WELCOME_SENT), first(j, EventName.COUPON_SENT)
        if coupon is None:
            continue
        late += any(
            e.event == EventName.MESSAGE_READ
            and e.ts > coupon.ts
            and e.watermark == j.platform_ms[welcome.message_digest]
            for e in j.events
        )

    assert late > 0.01 * len(journeys)


def test_some_read_the_coupon_and_go_no_further(journeys):
    read_only = 0
    for j in journeys:
        coupon = first(j, EventName.COUPON_SENT)
        if coupon is None or first(j, EventName.COUPON_REVEALED) is not None:
            continue
        coupon_ms = j.platform_ms[coupon.message_digest]
        reads = [e for e in j.events if e.event == EventName.MESSAGE_READ and e.watermark == coupon_ms]
        # Its watermark is earlier than the bot's stamp of the coupon: the read covers the coupon anyway.
        assert all(e.watermark * 1000 < us(coupon) for e in reads)
        read_only += bool(reads)

    assert read_only > 0.05 * len(journeys)


def test_the_same_seed_gives_the_same_events_and_another_seed_others():
    end = datetime(2026, 3, 1, tzinfo=UTC)

    def sample(seed: int) -> list[Event]:
        return [e for events in generate(range(300), 10, seed=seed, end=end) for e in events]

    assert sample(4) == sample(4)
    assert sample(4) != sample(5)


def test_the_written_sample_keeps_each_receipts_watermark_in_its_column(tmp_path):
    write_sample(tmp_path, customers=200, days=5, seed=9, progress=False)

    table = pyarrow.dataset.dataset(tmp_path / "events", partitioning="hive").to_table()
    receipts = table.filter(pc.is_in(table["event"], pyarrow.array(sorted(RECEIPTS))))
    assert receipts.num_rows > 200
    assert receipts["watermark"].null_count == 0
    stamped = pc.cast(receipts["ts"], pyarrow.int64())
    assert pc.all(pc.less(pc.multiply(receipts["watermark"], 1000), stamped)).as_py()


def test_a_third_to_a_half_of_the_codes_are_used_at_the_till_after_they_arrived(journeys):
    codes, delays = 0, []
    for j in journeys:
        code = first(j, EventName.CODE_SENT)
        used = [e for e in j.events if e.event == EventName.COUPON_REDEEMED]
        if code is None:
            assert not used
            continue
        codes += 1
        for e in used:  # the bot's stamp of the till's press, after its stamp of the code it answers
            assert e.ts > code.ts
            assert e.event_id == f"{e.customer_id}.{e.campaign_id}.redeemed"
            delays.append(e.ts - code.ts)

    assert codes / 3 < len(delays) < codes / 2
    assert min(delays) < timedelta(hours=1) < timedelta(days=1) < statistics.median(delays)
    assert max(delays) <= timedelta(days=7)  # within the codes' week of validity


def test_a_code_is_redeemed_once_and_a_pool_runs_out_for_its_last_days():
    end = datetime(2026, 3, 1, tzinfo=UTC)
    events = [e for customer in generate(range(3000), 20, seed=11, end=end) for e in customer]
    gone_from = end - timedelta(days=2)

    redeemed = [(e.customer_id, e.campaign_id) for e in events if e.event == EventName.COUPON_REDEEMED]
    assert len(redeemed) == len(set(redeemed)) > 100
    loyalty = [e for e in events if e.campaign_id == "loyalty"]
    empty = [e for e in loyalty if e.event == EventName.COUPON_POOL_EMPTY]
    codes = [e for e in loyalty if e.event == EventName.CODE_SENT]
    assert empty
    assert all(e.ts >= gone_from for e in empty)
    assert sum(e.event == EventName.ALL_GONE_SENT for e in loyalty) == len(empty)
    late = [e for e in codes if e.ts >= gone_from + timedelta(seconds=30)]
    earlier = {e.customer_id for e in codes if e.ts < gone_from}
    assert all(e.customer_id in earlier for e in late)  # only a second reveal: the customer's code again
    assert not any(e.event == EventName.COUPON_POOL_EMPTY for e in events if e.campaign_id != "loyalty")


# -- sources and the experiment ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def customers() -> list[list[Event]]:
    return list(generate(range(3000), 20, seed=12, end=datetime(2026, 3, 1, tzinfo=UTC)))


def test_journeys_start_from_sources_recorded_on_their_start_and_welcome(customers):
    events = [e for c in customers for e in c]
    starts = [e for e in events if e.event == EventName.CONVERSATION_STARTED]
    welcomes = [e for e in events if e.event == EventName.WELCOME_SENT]

    assert {e.source for e in starts} == {"till", "flyer", "instagram", f"ad:{AD_ID}", "direct"}
    by_start = {e.event_id: e.source for e in starts}
    assert all(by_start[w.event_id.rsplit(".", 1)[0]] == w.source for w in welcomes)  # answers its start
    assert all(e.source is None for e in events if e.event not in SOURCED)
    details = [json.loads(e.detail) for e in starts]
    assert {d["ad_title"] for d in details if "ad_id" in d} == {AD_TITLE}
    assert {d["ref"] for d in details if "ref" in d} >= {"spring-sale.till", "summer-sale.flyer"}
    referred = [d for d in details if d["trigger"] == "referral"]  # a link opened in an existing thread
    assert 0.05 * len(details) < len(referred) < 0.25 * len(details)


def test_the_spring_sale_is_an_experiment_with_sticky_forced_and_mixed_customers(customers):
    spring = [c for c in customers if c[0].campaign_id == EXPERIMENT]
    starts = [e for c in spring for e in c if e.event == EventName.CONVERSATION_STARTED]
    assert all(json.loads(e.detail)["variants"] == [["A", 0.5], ["B", 0.5]] for e in starts)
    forced = [e for e in starts if json.loads(e.detail).get("variant_forced")]
    assert all(json.loads(e.detail)["ref"].endswith("." + e.variant) for e in forced)
    assert 0.01 * len(spring) < len({e.customer_id for e in forced}) < 0.05 * len(spring)
    for c in spring:
        hashed = assigned_variant(EXPERIMENT, c[0].customer_id)
        assert all(e.variant in ("A", "B") for e in c)  # every event of the journey names one
        assert all(e.variant == hashed for e in c if e.event in RECEIPTS)
        welcomes = {e.variant for e in c if e.event == EventName.WELCOME_SENT}
        forced_here = any(e in forced for e in c)
        assert welcomes <= {hashed} or forced_here  # sticky, unless a link named another
        for e in c:
            if e.button and e.button != "GET_STARTED":
                assert e.button.split("|")[1] == e.variant
    mixed = [c for c in spring if len({e.variant for e in c if e.event == EventName.WELCOME_SENT}) > 1]
    assert 5 < len(mixed) < 0.02 * len(spring)
    assert all(e.variant is None for c in customers if c[0].campaign_id != EXPERIMENT for e in c)


def test_the_samples_b_variant_reveals_more_as_planted(tmp_path):
    write_sample(tmp_path, customers=4000, days=30, seed=21, progress=False)

    rows = {row["variant"]: row for row in analytics.open(tmp_path).experiment().to_pylist()}

    assert list(rows) == ["A", "B"]
    assert min(rows["A"]["customers"], rows["B"]["customers"]) > 800
    assert rows["B"]["chance_to_win"] > 0.95
    assert rows["B"]["lift_low"] < 0.3 < rows["B"]["lift_high"]  # the planted lift, within the interval
    assert rows["A"]["srm_p"] > 0.001  # assigned 1:1 as recorded
    assert rows["A"]["excluded_mixed"] > 0
    assert rows["A"]["excluded_forced"] > 0
