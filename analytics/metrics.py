"""The metric methods every engine shares: each runs a definition through the engine's one hook, `_answer`."""

from __future__ import annotations

import dataclasses
import functools
import json
from abc import ABC, abstractmethod
from datetime import date, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from analytics import definitions as sql
from analytics import stats
from analytics.filters import AnalyticsError, Filters
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

_RATE_COLUMNS = ("variant", "customers", "conversions", "rate", "rate_low", "rate_high")
EXPERIMENT_TIMELINE_SCHEMA = pa.schema(
    [("day", pa.date32()), *(stats.SCHEMA.field(name) for name in _RATE_COLUMNS)]
)

Plan = list[tuple[str, float]]  # an experiment's variants in the campaign file's order, with planned shares

_SQL_TYPES = {pa.string(): "varchar", pa.int64(): "bigint", pa.float64(): "double", pa.date32(): "date"}


@functools.cache
def _rows_database() -> duckdb.DuckDBPyConnection:
    """An empty in-memory database for table_of_rows (a new one for each table took 15 ms)."""
    return duckdb.connect()


def table_of_rows(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """`rows` as a table of `schema`, built by DuckDB: pyarrow's own conversion of Python values imports
    pandas first, which took 0.3 s of a new process's first funnel. Safe from any thread (a cursor each)."""
    columns = ", ".join(f"unnest(${f.name}::{_SQL_TYPES[f.type]}[]) as {f.name}" for f in schema)
    values = {f.name: [row[f.name] for row in rows] for f in schema}
    with _rows_database().cursor() as cursor:
        built = cursor.sql(f"select {columns}", params=values).to_arrow_table()
    # The columns already have the schema's types; Table.cast would import pyarrow.compute (0.08 s cold).
    return pa.Table.from_arrays(built.columns, schema=schema)


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
    return table_of_rows(rows, FUNNEL_SCHEMA)


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
    return table_of_rows(out, EXPERIMENT_TIMELINE_SCHEMA)


class Metrics(ABC):
    """The metrics over one store; an engine (analytics.Events, analytics.spark.SparkEvents) supplies
    `_answer`, which runs a definition."""

    source: str

    @abstractmethod
    def _answer(self, query: str, filters: Filters | None = None, labelled: bool = False) -> pa.Table:
        """`query`'s rows (a definition in DuckDB's dialect); with `filters`, over the question's
        `customer_steps` (`labelled`, or a question of a source or variant: with the source and variant of
        each customer's entry)."""

    @abstractmethod
    def refresh(self) -> Metrics:
        """Read the store again."""

    def funnel(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """Customers at each step of the funnel.

        Parameters:
            filters: a Filters, or its fields as keywords (campaign, start, end, window, tz, source, variant).
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
        """Every campaign in the store.

        Returns:
            campaign_id, first_seen, last_seen, customers.
        """
        return self._answer(sql.CAMPAIGNS)


__all__ = [
    "EXPERIMENT_SCHEMA",
    "EXPERIMENT_TIMELINE_SCHEMA",
    "FUNNEL_SCHEMA",
    "Metrics",
    "experiment_plan",
    "experiment_table",
    "experiment_timeline_table",
    "funnel_table",
]
