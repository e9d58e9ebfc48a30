"""The metrics on Apache Spark, over the same Hive-partitioned Parquet as DuckDB.

events = analytics.open("data", engine="spark")      # a directory, or a URL Spark's filesystems read
events.funnel(campaign="spring-sale")                # the same pyarrow.Table DuckDB gives
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from analytics import definitions as sql
from analytics.dialects import STORED_RELATIONS, parameters, transpile
from analytics.filters import Filters
from analytics.metrics import Metrics
from bot.events import SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_READ_ATTEMPTS = 3
_CACHED_QUESTIONS = 16
_LOST_ROWS = "CHECKPOINT_RDD_BLOCK_ID_NOT_FOUND"  # Spark's error for a local checkpoint's part gone


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
        # compiler spends them compiling code it would run faster later. Its code is never replaced by
        # optimised code, so a session of many questions filled the 48 MB that the JVM then reserves for
        # compiled code (it stopped compiling, then failed a task): reserve as much as with both compilers.
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


# -- the metrics ---------------------------------------------------------------------------------------------


class SparkEvents(Metrics):
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
            self._cached = [self._cache(name, query) for name, query in STORED_RELATIONS]
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
        for table in [*(self._cached or ()), *filter(None, [self._welcomes])]:
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
            used = parameters(query)
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
            from py4j.protocol import Py4JJavaError

            try:
                return self._over_steps(query, filters, labelled)
            except Py4JJavaError as error:
                # The question's rows are kept by the executors that computed them: a cluster's executor
                # gone takes its part along, and the question is computed again, once.
                if _LOST_ROWS not in str(error):
                    raise
                del self._questions[(filters, labelled)]
                return self._over_steps(query, filters, labelled)

    def _over_steps(self, query: str, filters: Filters, labelled: bool) -> pa.Table:
        """`query` over this question's `customer_steps`."""
        self._steps_for(filters, labelled).createOrReplaceTempView("customer_steps")
        return _arrow(self._frame(query, filters.params()))

    def _steps_for(self, filters: Filters, labelled: bool) -> DataFrame:
        """This question's customers and their steps (`labelled`: with the source and variant of their
        entry), computed once per question while the store is read.

        Computed at once and kept as rows (a local checkpoint), not as a cached query: Spark (4.3) never
        matched later queries to a cache of this one, so each use computed it all again (the timeline has
        14: 12 s instead of 1.3 s on the tests' 1,500 customers). A question let go leaves its rows to
        Spark's cleaner, which frees what nothing refers to any more."""
        steps = self._questions.pop((filters, labelled), None)
        if steps is None:
            steps = self._frame(sql.customer_steps(labelled), filters.params()).localCheckpoint(eager=True)
            if len(self._questions) >= _CACHED_QUESTIONS:
                del self._questions[next(iter(self._questions))]
        self._questions[(filters, labelled)] = steps  # the most recently asked last
        return steps

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


__all__ = ["SparkEvents", "local_session"]
