"""The metrics, as DuckDB queries over the event store: the one door for notebooks, dashboard and reports.

Every metric starts from the same per-journey table (`journeys`: when each customer reached each step of the
funnel), so a figure is the same whichever view shows it. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

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


class AnalyticsError(ValueError):
    """A question the metrics cannot answer as asked (an unknown period, a bad time zone, …)."""


@dataclass(frozen=True)
class Range:
    campaign: str | None
    start: date | None
    end: date | None
    window: timedelta
    tz: str


def open(source: str | Path = "data") -> Events:  # the documented `analytics.open(...)`
    """Events in a directory or an `s3://bucket/prefix` store."""
    return Events(str(source))


class Events:
    """The deduplicated events of one store, and the metrics over them. Safe to share between threads."""

    def __init__(self, source: str) -> None:
        self.source = source.rstrip("/")
        self._lock = threading.Lock()
        self._connection = duckdb.connect()
        self._connection.execute("set TimeZone = 'UTC'")
        self._has_data = False
        self._signature: tuple | None = None
        self._define()

    # -- the `events` view -----------------------------------------------------------------------------------

    def _define(self) -> None:
        con = self._connection
        if self.source.startswith("s3://"):
            self._define_from_s3()
        else:
            files = list(Path(self.source, "events").glob("*/*.parquet"))
            self._has_data = bool(files)
            if self._has_data:
                glob = str(Path(self.source, "events", "*", "*.parquet")).replace("'", "''")
                # union_by_name: files written by different versions may differ in columns.
                con.execute(
                    f"create or replace view raw_events as select * from read_parquet('{glob}', "
                    "hive_partitioning = true, union_by_name = true)"
                )
        if not self._has_data:
            con.register("empty_events", SCHEMA.empty_table())
            con.execute("create or replace view raw_events as select * from empty_events")
        # Readers deduplicate by event_id: a redelivered webhook, a replayed log, files met twice.
        con.execute(
            """
            create or replace view events as
            select * exclude (_copy) from (
                select *, row_number() over (partition by event_id order by ts) as _copy from raw_events
            ) where _copy = 1
            """
        )
        # The metrics read only these columns: deduplicated once, kept in memory until the files change.
        con.execute(
            """
            create or replace table metric_events as
            select event_id, ts, customer_id, campaign_id, event, button,
                   hash(campaign_id, customer_id) as journey,  -- one integer key per campaign and customer
                   (ts at time zone 'UTC')::date as utc_day,
                   case when event = 'message_read'
                        then try_cast(json_extract(detail, '$.watermark') as bigint) end as watermark
            from events
            """
        )
        self._signature = self._files_signature()

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

    def _define_from_s3(self) -> None:
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
                schema=pa.schema([*FILE_SCHEMA, SCHEMA.field(PARTITION_COLUMN)]),
                exclude_invalid_files=False,
            )
            table = dataset.to_table()
        except (FileNotFoundError, OSError):
            table = SCHEMA.empty_table()
        self._has_data = table.num_rows > 0
        if self._has_data:
            self._connection.register("s3_events", table)
            self._connection.execute("create or replace view raw_events as select * from s3_events")

    def refresh(self) -> Events:
        """See files written since the store was opened (a new day, the first events)."""
        with self._lock:
            self._define()
        return self

    def _query(self, sql: str, params: list | None = None) -> pa.Table:
        with self._lock:
            # Files written (or compacted) since the last query: read them. An empty dashboard fills up, a
            # notebook sees today's events, with no reopening.
            if self._signature is not None and self._files_signature() != self._signature:
                self._define()
            return self._connection.sql(sql, params=params or None).to_arrow_table()

    # -- shared building blocks ---------------------------------------------------------------------------

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
            self._connection.execute(
                "select timestamptz '2026-01-01 00:00:00+00' at time zone ?", [tz]
            ).fetchall()
        except duckdb.Error:
            raise AnalyticsError(f"unknown time zone {tz!r}") from None
        return Range(campaign, start, end, window, tz)

    @staticmethod
    def _journeys_sql() -> str:
        """Per (campaign, customer) entering the funnel in the range: when each step was reached.

        Parameters: campaign, campaign, tz, start, end, window_seconds.
        """
        return """
        with ev as (
            select * from metric_events where (? is null or campaign_id = ?)
        ),
        params as (select ?::varchar as tz, ?::date as start_day, ?::date as end_day,
                          to_seconds(?::bigint) as window),
        entry as materialized (  -- reached: the first welcome_sent inside the range is the entry
            select journey, any_value(campaign_id) as campaign_id, any_value(customer_id) as customer_id,
                   min(ts) as entry_ts
            from ev, params
            where event = 'welcome_sent'
              and (start_day is null
                   or (case when tz = 'UTC' then utc_day else (ts at time zone tz)::date end) >= start_day)
              and (end_day is null
                   or (case when tz = 'UTC' then utc_day else (ts at time zone tz)::date end) <= end_day)
            group by journey
        ),
        after_entry as materialized (  -- the journey's answers and receipts inside the window after entry
            select ev.journey, ev.event, ev.ts, ev.watermark
            from entry join ev using (journey), params
            where ev.event in ('coupon_requested', 'declined', 'coupon_sent', 'message_read',
                               'coupon_revealed')
              and ev.ts >= entry.entry_ts and ev.ts <= entry.entry_ts + params.window
        ),
        answers as materialized (  -- steps that need nothing before them but the entry
            select journey,
                   min(ts) filter (where event in ('coupon_requested', 'declined')) as responded,
                   min(ts) filter (where event = 'coupon_requested') as coupon_requested,
                   min(ts) filter (where event = 'declined') as declined
            from after_entry group by journey
        ),
        after_request as materialized (  -- the coupon sent in answer to the request, and the reveal
            select a.journey,
                   min(e.ts) filter (where e.event = 'coupon_sent') as coupon_sent,
                   min(e.ts) filter (where e.event = 'coupon_revealed') as coupon_revealed
            from answers a join after_entry e using (journey)
            where a.coupon_requested is not null and e.ts >= a.coupon_requested
              and e.event in ('coupon_sent', 'coupon_revealed')
            group by a.journey
        ),
        read_coupon as (  -- a read receipt whose watermark covers the coupon
            select r.journey, min(e.ts) as read_ts
            from after_request r join after_entry e using (journey)
            where e.event = 'message_read' and e.watermark >= epoch_ms(r.coupon_sent)
            group by r.journey
        )
        select entry.campaign_id, entry.customer_id, entry.entry_ts,
               entry.entry_ts as reached, answers.responded, answers.coupon_requested,
               -- a reveal proves the coupon was seen
               least(read_coupon.read_ts, after_request.coupon_revealed) as coupon_seen,
               after_request.coupon_revealed, answers.declined
        from entry
        left join answers using (journey)
        left join after_request using (journey)
        left join read_coupon using (journey)
        """

    @staticmethod
    def _steps_sql(value: str) -> str:
        """One row per journey and step reached (step, position, customer_id, campaign_id, `value`)."""
        return " union all ".join(
            f"select '{step}' as step, {index} as position, customer_id, campaign_id, "
            f"{value.format(step=step)} from journeys where {step} is not null"
            for index, step in enumerate(STEPS)
        )

    @staticmethod
    def _journey_params(r: Range) -> list:
        return [r.campaign, r.campaign, r.tz, r.start, r.end, int(r.window.total_seconds())]

    # -- the metrics -----------------------------------------------------------------------------------------

    def journeys(self, campaign=None, start=None, end=None, window=DEFAULT_WINDOW, tz=None) -> pa.Table:
        """One row per customer who entered the funnel, with the time each step was reached (or null)."""
        r = self._range(campaign, start, end, window, tz)
        return self._query(f"{self._journeys_sql()} order by entry_ts, customer_id", self._journey_params(r))

    def funnel(self, campaign=None, start=None, end=None, window=DEFAULT_WINDOW, tz=None) -> pa.Table:
        """step, customers, pct_of_reached, pct_of_previous, median_seconds, p90_seconds."""
        r = self._range(campaign, start, end, window, tz)
        unpivot = self._steps_sql("epoch({step}) - epoch(entry_ts) as seconds")
        previous = " ".join(f"when '{step}' then '{before}'" for step, before in PREVIOUS.items())
        steps = ", ".join(f"('{step}', {index})" for index, step in enumerate(STEPS))
        sql = f"""
        with journeys as materialized ({self._journeys_sql()}),
        reached_steps as ({unpivot}),
        counted as (
            select s.step, s.position, count(r.customer_id) as customers,
                   quantile_cont(r.seconds, 0.5) as median_seconds,
                   quantile_cont(r.seconds, 0.9) as p90_seconds
            from (values {steps}) as s(step, position)
            left join reached_steps r using (step)
            group by all
        )
        select c.step, c.customers,
               round(100.0 * c.customers / nullif(first(c.customers) over (order by c.position), 0), 2)
                   as pct_of_reached,
               round(100.0 * c.customers / nullif(p.customers, 0), 2) as pct_of_previous,
               case when c.step = 'reached' then null else c.median_seconds end as median_seconds,
               case when c.step = 'reached' then null else c.p90_seconds end as p90_seconds
        from counted c
        left join counted p on p.step = (case c.step {previous} end)
        order by c.position
        """
        return self._query(sql, self._journey_params(r))

    def timeline(self, campaign=None, start=None, end=None, window=DEFAULT_WINDOW, tz=None) -> pa.Table:
        """day, step, customers: how many customers reached each step on each day (the funnel's own times)."""
        r = self._range(campaign, start, end, window, tz)
        unpivot = self._steps_sql("{step} as ts")
        sql = f"""
        with journeys as materialized ({self._journeys_sql()}),
        steps as ({unpivot})
        select (ts at time zone ?)::date as day, step, count(*) as customers
        from steps group by day, step, position order by day, position
        """
        return self._query(sql, [*self._journey_params(r), r.tz])

    def cohorts(self, period: str = "week", campaign=None, tz=None) -> pa.Table:
        """cohort, period, customers, share, complete.

        Customers are grouped by the period (day, week, month) of their first welcome; `share` is the part of
        the cohort who revealed the coupon in period k after it; `complete` is false while period k has not
        ended yet in the data (its last event).
        """
        if period not in PERIODS:
            raise AnalyticsError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
        r = self._range(campaign, None, None, DEFAULT_WINDOW, tz)
        sql = f"""
        with ev as materialized (
            select *, ts at time zone ? as local_ts from metric_events where (? is null or campaign_id = ?)
        ),
        first_reach as (
            select customer_id, date_trunc('{period}', min(local_ts)) as cohort
            from ev where event = 'welcome_sent' group by all
        ),
        reveals as (
            select distinct f.customer_id, f.cohort,
                   date_diff('{period}', f.cohort, date_trunc('{period}', e.local_ts)) as k
            from first_reach f join ev e using (customer_id)
            where e.event = 'coupon_revealed' and e.local_ts >= f.cohort
        ),
        sizes as (select cohort, count(*) as size from first_reach group by all),
        horizon as (select max(local_ts) as last_ts from ev),
        grid as (
            select s.cohort, s.size, k.k
            from sizes s, horizon h,
                 range(0, date_diff('{period}', s.cohort, date_trunc('{period}', h.last_ts)) + 1) as k(k)
        )
        select g.cohort::date as cohort, g.k::integer as period, count(rv.customer_id) as customers,
               round(count(rv.customer_id) / g.size, 4) as share,
               (g.cohort + to_{period}s(g.k + 1::integer) <= (select last_ts from horizon)) as complete,
               g.size as cohort_size
        from grid g left join reveals rv on rv.cohort = g.cohort and rv.k = g.k
        group by g.cohort, g.k, g.size
        order by g.cohort, g.k
        """
        return self._query(sql, [r.tz, r.campaign, r.campaign])

    def buttons(self, campaign=None, start=None, end=None, tz=None) -> pa.Table:
        """button, clicks, customers, share: clicks per button payload (Get Started included)."""
        r = self._range(campaign, start, end, DEFAULT_WINDOW, tz)
        sql = """
        with clicks as (
            select * from metric_events
            where button is not null and (? is null or campaign_id = ?)
              and (?::date is null or (ts at time zone ?)::date >= ?::date)
              and (?::date is null or (ts at time zone ?)::date <= ?::date)
        )
        select button, count(*) as clicks, count(distinct customer_id) as customers,
               round(count(*) / sum(count(*)) over (), 4) as share,
               case split_part(button, '|', 3) when 'yes' then 'coupon_requested' when 'no' then 'declined'
                    when 'reveal' then 'coupon_revealed' else 'conversation_started' end as step
        from clicks group by button order by clicks desc, button
        """
        return self._query(sql, [r.campaign, r.campaign, r.start, r.tz, r.start, r.end, r.tz, r.end])

    def campaigns(self) -> pa.Table:
        """campaign_id, first_seen, last_seen, customers."""
        return self._query(
            """
            select campaign_id, min(ts) as first_seen, max(ts) as last_seen,
                   count(distinct customer_id) as customers
            from metric_events group by campaign_id order by first_seen
            """
        )

    def sql(self, query: str, params: list | None = None) -> pa.Table:
        """Raw DuckDB over the deduplicated `events` view (and `raw_events`, every stored row)."""
        return self._query(query, params)
