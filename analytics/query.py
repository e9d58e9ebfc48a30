"""The metrics over an event store with DuckDB: the one door for notebooks, the dashboard and reports.

events = analytics.open("data")          # a directory or "s3://bucket/prefix"
events.funnel(campaign="spring-sale")    # pyarrow.Table
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from analytics import definitions as sql
from analytics.filters import Filters
from analytics.metrics import Metrics
from bot.events import FILE_SCHEMA, PARTITION_COLUMN, SCHEMA

_CACHED_QUESTIONS = 16
_READ_ATTEMPTS = 3

Signature = dict[str, tuple[int, int]]  # a file's path -> (size, modification time in ns)


def store_source(data: str | None = None) -> str:
    """The store a command reads: `data` when given, else PROMOBOT_DATA, else ./data."""
    return data or os.environ.get("PROMOBOT_DATA", "data")


def open(source: str | Path = "data") -> Events:  # the documented `analytics.open(...)`
    """The events of a store: a directory, or an `s3://bucket/prefix` URL."""
    return Events(str(source))


class Events(Metrics):
    """The events of one store, and the metrics over them (analytics.metrics.Metrics), on DuckDB. Safe to
    share between threads; how it reads: docs/design.md, "Analytics: reading a store as it grows".

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
        self._schemas: dict[str, tuple[tuple[str, str], ...]] = {}  # a file's path -> its columns and types
        self._raw_events_defined = False  # the `raw_events` view over every file: defined on demand
        self._questions: OrderedDict[tuple[Filters, bool], str] = OrderedDict()
        self._welcomes_built = False  # the `welcomes` table (sql.WELCOMES): built when a question needs it
        self._campaigns: pa.Table | None = None
        self._table_count = 0
        self._several = True  # whether a customer is in several campaigns (read with the journeys)

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
        for path in [path for path in self._schemas if listing.get(path) != known.get(path)]:
            del self._schemas[path]  # rewritten or removed since its schema was read
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
        # Files written by different versions may differ in columns: each schema's files are read together,
        # and their rows made alike. (DuckDB's union_by_name would read every file's schema again each time
        # a statement reads the files.)
        scans = []
        for columns, files in self._by_schema(paths):
            listed = ", ".join("'" + path.replace("'", "''") + "'" for path in files)
            relation = f"read_parquet([{listed}], hive_partitioning = true)"
            scans.append(sql.raw_events(relation, {*columns, PARTITION_COLUMN}))
        return "(" + " union all ".join(scans) + ")"

    def _by_schema(self, paths: list[str]) -> list[tuple[list[str], list[str]]]:
        """`paths` grouped by their schema (the same columns, types and order), each group with its columns'
        names. A file's schema is read once."""
        unread = [path for path in paths if path not in self._schemas]
        if unread:
            for path, names, types in self._connection.execute(
                "select file_name, list(name order by column_id), list(duckdb_type order by column_id)"
                " from parquet_schema($files) where column_id > 0 group by file_name",
                {"files": unread},
            ).fetchall():
                self._schemas[path] = tuple(zip(names, types, strict=True))
        groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for path in paths:
            groups.setdefault(self._schemas[path], []).append(path)
        return [([name for name, _ in schema], files) for schema, files in groups.items()]

    def _normalised(self, relation: str) -> str:
        columns = {row[0] for row in self._connection.sql(f"describe select * from {relation}").fetchall()}
        return f"({sql.raw_events(relation, columns)})"

    def _define_raw_events(self, scan: str | None = None) -> None:
        """The `raw_events` and `events` views over `scan`, or over every file."""
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
        self._several = bool(con.execute("select exists (from multi_campaign_customers)").fetchall()[0][0])
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
            steps = sql.customer_steps(labelled, several=self._several)
            self._run(f"create temp table {table} as {steps}", filters.params())
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

    def campaigns(self) -> pa.Table:
        """Every campaign in the store, read once per change of the store (as Metrics.campaigns)."""
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


__all__ = ["Events", "open"]
