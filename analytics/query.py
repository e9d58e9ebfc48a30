"""The metrics, as DuckDB queries over the event store: the one door for notebooks, dashboard and reports.

Opening a store reads its files once into a few small tables (`funnel_entries`: for every `welcome_sent`,
when each later step of the funnel first followed it; `reveals`; `clicks`; `campaign_summary`). Every metric
is a query over those, so a figure is the same whichever view shows it, and a question costs one pass over
one row per journey instead of joins over every event. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from bot.events import FILE_SCHEMA, PARTITION_COLUMN, SCHEMA

# The funnel's steps in order, and the step each one is a share of (`declined` branches off `responded`).
STEPS = ("reached", "responded", "coupon_requested", "coupon_seen", "coupon_revealed", "declined")
PREVIOUS = {
    "responded": "reached",
    "coupon_requested": "responded",
    "coupon_seen": "coupon_requested",
    "coupon_revealed": "coupon_seen",
    "declined": "responded",
}
PERIODS = ("day", "week", "month")
DEFAULT_WINDOW = timedelta(days=7)

FUNNEL_SCHEMA = pa.schema(
    [
        ("step", pa.string()),
        ("customers", pa.int64()),
        ("pct_of_reached", pa.float64()),
        ("pct_of_previous", pa.float64()),
        ("median_seconds", pa.float64()),
        ("p90_seconds", pa.float64()),
    ]
)


class AnalyticsError(ValueError):
    """A question the metrics cannot answer as asked (an unknown period, a bad time zone, …)."""


@dataclass(frozen=True)
class Range:
    """Which journeys a question is about: campaign, inclusive days in `tz`, and the conversion window."""

    campaign: str | None
    start: date | None
    end: date | None
    window: timedelta
    tz: str

    def params(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "start": self.start,
            "end": self.end,
            "window_us": int(self.window / timedelta(microseconds=1)),
            "tz": self.tz,
        }


def open(source: str | Path = "data") -> Events:  # the documented `analytics.open(...)`
    """Events in a directory or an `s3://bucket/prefix` store."""
    return Events(str(source))


# -- reading the store ---------------------------------------------------------------------------------------

# Readers deduplicate by event_id: a redelivered webhook, a replayed log, files met twice.
EVENTS_VIEW = """
create or replace view events as
select * from raw_events
qualify row_number() over (partition by event_id order by ts) = 1
"""

# The columns the metrics read, with integer keys. Rows are deduplicated by a 64-bit hash of event_id first
# (grouping integers is several times cheaper than grouping strings); rows whose hash is shared are then
# deduplicated again on the event_id itself, so two distinct ids never merge.
METRIC_COLUMNS = """
hash(event_id) as id_hash,
ts,
hash(campaign_id, customer_id) as journey,  -- a journey is one customer in one campaign
hash(customer_id) as customer,
case when event = 'welcome_sent' then customer_id end as customer_id,
campaign_id,
event,
button,
case when event = 'message_read' then try_cast(json_extract(detail, '$.watermark') as bigint) end as watermark
"""

LOAD_METRIC_EVENTS = f"""
create or replace temp table metric_events as select {METRIC_COLUMNS} from raw_events
"""

SHARED_HASHES = """
create or replace temp table shared_hashes as
select id_hash from metric_events group by id_hash having count(*) > 1
"""

REPLACE_SHARED_HASHES = f"""
delete from metric_events where id_hash in (select id_hash from shared_hashes);
insert into metric_events
select {METRIC_COLUMNS} from raw_events
where hash(event_id) in (select id_hash from shared_hashes)
qualify row_number() over (partition by event_id order by ts) = 1;
"""

# For every welcome_sent: each later step is the first event of its kind at or after the step before it
# (an ASOF join finds exactly that), stored as microseconds after the welcome. Whether a step came inside
# the conversion window, and which welcome is a journey's entry into a date range, depends on the
# question, so it is decided at query time (ENTRIES below).
FUNNEL_ENTRIES = """
create or replace table funnel_entries as
with welcome as (
    select row_number() over () as entry_id, journey, customer, customer_id, campaign_id, ts as entry_ts,
           lag(ts) over (partition by journey order by ts) as previous_ts
    from metric_events where event = 'welcome_sent'
),
requested as (select journey, ts from metric_events where event = 'coupon_requested'),
declined as (select journey, ts from metric_events where event = 'declined'),
sent as (select journey, ts from metric_events where event = 'coupon_sent'),
revealed as (select journey, ts from metric_events where event = 'coupon_revealed'),
answered as (  -- the first request and the first decline after the welcome
    select w.*, r.ts as requested_ts, d.ts as declined_ts
    from welcome w
    asof left join requested r on w.journey = r.journey and w.entry_ts <= r.ts
    asof left join declined d on w.journey = d.journey and w.entry_ts <= d.ts
),
after_request as (  -- the coupon sent in answer to that request, and the first reveal after it
    select a.*, s.ts as sent_ts, v.ts as revealed_ts
    from answered a
    asof left join sent s on a.journey = s.journey and a.requested_ts <= s.ts
    asof left join revealed v on a.journey = v.journey and a.requested_ts <= v.ts
),
read_coupon as (  -- the first read receipt after the welcome whose watermark covers that coupon
    select a.entry_id, min(r.ts) as read_ts
    from after_request a join metric_events r
      on r.event = 'message_read' and r.journey = a.journey
     and r.ts >= a.entry_ts and r.watermark >= epoch_ms(a.sent_ts)
    group by a.entry_id
)
select a.entry_id, a.journey, a.customer, a.customer_id, a.campaign_id,
       a.entry_ts, a.entry_ts::date as entry_day, a.previous_ts, a.previous_ts::date as previous_day,
       epoch_us(least(a.requested_ts, a.declined_ts)) - epoch_us(a.entry_ts) as responded_us,
       epoch_us(a.requested_ts) - epoch_us(a.entry_ts) as requested_us,
       epoch_us(a.sent_ts) - epoch_us(a.entry_ts) as sent_us,
       epoch_us(c.read_ts) - epoch_us(a.entry_ts) as read_us,
       epoch_us(a.revealed_ts) - epoch_us(a.entry_ts) as revealed_us,
       epoch_us(a.declined_ts) - epoch_us(a.entry_ts) as declined_us
from after_request a left join read_coupon c using (entry_id)
"""

REVEALS = """
create or replace table reveals as
select customer, campaign_id, ts from metric_events where event = 'coupon_revealed'
"""

CLICKS = """
create or replace table clicks as
select button, customer, campaign_id, ts, ts::date as utc_day from metric_events where button is not null
"""

CAMPAIGN_SUMMARY = """
create or replace table campaign_summary as
select campaign_id, min(ts) as first_seen, max(ts) as last_seen, count(distinct customer) as customers
from metric_events group by campaign_id
"""


def _day(ts_column: str, utc_day_column: str, tz: str) -> str:
    """SQL for the day of a timestamp column in the question's zone (UTC days are stored beside it)."""
    return utc_day_column if tz == "UTC" else f"({ts_column} at time zone $tz)::date"


def _entries_sql(tz: str) -> str:
    """The journeys a question is about and, per step, microseconds from entry (null: not within window).

    A journey's entry is its first welcome_sent on a day inside the range: a welcome in the range whose
    journey had no welcome before, or only before the range's first day.
    """
    entry_day, previous_day = _day("entry_ts", "entry_day", tz), _day("previous_ts", "previous_day", tz)
    return f"""
    entries as (
        select * from funnel_entries
        where ($campaign is null or campaign_id = $campaign)
          and ($start is null or {entry_day} >= $start)
          and ($end is null or {entry_day} <= $end)
          and (previous_ts is null or {previous_day} < $start)
    ),
    reached as (
        select campaign_id, customer_id, entry_ts,
               0::bigint as reached,
               if(responded_us <= $window_us, responded_us, null) as responded,
               if(requested_us <= $window_us, requested_us, null) as coupon_requested,
               least(  -- a read receipt covering the coupon, or a reveal, which proves it was seen
                   if(sent_us <= $window_us and read_us <= $window_us, read_us, null),
                   if(revealed_us <= $window_us, revealed_us, null)
               ) as coupon_seen,
               if(revealed_us <= $window_us, revealed_us, null) as coupon_revealed,
               if(declined_us <= $window_us, declined_us, null) as declined
        from entries
    )
    """


def _funnel_sql(tz: str) -> str:
    per_step = ",\n".join(
        f"count({step}) as {step}_customers, quantile_cont({step}, [0.5, 0.9]) as {step}_quantiles"
        for step in STEPS
    )
    return f"with {_entries_sql(tz)} select {per_step} from reached"


def _timeline_sql(tz: str) -> str:
    positions = ", ".join(f"('{step}', {index})" for index, step in enumerate(STEPS))
    day = "(ts at time zone $tz)::date" if tz != "UTC" else "ts::date"
    return f"""
    with {_entries_sql(tz)},
    step_times as (
        select entry_ts + to_microseconds(offset_us) as ts, step
        from (unpivot reached on {", ".join(STEPS)} into name step value offset_us)
    )
    select {day} as day, step, count(*) as customers
    from step_times join (values {positions}) as s(step, position) using (step)
    group by day, step, position
    order by day, position
    """


def _journeys_sql(tz: str) -> str:
    times = ", ".join(f"entry_ts + to_microseconds({step}) as {step}" for step in STEPS)
    return f"""
    with {_entries_sql(tz)}
    select campaign_id, customer_id, entry_ts, {times} from reached order by entry_ts, customer_id
    """


def _cohorts_sql(period: str) -> str:
    """`period` is one of PERIODS (checked by the caller): date_trunc needs it as a constant."""
    return f"""
    with first_reach as (  -- a customer's first welcome ever (in the campaign), in the question's zone
        select customer, date_trunc('{period}', min(entry_ts) at time zone $tz) as cohort
        from funnel_entries
        where previous_ts is null and ($campaign is null or campaign_id = $campaign)
        group by customer
    ),
    revealed as (  -- who revealed a coupon in which period after the cohort's start
        select distinct f.customer, f.cohort,
               date_diff('{period}', f.cohort, date_trunc('{period}', r.ts at time zone $tz)) as k
        from first_reach f join reveals r using (customer)
        where ($campaign is null or r.campaign_id = $campaign) and r.ts at time zone $tz >= f.cohort
    ),
    sizes as (select cohort, count(*) as size from first_reach group by cohort),
    horizon as (  -- the last event in the data: periods ending after it are not complete yet
        select max(last_seen) at time zone $tz as last_ts
        from campaign_summary where ($campaign is null or campaign_id = $campaign)
    ),
    grid as (
        select s.cohort, s.size, k.k
        from sizes s, horizon h,
             range(0, date_diff('{period}', s.cohort, date_trunc('{period}', h.last_ts)) + 1) as k(k)
    )
    select g.cohort::date as cohort, g.k::integer as period, count(rv.customer) as customers,
           round(count(rv.customer) / g.size, 4) as share,
           (g.cohort + to_{period}s((g.k + 1)::integer) <= (select last_ts from horizon)) as complete,
           g.size as cohort_size
    from grid g left join revealed rv on rv.cohort = g.cohort and rv.k = g.k
    group by g.cohort, g.k, g.size
    order by g.cohort, g.k
    """


def _buttons_sql(tz: str) -> str:
    day = _day("ts", "utc_day", tz)
    return f"""
    with chosen as (
        select * from clicks
        where ($campaign is null or campaign_id = $campaign)
          and ($start is null or {day} >= $start) and ($end is null or {day} <= $end)
    )
    select button, count(*) as clicks, count(distinct customer) as customers,
           round(count(*) / sum(count(*)) over (), 4) as share,
           case split_part(button, '|', 3) when 'yes' then 'coupon_requested' when 'no' then 'declined'
                when 'reveal' then 'coupon_revealed' else 'conversation_started' end as step
    from chosen group by button order by clicks desc, button
    """


CAMPAIGNS = """
select campaign_id, first_seen, last_seen, customers from campaign_summary order by first_seen, campaign_id
"""


def funnel_table(reached: int, counts: dict[str, int], quantiles: dict[str, list | None]) -> pa.Table:
    """The funnel's rows from each step's customers and [median, p90] microseconds after entry."""

    def pct(part: int, whole: int) -> float | None:
        return round(100.0 * part / whole, 2) if whole else None

    rows = []
    for step in STEPS:
        median, p90 = (None, None) if step == "reached" or not quantiles[step] else quantiles[step]
        rows.append(
            {
                "step": step,
                "customers": counts[step],
                "pct_of_reached": pct(counts[step], reached),
                "pct_of_previous": pct(counts[step], counts[PREVIOUS[step]]) if step in PREVIOUS else None,
                "median_seconds": None if median is None else median / 1e6,
                "p90_seconds": None if p90 is None else p90 / 1e6,
            }
        )
    return pa.Table.from_pylist(rows, schema=FUNNEL_SCHEMA)


class Events:
    """The deduplicated events of one store, and the metrics over them. Safe to share between threads."""

    def __init__(self, source: str) -> None:
        self.source = source.rstrip("/")
        self._lock = threading.Lock()
        self._connection = duckdb.connect()
        self._connection.execute("set TimeZone = 'UTC'")
        self._signature: tuple | None = None
        self._define()

    # -- the `events` view and the metric tables -----------------------------------------------------------

    def _define(self) -> None:
        # Taken first: a file written while the tables are built makes the next question read again.
        self._signature = self._files_signature()
        for attempt in range(3):
            try:
                self._define_raw_events()
                break
            except duckdb.IOException:
                # A file listed and then replaced by compaction before it was read: list again.
                if attempt == 2:
                    raise
        con = self._connection
        con.execute(EVENTS_VIEW)
        con.execute(LOAD_METRIC_EVENTS)
        con.execute(SHARED_HASHES)
        if con.sql("select count(*) from shared_hashes").fetchall()[0][0]:
            con.execute(REPLACE_SHARED_HASHES)
        for statement in (FUNNEL_ENTRIES, REVEALS, CLICKS, CAMPAIGN_SUMMARY):
            con.execute(statement)
        con.execute("drop table metric_events; drop table shared_hashes")

    def _define_raw_events(self) -> None:
        con = self._connection
        if self.source.startswith("s3://"):
            table = self._read_s3()
        elif list(Path(self.source, "events").glob("*/*.parquet")):
            glob = str(Path(self.source, "events", "*", "*.parquet")).replace("'", "''")
            # union_by_name: files written by different versions may differ in columns.
            con.execute(
                f"create or replace view raw_events as select * from read_parquet('{glob}', "
                "hive_partitioning = true, union_by_name = true)"
            )
            con.execute("select count(*) from raw_events").fetchall()  # fail here if a file vanished
            return
        else:
            table = SCHEMA.empty_table()
        con.register("stored_events", table)
        con.execute("create or replace view raw_events as select * from stored_events")

    def _files_signature(self) -> tuple | None:
        if self.source.startswith("s3://"):
            return None  # object stores are read again on refresh() only
        signature = []
        for path in Path(self.source, "events").glob("*/*.parquet"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # replaced by compaction while listing
            signature.append((path.name, path.parent.name, stat.st_size, stat.st_mtime_ns))
        return tuple(sorted(signature))

    def _read_s3(self) -> pa.Table:
        # Read with pyarrow's S3 filesystem: DuckDB's httpfs would download an extension at run time.
        import pyarrow.dataset as ds

        from bot.store import open_filesystem

        filesystem, root = open_filesystem(self.source)
        try:
            dataset = ds.dataset(
                f"{root}/events",
                filesystem=filesystem,
                format="parquet",
                partitioning="hive",
                # One schema for every file: columns an older file lacks read as null.
                schema=pa.schema([*FILE_SCHEMA, SCHEMA.field(PARTITION_COLUMN)]),
                exclude_invalid_files=False,
            )
            return dataset.to_table()
        except (FileNotFoundError, OSError):
            return SCHEMA.empty_table()

    def changed(self) -> bool:
        """Whether files were written, compacted or removed since the store was read (object stores: only
        `refresh()` reads them again, so never)."""
        with self._lock:
            return self._signature is not None and self._files_signature() != self._signature

    def refresh(self) -> Events:
        """See files written since the store was opened (a new day, the first events)."""
        with self._lock:
            self._define()
        return self

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        with self._lock:
            # Files written (or compacted) since the last query: read them. An empty dashboard fills up, a
            # notebook sees today's events, with no reopening.
            if self._signature is not None and self._files_signature() != self._signature:
                self._define()
            if isinstance(params, dict):
                # DuckDB refuses named parameters a query does not use; the metrics share one set.
                params = {name: value for name, value in params.items() if f"${name}" in sql}
            return self._connection.sql(sql, params=params or None).to_arrow_table()

    def _range(self, campaign, start, end, window, tz) -> Range:
        if window is None:
            window = DEFAULT_WINDOW
        if not isinstance(window, timedelta) or window <= timedelta(0):
            raise AnalyticsError("window must be a positive timedelta")
        for name, value in (("start", start), ("end", end)):
            if value is not None and (not isinstance(value, date) or isinstance(value, datetime)):
                raise AnalyticsError(f"{name} must be a date (inclusive), not {value!r}")
        if start is not None and end is not None and start > end:
            raise AnalyticsError(f"start {start} is after end {end}")
        tz = tz or "UTC"
        try:
            with self._lock:
                self._connection.execute(
                    "select timestamptz '2026-01-01 00:00:00+00' at time zone ?", [tz]
                ).fetchall()
        except duckdb.Error:
            raise AnalyticsError(f"unknown time zone {tz!r}") from None
        return Range(campaign, start, end, window, tz)

    # -- the metrics -----------------------------------------------------------------------------------------

    def journeys(self, campaign=None, start=None, end=None, window=DEFAULT_WINDOW, tz=None) -> pa.Table:
        """One row per journey that entered the funnel, with the time each step was reached (or null)."""
        r = self._range(campaign, start, end, window, tz)
        return self._query(_journeys_sql(r.tz), r.params())

    def funnel(self, campaign=None, start=None, end=None, window=DEFAULT_WINDOW, tz=None) -> pa.Table:
        """step, customers, pct_of_reached, pct_of_previous, median_seconds, p90_seconds."""
        r = self._range(campaign, start, end, window, tz)
        (row,) = self._query(_funnel_sql(r.tz), r.params()).to_pylist()
        counts = {step: row[f"{step}_customers"] for step in STEPS}
        quantiles = {step: row[f"{step}_quantiles"] for step in STEPS}
        return funnel_table(counts["reached"], counts, quantiles)

    def timeline(self, campaign=None, start=None, end=None, window=DEFAULT_WINDOW, tz=None) -> pa.Table:
        """day, step, customers: how many customers reached each step on each day (the funnel's own times)."""
        r = self._range(campaign, start, end, window, tz)
        return self._query(_timeline_sql(r.tz), r.params())

    def cohorts(self, period: str = "week", campaign=None, tz=None) -> pa.Table:
        """cohort, period, customers, share, complete (and cohort_size).

        Customers are grouped by the period (day, week, month) of their first welcome; `share` is the part of
        the cohort who revealed the coupon in period k after it; `complete` is false while period k has not
        ended yet in the data (its last event).
        """
        if period not in PERIODS:
            raise AnalyticsError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
        r = self._range(campaign, None, None, DEFAULT_WINDOW, tz)
        return self._query(_cohorts_sql(period), {"campaign": r.campaign, "tz": r.tz})

    def buttons(self, campaign=None, start=None, end=None, tz=None) -> pa.Table:
        """button, clicks, customers, share (and the step the button stands for)."""
        r = self._range(campaign, start, end, DEFAULT_WINDOW, tz)
        return self._query(_buttons_sql(r.tz), r.params())

    def campaigns(self) -> pa.Table:
        """campaign_id, first_seen, last_seen, customers."""
        return self._query(CAMPAIGNS)

    def sql(self, query: str, params: list | dict | None = None) -> pa.Table:
        """Raw DuckDB over the deduplicated `events` view (and `raw_events`, every stored row)."""
        return self._query(query, params)
