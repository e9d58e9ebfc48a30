"""The metrics over real Parquet files read by DuckDB: hand-built journeys with known answers, and random
datasets checked against a plain-Python computation of every metric."""

from __future__ import annotations

import itertools
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analytics
from analytics import AnalyticsError, stats
from analytics.sample import write_sample
from bot.events import Event, detail_json, from_table
from bot.store import FileStore, write_events
from tests.support import reference_metrics as reference

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SPRING = "spring-sale"
FILE_NUMBERS = itertools.count(1)


class Journey:
    """Builds one customer's events: `j.at(seconds, name)`."""

    def __init__(self, customer: str, campaign: str = SPRING, start: datetime = T0) -> None:
        self.customer, self.campaign, self.start = customer, campaign, start
        self.events: list[Event] = []

    def at(self, seconds: float, name: str, **columns) -> Journey:
        ts = self.start + timedelta(seconds=seconds)
        self.events.append(
            Event(
                event_id=f"{self.customer}.{self.campaign}.{self.start:%s}.{len(self.events)}.{name}",
                ts=ts,
                page_id="p",
                customer_id=self.customer,
                campaign_id=self.campaign,
                event=name,
                **columns,
            )
        )
        return self

    def read(self, seconds: float, watermark_seconds: float) -> Journey:
        """A read receipt at `seconds` whose watermark is the platform's time of the last message read."""
        watermark = (self.start + timedelta(seconds=watermark_seconds) - EPOCH) // timedelta(milliseconds=1)
        return self.at(seconds, "message_read", watermark=watermark)


def store(root: Path, *batches: list[Event]) -> analytics.Events:
    """Each batch as the flusher writes one: a Parquet file per day, named in the order they were written."""
    for batch in batches:
        write_events(FileStore(str(root)), batch, f"writer-{next(FILE_NUMBERS):08d}")
    return analytics.open(root)


def counts(table) -> dict[str, int]:
    return dict(zip(table.column("step").to_pylist(), table.column("customers").to_pylist(), strict=True))


def known_journeys() -> list[Event]:
    """Journeys with the platform's two clocks: `at` for the bot's stamps and the customer's taps, `read`
    with the watermark the platform gives (its time of the last page message read, before the bot's stamp of
    sending it)."""
    journeys = [
        # a: the whole way: asks, reads the coupon, reveals.
        Journey("a")
        .at(0, "welcome_sent")
        .at(60, "coupon_requested", button="spring-sale||yes")
        .at(61, "coupon_sent")
        .read(90, 60.4)
        .at(120, "coupon_revealed", button="spring-sale||reveal")
        .at(120, "code_sent")
        .at(2 * 3600, "coupon_redeemed"),  # used at the till two hours later
        # b: declines.
        Journey("b").at(0, "welcome_sent").at(30, "declined", button="spring-sale||no").at(31, "thanks_sent"),
        # c: never answers (reads the welcome).
        Journey("c").at(0, "welcome_sent").read(5, -0.4),
        # d: asks, no read receipt, no reveal: the coupon was not seen.
        Journey("d").at(0, "welcome_sent").at(40, "coupon_requested").at(41, "coupon_sent"),
        # e: a late receipt of an older message (the welcome), after the coupon was sent, does not count.
        Journey("e").at(0, "welcome_sent").at(40, "coupon_requested").at(41, "coupon_sent").read(45, -0.4),
        # f: reveals with no read receipt: the reveal proves it was seen.
        Journey("f")
        .at(0, "welcome_sent")
        .at(40, "coupon_requested")
        .at(41, "coupon_sent")
        .at(100, "coupon_revealed"),
        # g: answers eight days later, outside the 7-day window.
        Journey("g").at(0, "welcome_sent").at(8 * 86400, "coupon_requested"),
        # h: a reveal logged before the request (an older coupon's button) does not complete the funnel.
        Journey("h").at(0, "welcome_sent").at(10, "coupon_revealed").at(50, "coupon_requested"),
        # i: reads the coupon and stops there: seen by the read alone. The watermark (the platform's time of
        # the coupon) is earlier than the bot's stamp of sending it.
        Journey("i").at(0, "welcome_sent").at(40, "coupon_requested").at(41.2, "coupon_sent").read(50, 40.6),
        # j: a quick tap: Yes at the platform's 0.8 s before the bot's stamp of the welcome (a slow Send API).
        Journey("j").at(0, "welcome_sent").at(-0.8, "coupon_requested").at(1.5, "coupon_sent"),
    ]
    return [e for j in journeys for e in j.events]


def test_the_funnel_follows_the_designed_definitions(tmp_path):
    events = store(tmp_path, known_journeys())

    funnel = events.funnel()

    assert funnel.column_names == [
        "step",
        "customers",
        "pct_of_reached",
        "pct_of_previous",
        "median_seconds",
        "p90_seconds",
    ]
    assert counts(funnel) == {
        "reached": 10,
        "responded": 8,  # a b d e f h i j
        "coupon_requested": 7,  # a d e f h i j
        "coupon_seen": 3,  # a (read, then reveal) f (reveal) i (read alone)
        "coupon_revealed": 2,  # a f
        "redeemed": 1,  # a
        "declined": 1,
    }
    rows = {row["step"]: row for row in funnel.to_pylist()}
    assert rows["responded"]["pct_of_reached"] == 80.0
    assert rows["coupon_revealed"]["pct_of_previous"] == pytest.approx(200 / 3, abs=0.01)  # of who saw it
    assert rows["declined"]["pct_of_previous"] == 12.5  # of those who responded
    assert rows["coupon_revealed"]["median_seconds"] == pytest.approx(110.0)  # a at 120 s, f at 100 s
    assert rows["coupon_seen"]["median_seconds"] == pytest.approx(90.0)  # a at 90 s, f at 100 s, i at 50 s
    assert rows["coupon_requested"]["median_seconds"] == pytest.approx(40.0)  # j's quick tap counts as 0 s
    assert rows["reached"]["median_seconds"] is None
    assert rows["redeemed"]["pct_of_previous"] == 50.0  # of those who revealed
    assert rows["redeemed"]["median_seconds"] == 2 * 3600.0


def test_a_new_processs_funnel_imports_neither_pandas_nor_pyarrow_compute(tmp_path):
    # pandas took 0.3 s of a new process's first answer, pyarrow.compute 0.08 s; the funnel needs neither.
    store(tmp_path, known_journeys())
    script = (
        "import sys, analytics\n"
        f"analytics.open({str(tmp_path)!r}).funnel()\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'pandas' or"
        " name == 'pyarrow.compute'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_read_counts_for_the_coupon_by_the_platforms_clock(tmp_path):
    # The watermark is the platform's time of the coupon: after the Yes tap, before the bot's stamp.
    alone = Journey("i").at(0, "welcome_sent").at(40, "coupon_requested").at(41.2, "coupon_sent")
    events = store(tmp_path, alone.read(50, 40.6).events)

    assert counts(events.funnel())["coupon_seen"] == 1
    assert events.journeys().column("coupon_seen").to_pylist() == [T0 + timedelta(seconds=50)]


def test_a_late_receipt_of_an_older_message_does_not_count(tmp_path):
    late = Journey("e").at(0, "welcome_sent").at(40, "coupon_requested").at(41, "coupon_sent")
    events = store(tmp_path, late.read(45, -0.4).events)

    assert counts(events.funnel())["coupon_seen"] == 0


def test_a_read_needs_a_coupon_sent_after_the_request(tmp_path):
    # The coupon's send failed; the customer declined later and read the thank-you.
    failed = Journey("k").at(0, "welcome_sent").at(40, "coupon_requested").at(41, "send_failed")
    failed.at(60, "declined").at(61, "thanks_sent").read(70, 60.5)
    events = store(tmp_path, failed.events)

    assert counts(events.funnel())["coupon_seen"] == 0


def test_a_quick_tap_before_the_bots_stamp_of_the_welcome_counts(tmp_path):
    quick = Journey("j").at(0, "welcome_sent").at(-0.8, "coupon_requested").at(1.5, "coupon_sent")
    too_early = Journey("old", start=T0 - timedelta(seconds=31)).at(0, "coupon_requested")
    too_early.at(31, "welcome_sent")
    events = store(tmp_path, quick.events, too_early.events)

    funnel = {row["step"]: row for row in events.funnel().to_pylist()}
    assert funnel["coupon_requested"]["customers"] == 1  # j; old's tap is beyond the 30 s allowance
    assert funnel["coupon_requested"]["median_seconds"] == 0.0


def revealed(customer: str, campaign: str = SPRING) -> Journey:
    """A journey up to the reveal, at 100 s on the platform's clock."""
    return (
        Journey(customer, campaign)
        .at(0, "welcome_sent")
        .at(40, "coupon_requested")
        .at(41, "coupon_sent")
        .at(100, "coupon_revealed")
        .at(101, "code_sent")
    )


def test_a_redemption_counts_after_the_reveal_with_the_bots_clock_allowance(tmp_path):
    # The till's press is stamped by the bot's clock, which may run behind the platform's by the allowance.
    later = revealed("later").at(3 * 86400, "coupon_redeemed")
    skewed = revealed("skewed").at(100 - 29, "coupon_redeemed")
    events = store(tmp_path, later.events + skewed.events)

    assert counts(events.funnel())["redeemed"] == 2
    days = {r["customer_id"]: r["redeemed"] for r in events.journeys().to_pylist()}
    assert days == {"later": T0 + timedelta(days=3), "skewed": T0 + timedelta(seconds=71)}


def test_a_redemption_before_the_reveal_of_another_campaign_or_past_the_window_does_not_count(tmp_path):
    before = revealed("before").at(100 - 31, "coupon_redeemed")  # past the 30 s allowance
    elsewhere = revealed("elsewhere")
    elsewhere.events += Journey("elsewhere", "summer-sale").at(3600, "coupon_redeemed").events
    too_late = revealed("too-late").at(8 * 86400, "coupon_redeemed")  # after the 7-day window
    never_revealed = Journey("unrevealed").at(0, "welcome_sent").at(40, "coupon_requested")
    never_revealed.at(41, "coupon_sent").at(3600, "coupon_redeemed")
    events = store(tmp_path, before.events + elsewhere.events + too_late.events + never_revealed.events)

    funnel = counts(events.funnel(campaign=SPRING))
    assert (funnel["coupon_revealed"], funnel["redeemed"]) == (3, 0)
    assert counts(events.funnel(window=timedelta(days=9)))["redeemed"] == 1  # too-late, in a wider window


def test_the_window_includes_its_last_microsecond(tmp_path):
    window = 7 * 86400
    on_time = Journey("on-time").at(0, "welcome_sent").at(window, "coupon_requested")
    late = Journey("late").at(0, "welcome_sent").at(window + 1e-6, "coupon_requested")
    events = store(tmp_path, on_time.events + late.events)

    assert counts(events.funnel())["coupon_requested"] == 1
    assert [r["customer_id"] for r in events.journeys().to_pylist() if r["coupon_requested"]] == ["on-time"]


def test_timelines_and_cohorts_count_redemptions_when_they_happened(tmp_path):
    j = revealed("r").at(8 * 86400, "coupon_redeemed")  # the Monday after next
    events = store(tmp_path, j.events)
    fortnight = timedelta(days=14)

    timeline = {(r["day"], r["step"]) for r in events.timeline(window=fortnight).to_pylist()}
    cohorts = events.cohorts("week", window=fortnight, step="redeemed").to_pylist()

    assert (T0.date() + timedelta(days=8), "redeemed") in timeline
    assert [(r["period"], r["customers"], r["share"]) for r in cohorts] == [(0, 0, 0.0), (1, 1, 1.0)]
    with pytest.raises(AnalyticsError, match="step"):
        events.cohorts("week", step="code_sent")


def test_reveals_that_found_the_pool_empty_are_counted_per_campaign(tmp_path):
    gone = Journey("g").at(0, "welcome_sent").at(40, "coupon_requested").at(41, "coupon_sent")
    gone.at(100, "coupon_revealed").at(100, "coupon_pool_empty").at(101, "all_gone_sent")
    twice = Journey("h").at(0, "coupon_pool_empty").at(50, "coupon_pool_empty")
    other = Journey("o", "summer-sale").at(0, "coupon_pool_empty")
    events = store(tmp_path, gone.events + twice.events + other.events)

    rows = {r["campaign_id"]: (r["reveals"], r["customers"]) for r in events.pool_empty().to_pylist()}
    assert rows == {SPRING: (3, 2), "summer-sale": (1, 1)}
    assert events.pool_empty(campaign="summer-sale").num_rows == 1
    assert events.pool_empty(start=T0.date() + timedelta(days=1)).num_rows == 0


def test_out_of_order_files_and_duplicates_change_nothing(tmp_path):
    events = known_journeys()
    later_first = sorted(events, key=lambda e: e.ts, reverse=True)

    stored = store(tmp_path, later_first[:10], later_first[10:], events[:7], events)

    assert counts(stored.funnel()) == counts(store(tmp_path / "once", events).funnel())
    assert stored.sql("select count(*) as n from events").column("n")[0].as_py() == len(events)
    assert stored.sql("select count(*) as n from raw_events").column("n")[0].as_py() > len(events)


def test_the_range_is_inclusive_utc_days_and_the_window_may_cross_its_end(tmp_path):
    midnight = datetime(2026, 3, 2, tzinfo=UTC)
    before = (
        Journey("before", start=midnight - timedelta(seconds=1)).at(0, "welcome_sent").at(120, "declined")
    )
    after = Journey("after", start=midnight).at(0, "welcome_sent")
    events = store(tmp_path, before.events + after.events)

    march_1 = counts(events.funnel(start=date(2026, 3, 1), end=date(2026, 3, 1)))
    march_2 = counts(events.funnel(start=date(2026, 3, 2), end=date(2026, 3, 2)))
    in_new_york = counts(events.funnel(start=date(2026, 3, 1), end=date(2026, 3, 1), tz="America/New_York"))

    assert (march_1["reached"], march_1["declined"]) == (1, 1)  # answered after midnight, inside the window
    assert march_2["reached"] == 1
    assert in_new_york["reached"] == 2  # 23:59:59 and 00:00:00 UTC are both March 1 in New York


def test_a_campaign_filter_and_customers_in_several_campaigns(tmp_path):
    spring = Journey("x").at(0, "welcome_sent").at(10, "coupon_requested")
    summer = Journey("x", campaign="summer-sale").at(50, "welcome_sent").at(70, "declined")
    events = store(tmp_path, spring.events + summer.events)

    assert counts(events.funnel(campaign=SPRING))["coupon_requested"] == 1
    assert counts(events.funnel(campaign="summer-sale"))["declined"] == 1
    assert counts(events.funnel())["reached"] == 1  # customers count once across campaigns
    assert counts(events.funnel())["responded"] == 1
    assert events.journeys().num_rows == 2  # one journey per campaign
    assert [r["campaign_id"] for r in events.campaigns().to_pylist()] == [SPRING, "summer-sale"]


def test_a_second_journey_enters_when_the_range_starts_after_the_first(tmp_path):
    first = Journey("y").at(0, "welcome_sent")
    second = Journey("y", start=T0 + timedelta(days=20)).at(0, "welcome_sent").at(30, "coupon_requested")
    events = store(tmp_path, first.events + second.events)

    assert counts(events.funnel())["coupon_requested"] == 0  # the request is 20 days after the first entry
    later = counts(events.funnel(start=(T0 + timedelta(days=20)).date()))
    assert later["coupon_requested"] == 1


def test_the_timeline_counts_each_step_on_the_day_it_was_reached(tmp_path):
    j = Journey("t", start=datetime(2026, 3, 2, 23, 59, tzinfo=UTC)).at(0, "welcome_sent").at(120, "declined")
    events = store(tmp_path, j.events)

    rows = {(r["day"], r["step"]): r["customers"] for r in events.timeline().to_pylist()}

    assert rows == {
        (date(2026, 3, 2), "reached"): 1,
        (date(2026, 3, 3), "responded"): 1,
        (date(2026, 3, 3), "declined"): 1,
    }


@pytest.mark.parametrize(
    ("tz", "midnight"),
    [
        ("Asia/Kolkata", datetime(2026, 3, 2, 18, 30, tzinfo=UTC)),  # +5:30
        ("Asia/Kathmandu", datetime(2026, 3, 2, 18, 15, tzinfo=UTC)),  # +5:45
        ("Europe/Paris", datetime(2026, 3, 28, 23, 0, tzinfo=UTC)),  # the night the clocks go forward
        ("Europe/Paris", datetime(2026, 3, 29, 22, 0, tzinfo=UTC)),  # the next night, in summer time
    ],
)
def test_the_timeline_and_cohorts_split_days_at_the_zones_midnight(tmp_path, tz, midnight):
    before = Journey("before", start=midnight - timedelta(microseconds=1)).at(0, "welcome_sent")
    after = Journey("after", start=midnight).at(0, "welcome_sent")
    events = store(tmp_path, before.events + after.events)

    rows = {r["day"]: r["customers"] for r in events.timeline(tz=tz).to_pylist() if r["step"] == "reached"}

    day = midnight.astimezone(ZoneInfo(tz)).date()
    assert rows == {day - timedelta(days=1): 1, day: 1}
    cohorts = events.cohorts("day", tz=tz, step="reached").to_pylist()
    assert {(r["cohort"], r["period"]): r["customers"] for r in cohorts} == {
        (day - timedelta(days=1), 0): 1,
        (day - timedelta(days=1), 1): 0,
        (day, 0): 1,
    }


def test_weekly_cohorts_share_and_completeness(tmp_path):
    week1 = [Journey(c).at(0, "welcome_sent").at(50, "coupon_requested") for c in ("p", "q", "r", "s")]
    week1[0].at(100, "coupon_revealed")
    week1[1].at(8 * 86400, "coupon_revealed")  # revealed in the next week
    week2 = [Journey("u", start=T0 + timedelta(days=7)).at(0, "welcome_sent").at(30, "coupon_requested")]
    week2[0].at(60, "coupon_revealed")
    events = store(tmp_path, [e for j in week1 + week2 for e in j.events])

    fortnight = timedelta(days=14)
    rows = {
        (r["cohort"], r["period"]): r for r in events.cohorts(period="week", window=fortnight).to_pylist()
    }

    monday = date(2026, 3, 2)
    assert rows[(monday, 0)]["share"] == 0.25
    assert rows[(monday, 0)]["complete"] is True
    assert rows[(monday, 1)]["share"] == 0.25
    assert rows[(monday, 1)]["complete"] is False  # the data ends inside that week
    assert rows[(monday + timedelta(days=7), 0)]["share"] == 1.0
    with pytest.raises(AnalyticsError, match="period"):
        events.cohorts(period="year")


def test_cohorts_count_the_funnels_reveals_within_its_window_and_range(tmp_path):
    early = Journey("p").at(0, "welcome_sent").at(50, "coupon_requested").at(8 * 86400, "coupon_revealed")
    later = Journey("u", start=T0 + timedelta(days=7)).at(0, "welcome_sent")
    events = store(tmp_path, early.events + later.events)

    monday = date(2026, 3, 2)
    rows = {(r["cohort"], r["period"]): r["customers"] for r in events.cohorts(period="week").to_pylist()}
    assert rows[(monday, 1)] == 0  # the reveal came after the 7-day window: the funnel does not count it
    in_range = events.cohorts(period="week", start=monday + timedelta(days=7))
    assert set(in_range.column("cohort").to_pylist()) == {monday + timedelta(days=7)}


def test_buttons_count_clicks_and_customers(tmp_path):
    a = Journey("a").at(0, "conversation_started", button="GET_STARTED").at(1, "welcome_sent")
    a.at(5, "coupon_requested", button="spring-sale||yes").at(
        9, "coupon_requested", button="spring-sale||yes"
    )
    b = Journey("b").at(0, "conversation_started", button="GET_STARTED").at(1, "welcome_sent")
    events = store(tmp_path, a.events + b.events)

    rows = {r["button"]: r for r in events.buttons().to_pylist()}

    assert rows["GET_STARTED"]["clicks"] == 2
    assert rows["spring-sale||yes"] == {
        "button": "spring-sale||yes",
        "clicks": 2,
        "customers": 1,
        "share": 0.5,
        "step": "coupon_requested",
    }


def test_files_with_different_columns_are_read_together(tmp_path):
    j = Journey("old").at(0, "welcome_sent").at(10, "declined")
    store(tmp_path, j.events[:1])
    # A file from an older writer, without the `variant` and `detail` columns.
    old = pa.table(
        {
            "event_id": ["old.2"],
            "ts": pa.array([T0 + timedelta(seconds=10)], pa.timestamp("us", tz="UTC")),
            "page_id": ["p"],
            "customer_id": ["old"],
            "campaign_id": [SPRING],
            "event": ["declined"],
            "button": [None],
            "message_id": [None],
        }
    )
    day = tmp_path / "events" / f"event_date={T0.date()}"
    pq.write_table(old, day / "older-writer-00000001.parquet")

    assert counts(analytics.open(tmp_path).funnel())["declined"] == 1


def test_an_older_file_read_first_does_not_hide_the_columns_of_newer_ones(tmp_path):
    # The older file's name sorts first: read as one relation with the newer files, its columns would be
    # taken for all, and the newer read receipt's watermark lost.
    asked = Journey("new").at(0, "welcome_sent").at(40, "coupon_requested").at(41.2, "coupon_sent")
    store(tmp_path, asked.read(50, 40.6).events)
    old = pa.table(
        {
            "event_id": ["old.1"],
            "ts": pa.array([T0], pa.timestamp("us", tz="UTC")),
            "page_id": ["p"],
            "customer_id": ["old"],
            "campaign_id": [SPRING],
            "event": ["welcome_sent"],
        }
    )
    day = tmp_path / "events" / f"event_date={T0.date()}"
    pq.write_table(old, day / "a-older-writer-00000001.parquet")
    assert sorted(path.name for path in day.iterdir())[0].startswith("a-older-writer")

    funnel = counts(analytics.open(tmp_path).funnel())
    assert (funnel["reached"], funnel["coupon_seen"]) == (2, 1)


def test_a_file_rewritten_under_its_name_is_read_with_its_new_columns(tmp_path):
    asked = Journey("a").at(0, "welcome_sent").at(40, "coupon_requested").at(41.2, "coupon_sent")
    events = store(tmp_path, asked.read(50, 40.6).events)
    path = next((tmp_path / "events").glob("*/*.parquet"))
    written = pq.read_table(path)
    pq.write_table(written.drop_columns(["watermark"]), path)
    assert counts(events.funnel())["coupon_seen"] == 0  # its watermark gone with the column

    pq.write_table(written, path)  # written again, as a replayed flush does: the column is back
    assert counts(events.funnel())["coupon_seen"] == 1


def test_a_read_receipt_of_an_older_writer_keeps_its_watermark_in_detail(tmp_path):
    asked = Journey("old").at(0, "welcome_sent").at(40, "coupon_requested").at(41, "coupon_sent")
    store(tmp_path, asked.events)
    watermark = (T0 + timedelta(seconds=40.5) - EPOCH) // timedelta(milliseconds=1)
    # A file written before receipts had a watermark column: the watermark is in `detail`.
    old = pa.table(
        {
            "event_id": ["old.read"],
            "ts": pa.array([T0 + timedelta(seconds=50)], pa.timestamp("us", tz="UTC")),
            "page_id": ["p"],
            "customer_id": ["old"],
            "campaign_id": [SPRING],
            "event": ["message_read"],
            "detail": [detail_json(watermark=watermark)],
        }
    )
    pq.write_table(old, tmp_path / "events" / f"event_date={T0.date()}" / "older-writer-00000001.parquet")

    assert counts(analytics.open(tmp_path).funnel())["coupon_seen"] == 1


def test_an_empty_store_gives_empty_answers_then_sees_new_files(tmp_path):
    events = analytics.open(tmp_path)

    assert counts(events.funnel())["reached"] == 0
    assert events.campaigns().num_rows == 0
    assert events.timeline().num_rows == 0

    store(tmp_path, Journey("n").at(0, "welcome_sent").events)

    assert counts(events.funnel())["reached"] == 1  # no reopening needed


def test_bad_questions_get_clear_errors(tmp_path):
    events = analytics.open(tmp_path)
    with pytest.raises(AnalyticsError, match="time zone"):
        events.funnel(tz="Mars/Olympus")
    with pytest.raises(AnalyticsError, match="after end"):
        events.funnel(start=date(2026, 3, 5), end=date(2026, 3, 1))
    with pytest.raises(AnalyticsError, match="window"):
        events.funnel(window=timedelta(0))


# -- every metric against a plain-Python computation ---------------------------------------------------------

NAMES = [
    "welcome_sent",
    "coupon_requested",
    "declined",
    "coupon_sent",
    "message_read",
    "coupon_revealed",
    "coupon_redeemed",
    "conversation_started",
]


@st.composite
def datasets(draw) -> list[Event]:
    events = []
    for index in range(draw(st.integers(1, 40))):
        name = draw(st.sampled_from(NAMES))
        ts = T0 + timedelta(
            seconds=draw(st.integers(0, 12 * 86400)), microseconds=draw(st.integers(0, 999_999))
        )
        watermark = None
        if name == "message_read":
            watermark = int(ts.timestamp() * 1000) - draw(st.integers(-5000, 200_000))
        button = (
            draw(st.sampled_from([None, "GET_STARTED", "spring-sale||yes"]))
            if name != "welcome_sent"
            else None
        )
        source = detail = None
        if name in ("welcome_sent", "conversation_started"):
            source = draw(st.sampled_from([None, "till", "ad:1"]))
        if name == "conversation_started" and source == "ad:1":
            detail = detail_json(
                trigger="postback", ad_id="1", ad_title=draw(st.sampled_from(["One", "Two"]))
            )
        events.append(
            Event(
                event_id=f"e{index}",
                ts=ts,
                page_id="p",
                customer_id=draw(st.sampled_from(["c1", "c2", "c3", "c4"])),
                campaign_id=draw(st.sampled_from([SPRING, "summer-sale"])),
                event=name,
                button=button,
                watermark=watermark,
                source=source,
                detail=detail,
            )
        )
    # Redeliveries and replays: exact copies of earlier events.
    copies = draw(st.lists(st.integers(0, len(events) - 1), max_size=8))
    return events + [events[i] for i in copies]


def write_files(root: Path, events: list[Event]) -> None:
    """Two Parquet files per day, as two writers would leave them, written the way the flusher writes."""
    for part, chunk in enumerate((events[::2], events[1::2])):
        write_events(FileStore(str(root)), chunk, f"writer{part}-00000001")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=datasets(),
    campaign=st.sampled_from([None, SPRING]),
    start=st.sampled_from([None, date(2026, 3, 4)]),
    end=st.sampled_from([None, date(2026, 3, 9)]),
    window_days=st.sampled_from([1, 7]),
    tz=st.sampled_from(["UTC", "Asia/Tokyo"]),
)
def test_every_metric_matches_a_plain_python_computation(
    tmp_path_factory, events, campaign, start, end, window_days, tz
):
    root = tmp_path_factory.mktemp("random")
    write_files(root, events)
    stored = analytics.open(root)
    filters = {
        "campaign": campaign,
        "start": start,
        "end": end,
        "window": timedelta(days=window_days),
        "tz": tz,
    }

    expected = reference.funnel(events, **filters)
    for row in stored.funnel(**filters).to_pylist():
        assert row["customers"] == expected[row["step"]]["customers"], row["step"]
        for key in ("median_seconds", "p90_seconds"):
            assert row[key] == pytest.approx(expected[row["step"]][key], abs=1e-3), (row["step"], key)

    timeline = {(r["day"], r["step"]): r["customers"] for r in stored.timeline(**filters).to_pylist()}
    assert timeline == reference.timeline(events, **filters)

    for period in ("day", "week", "month"):
        cohorts = {
            (r["cohort"], r["period"]): {k: r[k] for k in ("customers", "share", "complete")}
            for r in stored.cohorts(period=period, **filters).to_pylist()
        }
        assert cohorts == reference.cohorts(events, period=period, **filters), period
    redeemed = {
        (r["cohort"], r["period"]): {k: r[k] for k in ("customers", "share", "complete")}
        for r in stored.cohorts(period="week", step="redeemed", **filters).to_pylist()
    }
    assert redeemed == reference.cohorts(events, period="week", step="redeemed", **filters)

    buttons = {
        (r["button"], r["step"]): {k: r[k] for k in ("clicks", "customers", "share")}
        for r in stored.buttons(campaign=campaign, start=start, end=end, tz=tz).to_pylist()
    }
    assert buttons == reference.buttons(events, campaign=campaign, start=start, end=end, tz=tz)

    sources = {row.pop("source"): row for row in stored.sources(**filters).to_pylist()}
    assert sources == reference.sources(events, **filters)
    for source in ("till", "unknown"):
        funnel = counts(stored.funnel(source=source, **filters))
        expected = reference.funnel(events, source=source, **filters)
        assert funnel == {step: row["customers"] for step, row in expected.items()}, source


def test_sample_journeys_on_the_platforms_clocks_match_the_reference(tmp_path):
    write_sample(tmp_path, customers=400, days=10, seed=3, progress=False)
    stored = from_table(ds.dataset(tmp_path / "events", format="parquet", partitioning="hive").to_table())
    events = analytics.open(tmp_path)

    funnel = counts(events.funnel())
    expected = reference.funnel(stored)

    assert funnel == {step: row["customers"] for step, row in expected.items()}
    # Customers who read the coupon and stopped there: seen by their read alone.
    assert funnel["coupon_seen"] > funnel["coupon_revealed"]
    # A third to a half of the reveals are used at the till.
    assert funnel["coupon_revealed"] / 2 > funnel["redeemed"] > funnel["coupon_revealed"] / 4


def test_sample_sources_and_experiment_match_the_reference(tmp_path):
    write_sample(tmp_path, customers=1500, days=20, seed=4, progress=False)
    stored = from_table(ds.dataset(tmp_path / "events", format="parquet", partitioning="hive").to_table())
    events = analytics.open(tmp_path)

    sources = {row.pop("source"): row for row in events.sources().to_pylist()}
    assert sources == reference.sources(stored)
    assert {"till", "flyer", "instagram", "direct"} < set(sources)
    spring = {
        row.pop("source"): row
        for row in events.sources(campaign=SPRING, window=timedelta(days=1)).to_pylist()
    }
    assert spring == reference.sources(stored, campaign=SPRING, window=timedelta(days=1))
    assert counts(events.funnel(source="till")) == {
        step: row["customers"] for step, row in reference.funnel(stored, source="till").items()
    }

    for step in ("coupon_revealed", "redeemed"):
        expected = reference.experiment(stored, SPRING, step)
        table = events.experiment(step=step)
        assert {
            row["variant"]: {k: row[k] for k in ("customers", "conversions", "declined", "send_failed")}
            for row in table.to_pylist()
        } == expected["variants"]
        assert table.column("excluded_mixed")[0].as_py() == expected["excluded_mixed"] > 0
        assert table.column("excluded_forced")[0].as_py() == expected["excluded_forced"] > 0
    final = {r["variant"]: r for r in events.experiment_timeline().to_pylist()[-2:]}
    assert {v: (r["customers"], r["conversions"]) for v, r in final.items()} == {
        v: (c["customers"], c["conversions"])
        for v, c in reference.experiment(stored, SPRING)["variants"].items()
    }


def test_a_filters_object_and_keywords_ask_the_same_question(tmp_path):
    events = store(tmp_path, known_journeys())
    question = analytics.Filters(campaign=SPRING, start=T0.date(), window=timedelta(days=1))

    assert events.funnel(question) == events.funnel(
        campaign=SPRING, start=T0.date(), window=timedelta(days=1)
    )
    assert events.timeline(question) == events.timeline(
        campaign=SPRING, start=T0.date(), window=timedelta(days=1)
    )
    with pytest.raises(AnalyticsError, match="either"):
        events.funnel(question, campaign=SPRING)
    with pytest.raises(AnalyticsError, match="unknown filter 'campain'"):
        events.funnel(campain=SPRING)


def test_figures_follow_each_new_file_without_a_rebuild(tmp_path):
    events = store(tmp_path, Journey("a").at(0, "welcome_sent").events)
    assert counts(events.funnel())["reached"] == 1

    store(tmp_path, Journey("a").at(60, "coupon_requested").events, Journey("b").at(0, "welcome_sent").events)

    assert counts(events.funnel())["reached"] == 2
    assert counts(events.funnel())["coupon_requested"] == 1  # a's request, in a later file, joins its journey
    compacted = tmp_path / "events" / f"event_date={T0.date()}"
    for path in sorted(compacted.glob("*.parquet"))[1:]:
        path.unlink()  # a file removed (as compaction replaces files): read everything again
    assert counts(events.funnel())["reached"] == 1


# -- sources -------------------------------------------------------------------------------------------------


def entered(
    customer: str, source: str | None, campaign: str = SPRING, start: datetime = T0, **detail
) -> Journey:
    """A journey that starts from `source` (as the bot records it: on the start and on its welcome)."""
    return (
        Journey(customer, campaign, start)
        .at(0, "conversation_started", source=source, detail=detail_json(trigger="postback", **detail))
        .at(1, "welcome_sent", source=source)
    )


def by_source(table) -> dict[str, dict]:
    return {row.pop("source"): row for row in table.to_pylist()}


def test_the_funnel_by_source_counts_a_customer_once_under_their_earliest_entry(tmp_path):
    # x came from the till in spring, then from a flyer in summer, and declined there.
    till = entered("x", "till").at(20, "coupon_requested")
    flyer = entered("x", "flyer", "summer-sale", T0 + timedelta(days=1)).at(30, "declined")
    before_sources = Journey("y").at(0, "welcome_sent")  # written before sources were recorded
    events = store(tmp_path, till.events + flyer.events + before_sources.events)

    everyone = by_source(events.sources())
    summer = by_source(events.sources(campaign="summer-sale"))

    assert list(everyone) == ["till", "unknown"]  # by reached, then source: flyer has no customer of its own
    assert everyone["till"] == {
        "title": None,
        "reached": 1,
        "responded": 1,
        "coupon_requested": 1,
        "coupon_seen": 0,
        "coupon_revealed": 0,
        "redeemed": 0,
        "declined": 1,  # x declined in summer: a customer is at a step when any of their journeys is
    }
    assert everyone["unknown"]["reached"] == 1
    assert list(summer) == ["flyer"]
    assert summer["flyer"]["declined"] == 1
    funnel = counts(events.funnel())
    assert {step: sum(row[step] for row in everyone.values()) for step in funnel} == funnel


def test_entries_at_the_same_instant_in_two_campaigns_count_under_the_smallest_source(tmp_path):
    # Never from one bot, whose stamps differ; but data merged from elsewhere may tie. Which campaign is
    # written first alternates, so that an arbitrary pick would fail for some of the customers.
    journeys = []
    for n in range(40):
        first, second = ("spring-sale", "summer-sale") if n % 2 else ("summer-sale", "spring-sale")
        journeys += [entered(f"c{n}", "zebra", first), entered(f"c{n}", "apple", second)]
    events = store(tmp_path, [event for journey in journeys for event in journey.events])

    assert {source: row["reached"] for source, row in by_source(events.sources()).items()} == {"apple": 40}


def test_an_ads_source_carries_its_latest_title(tmp_path):
    first = entered("a", "ad:6123", ad_id="6123", ad_title="Spring sale")
    later = entered(
        "b", "ad:6123", start=T0 + timedelta(hours=1), ad_id="6123", ad_title="Spring sale: 20% off"
    )
    events = store(tmp_path, first.events + later.events)

    rows = events.sources().to_pylist()

    assert [(r["source"], r["title"], r["reached"]) for r in rows] == [("ad:6123", "Spring sale: 20% off", 2)]
    assert events.sources().column_names == ["source", "title", *analytics.STEPS]


def test_a_source_filter_counts_the_journeys_whose_entry_welcome_came_from_it(tmp_path):
    till = entered("x", "till").at(20, "coupon_requested")
    flyer = entered("x", "flyer", "summer-sale", T0 + timedelta(days=1)).at(30, "declined")
    # z came from a flyer, then opened the till's QR code in the same thread: a later welcome, not the entry.
    again = entered("z", "flyer").at(10, "declined")
    again.events += entered("z", "till", start=T0 + timedelta(hours=2)).events
    unknown = Journey("y").at(0, "welcome_sent")
    events = store(tmp_path, till.events + flyer.events + again.events + unknown.events)

    from_the_till = counts(events.funnel(source="till"))
    assert (from_the_till["reached"], from_the_till["declined"]) == (1, 0)  # x's spring journey only
    assert counts(events.funnel(source="flyer"))["reached"] == 2  # x in summer, z
    assert counts(events.funnel(source="unknown"))["reached"] == 1
    assert counts(events.funnel(source="flyer", campaign=SPRING))["declined"] == 1
    assert {r["customer_id"] for r in events.journeys(source="flyer").to_pylist()} == {"x", "z"}
    assert events.journeys(source="flyer").column("source").to_pylist() == ["flyer", "flyer"]


# -- experiments ---------------------------------------------------------------------------------------------

PLAN = detail_json(trigger="postback", variants=[["control", 0.5], ["bold", 0.5]])


def exposed(
    customer: str, variant: str, *, start: datetime = T0, forced: bool = False, plan: str = PLAN
) -> Journey:
    """A customer of an experiment: the start records the campaign's variants, the welcome the variant."""
    detail = plan if not forced else plan[:-1] + ',"variant_forced":true}'
    return (
        Journey(customer, SPRING, start)
        .at(0, "conversation_started", variant=variant, source="till", detail=detail)
        .at(1, "welcome_sent", variant=variant, source="till")
    )


def revealing(journey: Journey) -> Journey:
    variant = journey.events[-1].variant
    return (
        journey.at(20, "coupon_requested", variant=variant)
        .at(21, "coupon_sent", variant=variant)
        .at(50, "coupon_revealed", variant=variant)
    )


def experiment_journeys() -> list[Event]:
    journeys = [
        revealing(exposed("c1", "control")),
        exposed("c2", "control").at(30, "declined", variant="control"),
        exposed("c3", "control").at(3 * 86400, "send_failed", variant="control"),  # in the window
        exposed("c4", "control").at(9 * 86400, "send_failed", variant="control"),  # after it
        revealing(exposed("b1", "bold")),
        revealing(exposed("b2", "bold")).at(60, "send_failed", variant="bold"),
        exposed("b3", "bold"),
        # m saw the control, then (a new journey in the same campaign) the bold variant: excluded.
        revealing(exposed("m", "control")),
        exposed("m", "bold", start=T0 + timedelta(days=2)),
        # f followed a link that forced the bold variant: excluded.
        revealing(exposed("f", "bold", forced=True)),
    ]
    return [e for j in journeys for e in j.events]


def test_an_experiment_compares_the_variants_in_the_campaign_files_order(tmp_path):
    events = store(tmp_path, experiment_journeys())

    table = events.experiment()

    # The comparison's columns (tests/test_stats.py names them), then the guardrails and exclusions.
    assert table.column_names == [
        *stats.SCHEMA.names,
        "declined",
        "send_failed",
        "excluded_mixed",
        "excluded_forced",
    ]
    rows = {r["variant"]: r for r in table.to_pylist()}
    assert table.column("variant").to_pylist() == ["control", "bold"]  # the first listed is the reference
    assert [(r["customers"], r["conversions"], r["declined"], r["send_failed"]) for r in rows.values()] == [
        (4, 1, 1, 1),
        (3, 2, 0, 1),
    ]
    assert table.column("excluded_mixed").to_pylist() == [1, 1]
    assert table.column("excluded_forced").to_pylist() == [1, 1]
    assert rows["control"]["lift"] is None
    assert rows["bold"]["lift"] == pytest.approx((2 / 3) / (1 / 4) - 1)
    compared = stats.compare([("control", 4, 1), ("bold", 3, 2)], weights=[0.5, 0.5])
    assert table.select(compared.column_names) == compared
    assert events.experiment(campaign=SPRING) == table


def test_an_experiment_counts_any_step_and_only_the_questions_customers(tmp_path):
    later = revealing(exposed("late", "bold", start=T0 + timedelta(days=5))).at(3600, "coupon_redeemed")
    events = store(tmp_path, experiment_journeys() + later.events)

    redeemed = events.experiment(step="redeemed").to_pylist()
    first_days = events.experiment(end=T0.date() + timedelta(days=1)).to_pylist()
    from_the_till = events.experiment(source="till").column("customers").to_pylist()

    assert [(r["variant"], r["conversions"]) for r in redeemed] == [("control", 0), ("bold", 1)]
    assert [r["customers"] for r in first_days] == [4, 3]  # late entered on day 5
    assert from_the_till == [4, 4]
    assert events.experiment(source="flyer").column("customers").to_pylist() == [0, 0]
    with pytest.raises(AnalyticsError, match="step"):
        events.experiment(step="reached")


def test_the_sample_ratio_check_uses_the_recorded_shares(tmp_path):
    plan = detail_json(trigger="postback", variants=[["A", 0.8], ["B", 0.2]])
    journeys = [exposed(f"a{n}", "A", plan=plan) for n in range(8)] + [exposed("b0", "B", plan=plan)]
    events = store(tmp_path, [e for j in journeys for e in j.events])

    srm = events.experiment().column("srm_p").to_pylist()

    assert srm == [pytest.approx(stats.chi_square_sf((8 - 7.2) ** 2 / 7.2 + (1 - 1.8) ** 2 / 1.8, 1))] * 2
    assert srm[0] > 0.5  # 8:1 is as planned; against equal shares it would be a mismatch
    assert stats.compare([("A", 8, 0), ("B", 1, 0)]).column("srm_p")[0].as_py() < 0.05


def test_the_experiment_timeline_is_cumulative_by_day_of_entry(tmp_path):
    journeys = [
        revealing(exposed("c1", "control")),
        exposed("b1", "bold"),
        revealing(exposed("c2", "control", start=T0 + timedelta(days=2))),
        revealing(exposed("b2", "bold", start=T0 + timedelta(days=2))),
        revealing(exposed("f", "bold", start=T0 + timedelta(days=1), forced=True)),  # excluded
    ]
    events = store(tmp_path, [e for j in journeys for e in j.events])

    rows = [
        (r["day"], r["variant"], r["customers"], r["conversions"])
        for r in events.experiment_timeline().to_pylist()
    ]

    day = T0.date()
    assert rows == [
        (day, "control", 1, 1),
        (day, "bold", 1, 0),
        (day + timedelta(days=1), "control", 1, 1),
        (day + timedelta(days=1), "bold", 1, 0),
        (day + timedelta(days=2), "control", 2, 2),
        (day + timedelta(days=2), "bold", 2, 1),
    ]
    last = events.experiment_timeline().to_pylist()[-1]
    assert (last["rate"], last["rate_low"], last["rate_high"]) == (0.5, *stats.wilson(2, 1))


def test_an_experiment_needs_one_campaign_with_variants(tmp_path):
    events = store(tmp_path, Journey("n").at(0, "welcome_sent").events)
    with pytest.raises(AnalyticsError, match="one campaign with variants"):
        events.experiment()

    other = Journey("o", "summer-sale").at(0, "conversation_started", variant="A", detail=PLAN)
    store(tmp_path, experiment_journeys(), other.events)
    with pytest.raises(AnalyticsError, match="choose one"):
        events.experiment()
    with pytest.raises(AnalyticsError, match="choose one"):
        events.experiment_timeline()
    assert events.experiment(campaign=SPRING).num_rows == 2
    with pytest.raises(AnalyticsError, match="'loyalty' recorded no variants"):
        events.experiment(campaign="loyalty")
    with pytest.raises(AnalyticsError, match="variant filter"):
        events.experiment(campaign=SPRING, variant="bold")


def test_a_variant_filter_counts_the_journeys_whose_entry_welcome_had_it(tmp_path):
    events = store(tmp_path, experiment_journeys())

    assert counts(events.funnel(variant="bold"))["reached"] == 3 + 1  # b1 b2 b3 f; m entered with control
    assert counts(events.funnel(variant="control"))["coupon_revealed"] == 2  # c1 m
    assert counts(events.funnel(variant="none-such"))["reached"] == 0
    clicks = {r["button"]: r["clicks"] for r in events.buttons(variant="control").to_pylist()}
    assert clicks == {}  # these journeys' clicks carry no payload
