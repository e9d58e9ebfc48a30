"""The metrics on Apache Spark: the definitions of analytics.definitions, written once in DuckDB's dialect,
translated by sqlglot and run over the same Hive-partitioned Parquet.

events = analytics.open("data", engine="spark")      # a directory, or a URL Spark's filesystems read
events.funnel(campaign="spring-sale")                # the same pyarrow.Table DuckDB gives

The same translation gives the SQL for Athena and Trino (`statements`, shown in docs/scale.md).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from analytics import definitions as sql
from analytics.filters import AnalyticsError, Filters
from analytics.query import (
    experiment_plan,
    experiment_table,
    experiment_timeline_table,
    funnel_table,
)
from bot.events import SCHEMA
from bot.facts import FunnelStep

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DIALECTS = ("spark", "trino", "athena")
_READ_ATTEMPTS = 3
_CACHED_QUESTIONS = 16

# -- translating the definitions -----------------------------------------------------------------------------
# sqlglot translates DuckDB's dialect; these are the places where a DuckDB function has no namesake of the
# same meaning in the other engine. Each rule is checked by tests/test_spark.py (Spark, run against DuckDB)
# or tests/test_scale_docs.py (Trino, parsed).

_INTERVAL_FUNCTIONS = {"to_days": "day", "to_weeks": "week", "to_months": "month"}


def _function_name(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    if isinstance(node, exp.ToDays):
        return "to_days"
    return None


def _interval_arguments(node: exp.Expression) -> tuple[str, exp.Expression] | None:
    """`to_weeks(n)` and its kin as (unit, n)."""
    name = _function_name(node)
    if name not in _INTERVAL_FUNCTIONS:
        return None
    amount = node.this if isinstance(node, exp.ToDays) else node.expressions[0]
    return _INTERVAL_FUNCTIONS[name], amount


def _for_spark(node: exp.Expression) -> exp.Expression:
    name = _function_name(node)
    if name == "hash":  # DuckDB's hash is 64-bit, Spark's 32-bit (customer keys would collide): xxhash64
        return exp.Anonymous(this="xxhash64", expressions=node.expressions)
    if name == "epoch_us":
        return exp.Anonymous(this="unix_micros", expressions=node.expressions)
    if isinstance(node, exp.PercentileCont):
        # Spark's percentile_cont takes only WITHIN GROUP; percentile interpolates linearly, as DuckDB does.
        return exp.Anonymous(this="percentile", expressions=[node.this, node.expression])
    interval = _interval_arguments(node)
    if interval:  # make_interval(years, months, weeks, days): Spark adds it to a time as DuckDB does
        unit, amount = interval
        position = {"month": 1, "week": 2, "day": 3}[unit]
        return exp.Anonymous(this="make_interval", expressions=[exp.Literal.number(0)] * position + [amount])
    return node


def _for_trino(node: exp.Expression) -> exp.Expression:
    name = _function_name(node)
    if name == "hash":  # a 64-bit key, as DuckDB's: xxhash64 of the values, joined by a unit separator
        values = node.expressions
        text = values[0]
        for value in values[1:]:
            text = exp.DPipe(
                this=exp.DPipe(
                    this=text, expression=exp.Anonymous(this="chr", expressions=[exp.Literal.number(31)])
                ),
                expression=value,
            )
        return exp.func("from_big_endian_64", exp.func("xxhash64", exp.func("to_utf8", text)))
    if name == "epoch_us":  # Athena reads Parquet times to the millisecond; an integer difference is exact
        epoch = exp.cast(exp.Literal.string("1970-01-01 00:00:00"), "timestamp")
        since = exp.DateDiff(this=node.expressions[0], expression=epoch, unit=exp.var("MILLISECOND"))
        return exp.Mul(this=since, expression=exp.Literal.number(1000))
    if isinstance(node, exp.PercentileCont):
        # Trino has no exact quantile: the funnel's median and p90 are approximate there (docs/scale.md).
        return exp.Anonymous(this="approx_percentile", expressions=[node.this, node.expression])
    if isinstance(node, exp.IgnoreNulls) and isinstance(node.this, exp.AnyValue):
        return node.this  # Trino's arbitrary skips nulls, and refuses IGNORE NULLS outside a window
    if isinstance(node, exp.IntDiv):
        # Trino divides integers as integers; sqlglot's floor of a double would lose µs past 2**53.
        return exp.Div(this=node.this, expression=node.expression, typed=True)
    if isinstance(node, exp.Add) and _interval_arguments(node.expression):
        unit, amount = _interval_arguments(node.expression)
        return exp.DateAdd(this=node.this, expression=amount, unit=exp.var(unit.upper()))
    return node


_FIXES = {"spark": _for_spark, "trino": _for_trino, "athena": _for_trino}


@functools.lru_cache(maxsize=256)
def _translated(query: str, dialect: str) -> exp.Expression:
    tree = sqlglot.parse_one(query, read="duckdb")
    rule = _FIXES[dialect]
    # Children before their parent (the reverse of a depth-first walk): a rule sees its arguments translated.
    for node in reversed(list(tree.walk(bfs=False))):
        new = rule(node)
        if new is not node:
            if node is tree:
                tree = new
            else:
                node.replace(new)
    return tree


def _parameters(query: str) -> set[str]:
    """The names of a query's `$name` parameters."""
    return {node.name for node in _translated(query, "spark").find_all(exp.Placeholder) if node.name}


def transpile(
    query: str, dialect: str = "spark", params: dict[str, Any] | None = None, pretty: bool = False
) -> str:
    """A query in DuckDB's dialect (a metric definition) as `dialect` (spark, trino or athena) runs it.

    Parameters:
        query: SQL in DuckDB's dialect, with named parameters `$name`.
        dialect: one of DIALECTS.
        params: values to put in place of the parameters, as literals sqlglot quotes; None keeps them as
            named parameter markers (`:name`, which Spark binds itself).
        pretty: indent the SQL.
    Raises:
        AnalyticsError: an unknown dialect, or a parameter `params` has no value for.
    """
    if dialect not in DIALECTS:
        raise AnalyticsError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
    tree = _translated(query, dialect)
    if params is not None:

        def bind(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.Placeholder) and node.name:
                if node.name not in params:
                    raise AnalyticsError(f"no value for parameter ${node.name}")
                return exp.convert(params[node.name])
            return node

        tree = tree.transform(bind)
    # Comments are left out: sqlglot moves a line comment to where it no longer says anything.
    return tree.sql(dialect=dialect, pretty=pretty, comments=False)


# What every question reads, built from the store once (each may read those before it).
_STORED_RELATIONS = (
    ("journeys", sql.JOURNEYS),
    ("reads", sql.READS),
    ("multi_campaign_customers", sql.MULTI_CAMPAIGN_CUSTOMERS),
)


# -- a local Spark session -----------------------------------------------------------------------------------


def local_session(cores: int = 2) -> SparkSession:
    """A Spark session on this machine, quick to start: no web UI, bound to loopback, few shuffle partitions.

    An active session (a cluster's) is returned as it is; `SparkEvents` takes a session of its own from it.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else Spark warns that the host name is loopback
    # Python workers run this interpreter, not whichever `python3` the PATH (or a .python-version) names:
    # PySpark refuses workers of another minor version.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("promobot-analytics")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        # A laptop's data: Spark's default of 200 shuffle partitions is 200 tiny tasks per stage.
        .config("spark.sql.shuffle.partitions", str(cores))
        .config("spark.sql.session.timeZone", "UTC")
        # The JVM's quick compiler only: on a laptop's data a question lasts seconds, and the optimising
        # compiler spends them compiling code it would run faster later.
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


# -- the metrics ---------------------------------------------------------------------------------------------


class SparkEvents:
    """The events of one store, and the metrics over them, on Spark. The same methods and tables as
    `analytics.Events`; the store is read when first asked and again on `refresh()`.

    Parameters:
        source: a directory holding `events/event_date=…/*.parquet`, or a URL Spark's filesystems read
            (`s3a://bucket/prefix` with hadoop-aws; `s3://` on EMR and Databricks).
        spark: the session to run on (default: the active one, else a local one); its temporary views and
            settings are kept apart in a session of their own.
    """

    def __init__(self, source: str, spark: SparkSession | None = None) -> None:
        self.source = str(source).rstrip("/")
        # A session of our own over the same context: our views and the UTC time zone (which casts of
        # times to days rely on) stay out of the caller's session.
        self._spark = (spark or local_session()).newSession()
        self._spark.conf.set("spark.sql.session.timeZone", "UTC")
        self._lock = threading.Lock()
        self._cached: list[DataFrame] | None = None  # None: the store is not read yet
        self._welcomes: DataFrame | None = None  # sql.WELCOMES, cached when a question first needs it
        self._questions: dict[tuple[Filters, bool], DataFrame] = {}

    # -- reading the store ---------------------------------------------------------------------------------

    def _scan(self) -> DataFrame:
        from pyspark.sql.pandas.types import from_arrow_schema

        schema = from_arrow_schema(SCHEMA)
        root = f"{self.source}/events"
        local = "://" not in self.source
        if local and not list(Path(root).glob("*/*.parquet")):
            return self._spark.createDataFrame([], schema)
        # One schema for every file (columns an older file lacks read as null); `basePath` makes the
        # directories' `event_date=…` the partition column.
        return self._spark.read.schema(schema).option("basePath", root).parquet(root)

    def _read(self) -> None:
        """Read the store: the views `raw_events` and `events`, and the relations every question reads,
        cached (under the lock)."""
        from py4j.protocol import Py4JJavaError

        self._forget()
        for attempt in range(_READ_ATTEMPTS):
            self._scan().createOrReplaceTempView("stored_events")
            self._view("raw_events", sql.raw_events("stored_events", set(SCHEMA.names)))
            self._view("events", sql.EVENTS_VIEW)
            self._view("source", "select * from raw_events")
            self._cached = [self._cache(name, query) for name, query in _STORED_RELATIONS]
            try:
                for table in self._cached:
                    table.count()  # read now, once: every question reads these
                return
            except Py4JJavaError as error:
                self._forget()
                # A file listed and then replaced by compaction before it was read: list again.
                if attempt == _READ_ATTEMPTS - 1 or "FILE_NOT_EXIST" not in str(error):
                    raise

    def _cache(self, name: str, query: str) -> DataFrame:
        table = self._spark.sql(transpile(query)).cache()
        table.createOrReplaceTempView(name)
        return table

    def _forget(self) -> None:
        for table in [*(self._cached or ()), *self._questions.values(), *filter(None, [self._welcomes])]:
            table.unpersist()
        self._cached = None
        self._welcomes = None
        self._questions.clear()

    def _view(self, name: str, query: str) -> None:
        self._spark.sql(transpile(query)).createOrReplaceTempView(name)

    def refresh(self) -> SparkEvents:
        """Read the store again (files written since it was read)."""
        with self._lock:
            self._read()
        return self

    def _frame(self, query: str, params: dict[str, Any] | None = None) -> DataFrame:
        if params:
            # Spark refuses values for parameters a query does not use; the definitions share one set.
            used = _parameters(query)
            params = {name: value for name, value in params.items() if name in used}
        # Spark binds the values itself (named parameter markers): nothing is spliced into the text.
        return self._spark.sql(transpile(query), args=params or None)

    def _answer(self, query: str, filters: Filters | None = None, labelled: bool = False) -> pa.Table:
        with self._lock:
            if self._cached is None:
                self._read()
            if filters is None:
                return _arrow(self._frame(query))
            labelled = labelled or filters.labelled
            if labelled and self._welcomes is None:
                self._welcomes = self._cache("welcomes", sql.WELCOMES)
            self._steps_for(filters, labelled).createOrReplaceTempView("customer_steps")
            return _arrow(self._frame(query, filters.params()))

    def _steps_for(self, filters: Filters, labelled: bool) -> DataFrame:
        """This question's customers and their steps (`labelled`: with the source and variant of their
        entry), computed once per question while the store is read."""
        steps = self._questions.pop((filters, labelled), None)
        if steps is None:
            steps = self._frame(sql.customer_steps(labelled), filters.params()).cache()
            if len(self._questions) >= _CACHED_QUESTIONS:
                self._questions.pop(next(iter(self._questions))).unpersist()
        self._questions[(filters, labelled)] = steps  # the most recently asked last
        return steps

    # -- the metrics (as analytics.Events) -------------------------------------------------------------------

    def funnel(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """Customers at each step of the funnel (analytics.Events.funnel)."""
        filters = Filters.of(filters, **keywords)
        (row,) = self._answer(sql.FUNNEL, filters).to_pylist()
        return funnel_table(row)

    def timeline(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """Customers who reached each step on each day (analytics.Events.timeline)."""
        return self._answer(sql.TIMELINE, Filters.of(filters, **keywords))

    def cohorts(
        self,
        period: str = "week",
        filters: Filters | None = None,
        *,
        step: str = FunnelStep.COUPON_REVEALED,
        **keywords: Any,
    ) -> pa.Table:
        """Customers by the period of their entry, and who reached `step` in each period after it
        (analytics.Events.cohorts).

        Raises:
            AnalyticsError: an unknown period or step.
        """
        return self._answer(sql.cohorts(period, step), Filters.of(filters, **keywords))

    def buttons(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """Clicks per button on days in the range (analytics.Events.buttons)."""
        filters = Filters.of(filters, **keywords)
        return self._answer(sql.buttons(filters.labelled), filters)

    def pool_empty(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """Reveals that found a campaign's codes all handed out (analytics.Events.pool_empty)."""
        filters = Filters.of(filters, **keywords)
        return self._answer(sql.pool_empty(filters.labelled), filters)

    def journeys(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """One row per journey that entered the funnel (analytics.Events.journeys)."""
        filters = Filters.of(filters, **keywords)
        return self._answer(sql.journey_list(filters.labelled), filters)

    def sources(self, filters: Filters | None = None, **keywords: Any) -> pa.Table:
        """The funnel by the source of each customer's entry (analytics.Events.sources)."""
        return self._answer(sql.SOURCES, Filters.of(filters, **keywords), labelled=True)

    def experiment(
        self, filters: Filters | None = None, step: str = FunnelStep.COUPON_REVEALED, **keywords: Any
    ) -> pa.Table:
        """An A/B comparison of a campaign's variants at `step` (analytics.Events.experiment).

        Raises:
            AnalyticsError: no single campaign with variants, a variant filter, an unknown step.
        """
        query = sql.experiment(step)
        question, plan = experiment_plan(Filters.of(filters, **keywords), self._answer(sql.VARIANT_PLANS))
        return experiment_table(plan, self._answer(query, question, labelled=True))

    def experiment_timeline(
        self, filters: Filters | None = None, step: str = FunnelStep.COUPON_REVEALED, **keywords: Any
    ) -> pa.Table:
        """An experiment's cumulative customers and conversions by day (analytics.Events.experiment_timeline).

        Raises:
            AnalyticsError: as `experiment`.
        """
        query = sql.experiment_days(step)
        question, plan = experiment_plan(Filters.of(filters, **keywords), self._answer(sql.VARIANT_PLANS))
        return experiment_timeline_table(plan, self._answer(query, question, labelled=True))

    def campaigns(self) -> pa.Table:
        """Every campaign in the store (analytics.Events.campaigns)."""
        return self._answer(sql.CAMPAIGNS)

    def sql(self, query: str, params: dict[str, Any] | None = None) -> pa.Table:
        """A query in DuckDB's dialect, translated and run on Spark over `events`, `raw_events`, `journeys`
        and `reads` (as analytics.Events.sql): the same text runs on either engine."""
        with self._lock:
            if self._cached is None:
                self._read()
            return _arrow(self._frame(query, params))


def _arrow(frame: DataFrame) -> pa.Table:
    """A result as DuckDB gives it: Spark marks some columns (counts) not null, DuckDB none."""
    table = frame.toArrow()
    return table.cast(pa.schema([field.with_nullable(True) for field in table.schema]))


# -- Athena and Trino ----------------------------------------------------------------------------------------

STORED_TABLE = "stored_events"


def statements(filters: Filters, dialect: str = "athena", period: str = "week") -> dict[str, str]:
    """The definitions as statements Athena or Trino run over a table `stored_events` of the store's files
    (docs/scale.md): views of the stored rows and of the relations built from them, then the funnel,
    timeline and cohorts of one question, its parameters written in as literals.

    Returns:
        name -> SQL text: raw_events, journeys, reads, multi_campaign_customers (CREATE VIEW); funnel,
        timeline, cohorts.
    """
    params = filters.params()

    def pretty(query: str) -> str:
        return transpile(query, dialect, params, pretty=True)

    def view(name: str, query: str) -> str:
        create = exp.Create(
            this=exp.to_table(name),
            kind="VIEW",
            replace=True,
            expression=sqlglot.parse_one(query, read="duckdb"),
        )
        return pretty(create.sql(dialect="duckdb"))

    return {
        "raw_events": view("raw_events", sql.raw_events(STORED_TABLE, set(SCHEMA.names))),
        **{
            name: view(name, _joined([("source", "select * from raw_events")], query))
            for name, query in _STORED_RELATIONS
        },
        "funnel": pretty(_joined([("customer_steps", sql.CUSTOMER_STEPS)], sql.FUNNEL)),
        "timeline": pretty(_joined([("customer_steps", sql.CUSTOMER_STEPS)], sql.TIMELINE)),
        "cohorts": pretty(_joined([("customer_steps", sql.CUSTOMER_STEPS)], sql.cohorts(period))),
    }


def _ctes(tree: exp.Expression) -> tuple[exp.Expression, list[tuple[str, exp.Expression]]]:
    """A query without its WITH clause, and the (name, query) pairs the clause held."""
    clause = tree.find(exp.With)
    if clause is None or clause.parent is not tree:
        return tree, []
    pairs = [(cte.alias, cte.this) for cte in clause.expressions]
    clause.pop()
    return tree, pairs


def _joined(relations: list[tuple[str, str]], query: str) -> str:
    """`query` as one statement, those of the relations it reads (each with its own WITH clause) written in
    as common table expressions before its own."""
    final, own = _ctes(sqlglot.parse_one(query, read="duckdb"))
    read = {table.name for table in sqlglot.parse_one(query, read="duckdb").find_all(exp.Table)}
    pairs = []
    for name, relation in relations:
        if name not in read:
            continue
        body, inner = _ctes(sqlglot.parse_one(relation, read="duckdb"))
        pairs += [*inner, (name, body)]
    for name, relation in [*pairs, *own]:
        final = final.with_(name, as_=relation, copy=False)
    return final.sql(dialect="duckdb")


__all__ = ["DIALECTS", "SparkEvents", "local_session", "statements", "transpile"]
