"""The metrics over an event store with DuckDB: the one door for notebooks, the dashboard and reports.

A store is read into one row per journey (analytics.definitions.JOURNEYS); a file that appears later is read
alone and merged in, so figures follow a live bot's flushes without reading everything again. Each question
(a Filters) computes its customers' steps once; every metric of that question reads them.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from analytics import definitions as sql
from analytics import stats
from analytics.filters import AnalyticsError, Filters
from bot.events import FILE_SCHEMA, PARTITION_COLUMN, SCHEMA
from bot.facts import PREVIOUS_STEP, STEPS, FunnelStep

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

EXPERIMENT_SCHEMA = pa.schema(
    [
        *stats.SCHEMA,
        ("declined", pa.int64()),
        ("send_failed", pa.int64()),
        ("excluded_mixed", pa.int64()),
        ("excluded_forced", pa.int64()),
    ]
)

EXPERIMENT_TIMELINE_SCHEMA = pa.schema(
    [
        ("day", pa.date32()),
        ("variant", pa.string()),
        ("customers", pa.int64()),
        ("conversions", pa.int64()),
        ("rate", pa.float64()),
        ("rate_low", pa.float64()),
        ("rate_high", pa.float64()),
    ]
)

Plan = list[tuple[str, float]]  # an experiment's variants in the campaign file's order, with planned shares

_CACHED_QUESTIONS = 16
_READ_ATTEMPTS = 3

Signature = dict[str, tuple[int, int]]  # a file's path -> (size, modification time in ns)


def open(source: str | Path = "data") -> Events:  # the documented `analytics.open(...)`
    """The events of a store: a directory, or an `s3://bucket/prefix` URL."""
    return Events(str(source))


def funnel_table(row: dict[str, Any]) -> pa.Table:
    """The funnel's rows from FUNNEL's one row (per step: customers, median and p90 in µs after entry)."""

    def pct(part: int, whole: int) -> float | None:
        return round(100.0 * part / whole, 2) if whole else None

    def seconds(micros: float | None) -> float | None:
        return None if micros is None else micros / 1e6

    counts = {step: row[f"{step}_customers"] for step in STEPS}
    rows = [
        {
            "step": str(step),
            "customers": counts[step],
            "pct_of_reached": pct(counts[step], counts[STEPS[0]]),
            "pct_of_previous": pct(counts[step], counts[PREVIOUS_STEP[step]])
            if step in PREVIOUS_STEP
            else None,
            "median_seconds": None if step == STEPS[0] else seconds(row[f"{step}_median"]),
            "p90_seconds": None if step == STEPS[0] else seconds(row[f"{step}_p90"]),
        }
        for step in STEPS
    ]
    return pa.Table.from_pylist(rows, schema=FUNNEL_SCHEMA)


def experiment_plan(filters: Filters, plans: pa.Table) -> tuple[Filters, Plan]:
    """The question of an experiment (one campaign) and its variants, from VARIANT_PLANS' rows.

    Raises:
        AnalyticsError: a variant filter (an experiment compares them all); no campaign chosen and not
            exactly one campaign with variants in the store; a chosen campaign that recorded no variants.
    """
    if filters.variant is not None:
        raise AnalyticsError("an experiment compares every variant: leave the variant filter unset")
    recorded = {row["campaign_id"]: row["variants"] for row in plans.to_pylist()}
    campaign = filters.campaign
    if campaign is None:
        if len(recorded) != 1:
            found = ", ".join(sorted(recorded)) or "none"
            raise AnalyticsError(
                f"an experiment needs one campaign with variants: choose one (with variants: {found})"
            )
        (campaign,) = recorded
    elif campaign not in recorded:
        raise AnalyticsError(f"campaign {campaign!r} recorded no variants")
    plan = [(str(name), float(share)) for name, share in json.loads(recorded[campaign])]
    return dataclasses.replace(filters, campaign=campaign), plan


def experiment_table(plan: Plan, rows: pa.Table) -> pa.Table:
    """The comparison (analytics.stats.compare) of an experiment's variants from sql.experiment's rows, with
    each variant's declines and failed sends and, on every row, the customers excluded."""
    compared: dict[str, dict[str, int]] = {}
    mixed = forced = 0
    for row in rows.to_pylist():
        mixed += row["customers"] if row["mixed"] else 0
        forced += row["customers"] if row["forced"] else 0
        if not row["mixed"] and not row["forced"]:
            compared[row["variant"]] = row
    none = {"customers": 0, "conversions": 0, "declined": 0, "send_failed": 0}
    counts = [compared.get(name, none) for name, _ in plan]
    table = stats.compare(
        [(name, c["customers"], c["conversions"]) for (name, _), c in zip(plan, counts, strict=True)],
        weights=[share for _, share in plan],
    )
    extra = {
        "declined": [c["declined"] for c in counts],
        "send_failed": [c["send_failed"] for c in counts],
        "excluded_mixed": [mixed] * len(plan),
        "excluded_forced": [forced] * len(plan),
    }
    for name, values in extra.items():
        table = table.append_column(name, pa.array(values, pa.int64()))
    return table.cast(EXPERIMENT_SCHEMA)


def experiment_timeline_table(plan: Plan, rows: pa.Table) -> pa.Table:
    """Every day from the first entry to the last, per variant: customers and conversions so far, and the
    rate with its Wilson 95 % interval, from sql.experiment_days' rows."""
    daily = {(row["day"], row["variant"]): row for row in rows.to_pylist()}
    if not daily:
        return EXPERIMENT_TIMELINE_SCHEMA.empty_table()
    first, last = min(day for day, _ in daily), max(day for day, _ in daily)
    totals = {name: [0, 0] for name, _ in plan}
    out = []
    for offset in range((last - first).days + 1):
        day: date = first + timedelta(days=offset)
        for name, _ in plan:
            row = daily.get((day, name))
            if row is not None:
                totals[name][0] += row["customers"]
                totals[name][1] += row["conversions"]
            customers, conversions = totals[name]
            low, high = stats.wilson(customers, conversions)
            rate = conversions / customers if customers else None
            out.append(
                {
                    "day": day,
                    "variant": name,
                    "customers": customers,
                    "conversions": conversions,
                    "rate": rate,
                    "rate_low": low,
                    "rate_high": high,
                }
            )
    return pa.Table.from_pylist(out, schema=EXPERIMENT_TIMELINE_SCHEMA)


class Events:
    """The events of one store, and the metrics over them. Safe to share between threads.

    Parameters:
        source: a directory holding `events/event_date=…/*.parquet`, or an `s3://bucket/prefix` URL (read
            again on `refresh()` only).
    """

    def __init__(self, source: str) -> None:
        self.source = source.rstrip("/")
        self._lock = threading.Lock()
        self._connection = duckdb.connect()
        self._connection.execute("set TimeZone = 'UTC'")
        # Every query that returns rows in an order says so; the others may run in parallel throughout.
        self._connection.execute("set preserve_insertion_order = false")
        self._files: Signature | None = None  # None: nothing read yet
        self._raw_events_defined = False  # the `raw_events` view reads every file's schema: on demand
        self._questions: OrderedDict[tuple[Filters, bool], str] = OrderedDict()
        self._welcomes_built = False  # the `welcomes` table (sql.WELCOMES): built when a question needs it
        self._campaigns: pa.Table | None = None
        self._table_count = 0

    # -- reading the store ---------------------------------------------------------------------------------

    def _listing(self) -> Signature:
        files = {}
        for path in Path(self.source, "events").glob("*/*.parquet"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # replaced by compaction while listing
            files[str(path)] = (stat.st_size, stat.st_mtime_ns)
        return files

    def _sync(self) -> None:
        """Read what changed in the store since the last question (under the lock)."""
        if self.source.startswith("s3://"):
            if self._files is None:
                self._load_s3()
            return
        for attempt in range(_READ_ATTEMPTS):
            listing = self._listing()
            if listing == self._files:
                return
            try:
                self._load_files(listing)
                return
            except duckdb.IOException:
                # A file listed and then replaced by compaction before it was read: list again.
                if attempt == _READ_ATTEMPTS - 1:
                    raise

    def _load_files(self, listing: Signature) -> None:
        known = self._files or {}
        added = sorted(path for path in listing if path not in known)
        kept = all(listing.get(path) == signature for path, signature in known.items())
        if self._files is not None and kept:
            if added:
                self._merge(self._scan(added))
        else:
            self._build(self._scan(sorted(listing)))
        self._files = listing
        self._raw_events_defined = False

    def _load_s3(self) -> None:
        # Read with pyarrow's S3 filesystem: DuckDB's httpfs would download an extension at run time.
        import pyarrow.dataset as ds

        from bot.store import open_filesystem

        filesystem, root = open_filesystem(self.source)
        try:
            table = ds.dataset(
                f"{root}/events",
                filesystem=filesystem,
                format="parquet",
                partitioning="hive",
                # One schema for every file: columns an older file lacks read as null.
                schema=pa.schema([*FILE_SCHEMA, SCHEMA.field(PARTITION_COLUMN)]),
                exclude_invalid_files=False,
            ).to_table()
        except (FileNotFoundError, OSError):
            table = SCHEMA.empty_table()
        self._connection.register("stored_events", table)
        scan = self._normalised("stored_events")
        self._build(scan)
        self._define_raw_events(scan)
        self._files = {}

    def _scan(self, paths: list[str]) -> str:
        """A relation of the rows of `paths`, with every column of the event schema."""
        if not paths:
            self._connection.register("no_events", SCHEMA.empty_table())
            return self._normalised("no_events")
        listed = ", ".join("'" + path.replace("'", "''") + "'" for path in paths)
        # union_by_name: files written by different versions may differ in columns.
        return self._normalised(f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true)")

    def _normalised(self, relation: str) -> str:
        columns = {row[0] for row in self._connection.sql(f"describe select * from {relation}").fetchall()}
        return f"({sql.raw_events(relation, columns)})"

    def _define_raw_events(self, scan: str | None = None) -> None:
        """The `raw_events` and `events` views over `scan`, or over every file (reading their schemas)."""
        if scan is not None or not self._raw_events_defined:
            scan = scan or self._scan(sorted(self._files or {}))
            self._connection.execute(f"create or replace view raw_events as {scan}")
            self._connection.execute(f"create or replace view events as {sql.EVENTS_VIEW}")
            self._raw_events_defined = True

    def _build(self, scan: str) -> None:
        self._change_journeys(
            f"create or replace temp view source as select * from {scan}",
            f"create or replace table journeys as {sql.JOURNEYS}",
            f"create or replace table reads as {sql.READS}",
        )

    def _merge(self, scan: str) -> None:
        self._change_journeys(
            f"create or replace temp view source as select * from {scan}",
            f"create or replace temp table new_journeys as {sql.JOURNEYS}",
            f"create or replace table journeys as {sql.MERGE_JOURNEYS}",
            f"insert into reads {sql.READS}",
            "drop table new_journeys",
        )

    def _change_journeys(self, *statements: str) -> None:
        """Run `statements` in one transaction (a file that vanishes midway leaves the tables as they were),
        then the customers in several campaigns; forget every question's answers."""
        con = self._connection
        con.execute("begin transaction")
        try:
            for statement in (
                *statements,
                f"create or replace table multi_campaign_customers as {sql.MULTI_CAMPAIGN_CUSTOMERS}",
            ):
                con.execute(statement)
        except BaseException:
            con.execute("rollback")
            raise
        con.execute("commit")
        self._forget_questions()

    def _forget_questions(self) -> None:
        self._campaigns = None
        self._welcomes_built = False
        for table in self._questions.values():
            self._connection.execute(f"drop table if exists {table}")
        self._questions.clear()

    def _steps_for(self, filters: Filters, labelled: bool) -> None:
        """Point `customer_steps` at this question's customers (computed once per question and store);
        `labelled`: with the source and variant of their entry."""
        key = (filters, labelled)
        table = self._questions.get(key)
        if table is None:
            self._table_count += 1
            table = f"customer_steps_{self._table_count}"
            self._run(f"create temp table {table} as {sql.customer_steps(labelled)}", filters.params())
            self._questions[key] = table
            if len(self._questions) > _CACHED_QUESTIONS:
                _, oldest = self._questions.popitem(last=False)
                self._connection.execute(f"drop table if exists {oldest}")
        self._questions.move_to_end(key)
        self._connection.execute(f"create or replace temp view customer_steps as select * from {table}")

    def _run(self, query: str, params: dict[str, Any] | list[Any] | None = None) -> pa.Table:
        if isinstance(params, dict):
            # DuckDB refuses named parameters a query does not use; the definitions share one set.
            params = {name: value for name, value in params.items() if f"${name}" in query}
        return self._connection.sql(query, params=params or None).to_arrow_table()

    def _answer(self, query: str, filters: Filters | None = None, labelled: bool = False) -> pa.Table:
        """`query`'s rows; with `filters`, over the question's `customer_steps` (`labelled`, or a question
        of a source or variant: with the source and variant of each customer's entry)."""
        with self._lock:
            self._sync()
            if "raw_events" in query:
                self._define_raw_events()
            if filters is None:
                return self._run(query)
            labelled = labelled or filters.labelled
            if labelled and not self._welcomes_built:
                self._define_raw_events()
                self._connection.execute(f"create or replace table welcomes as {sql.WELCOMES}")
                self._welcomes_built = True
            self._steps_for(filters, labelled)
            return self._run(query, filters.params())

    def changed(self) -> bool:
        """Whether files were written, compacted or removed since the last question (object stores: never;
        `refresh()` reads them again)."""
        if self.source.startswith("s3://"):
            return False
        with self._lock:
            return self._files is not None and self._listing() != self._files

    def refresh(self) -> Events:
        """Read the store again from scratch (an object store's new files, or after a doubt)."""
        with self._lock:
            self._files = None
            self._sync()
        return self

    # -- the metrics -----------------------------------------------------------------------------------------

    def funnel(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """Customers at each step of the funnel.

        Parameters:
            filters: a Filters, or its fields as keywords (campaign, start, end, window, tz).
        Returns:
            step, customers, pct_of_reached, pct_of_previous, median_seconds, p90_seconds (one row a step).
        """
        (row,) = self._answer(sql.FUNNEL, Filters.of(filters, **keywords)).to_pylist()
        return funnel_table(row)

    def timeline(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """Customers who reached each step on each day (in the filters' zone).

        Returns:
            day, step, customers.
        """
        return self._answer(sql.TIMELINE, Filters.of(filters, **keywords))

    def cohorts(
        self,
        period: str = "week",
        filters: Filters | None = None,
        *,
        step: str = FunnelStep.COUPON_REVEALED,
        **keywords: Any,
    ) -> pa.Table:
        """Customers grouped by the period (day, week, month) of their entry, and who reached `step` (revealed
        the coupon; `redeemed`: used it at the till) in each period k after it.

        Returns:
            cohort, period, customers, share, complete, cohort_size; `complete` is false while period k has
            not ended before the last event in the data.
        Raises:
            AnalyticsError: an unknown period or step.
        """
        return self._answer(sql.cohorts(period, step), Filters.of(filters, **keywords))

    def buttons(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """Clicks per button on days in the range (the window does not apply).

        Returns:
            button, clicks, customers, share, step (the event the click was stored as).
        """
        filters = Filters.of(filters, **keywords)
        return self._answer(sql.buttons(filters.labelled), filters)

    def pool_empty(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """Reveals that found a campaign's single-use codes all handed out, on days in the range (the window
        does not apply).

        Returns:
            campaign_id, reveals, customers, first_seen, last_seen (one row per campaign that ran out).
        """
        filters = Filters.of(filters, **keywords)
        return self._answer(sql.pool_empty(filters.labelled), filters)

    def journeys(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """One row per journey (a customer in a campaign) that entered the funnel.

        Returns:
            campaign_id, customer_id, entry_ts, and the time of each step (null: not reached).
        """
        filters = Filters.of(filters, **keywords)
        return self._answer(sql.journey_list(filters.labelled), filters)

    def sources(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """The funnel by where customers came from: the source of their entry (a customer in several
        campaigns, with no campaign chosen: of their earliest entry).

        Returns:
            source, title (the latest title of an `ad:` source's ad, else null), and the customers at each
            step (reached, responded, …, declined); by reached, most first, then source.
        """
        return self._answer(sql.SOURCES, Filters.of(filters, **keywords), labelled=True)

    def experiment(
        self, filters: Filters | None = None, step: str = FunnelStep.COUPON_REVEALED, **keywords: Any
    ) -> pa.Table:
        """An A/B comparison of a campaign's variants at `step` (revealed the coupon, by default).

        Parameters:
            filters: the question (keywords alike); its campaign, or the only campaign with variants.
            step: the funnel step that counts as a conversion (`redeemed`: used at the till).
        Returns:
            One row per variant in the campaign file's order (the first is the reference): variant,
            customers, conversions, rate, rate_low, rate_high, lift, lift_low, lift_high, chance_to_win,
            expected_loss, srm_p (analytics.stats.compare), declined, send_failed, excluded_mixed,
            excluded_forced (the last two equal on every row).
        Raises:
            AnalyticsError: no single campaign with variants, a variant filter, an unknown step.
        """
        query = sql.experiment(step)
        question, plan = experiment_plan(Filters.of(filters, **keywords), self._answer(sql.VARIANT_PLANS))
        return experiment_table(plan, self._answer(query, question, labelled=True))

    def experiment_timeline(
        self, filters: Filters | None = None, step: str = FunnelStep.COUPON_REVEALED, **keywords: Any
    ) -> pa.Table:
        """An experiment's customers and conversions so far, by day of entry (in the filters' zone).

        Returns:
            day, variant, customers, conversions (both cumulative up to and including the day), rate,
            rate_low, rate_high (Wilson 95 %): every day from the first entry to the last, every variant.
        Raises:
            AnalyticsError: as `experiment`.
        """
        query = sql.experiment_days(step)
        question, plan = experiment_plan(Filters.of(filters, **keywords), self._answer(sql.VARIANT_PLANS))
        return experiment_timeline_table(plan, self._answer(query, question, labelled=True))

    def campaigns(self) -> pa.Table:
        """Every campaign in the store (read once per change of the store).

        Returns:
            campaign_id, first_seen, last_seen, customers.
        """
        with self._lock:
            self._sync()
            if self._campaigns is None:
                self._define_raw_events()
                self._campaigns = self._run(sql.CAMPAIGNS)
            return self._campaigns

    def sql(self, query: str, params: list[Any] | dict[str, Any] | None = None) -> pa.Table:
        """Raw DuckDB over `events` (each event once), `raw_events` (every stored row) and `journeys`."""
        with self._lock:
            self._sync()
            self._define_raw_events()
            return self._run(query, params)


__all__ = [
    "EXPERIMENT_SCHEMA",
    "EXPERIMENT_TIMELINE_SCHEMA",
    "FUNNEL_SCHEMA",
    "Events",
    "experiment_plan",
    "experiment_table",
    "experiment_timeline_table",
    "funnel_table",
    "open",
]
