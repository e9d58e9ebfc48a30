"""promobot analytics: the funnel, timelines, cohorts and buttons over the bot's events, with DuckDB.

import analytics
events = analytics.open("data")          # a directory or "s3://bucket/prefix"
events.funnel(campaign="spring-sale")    # pyarrow.Table
"""

from pathlib import Path

from analytics import query
from analytics.filters import AnalyticsError, Filters
from analytics.query import Events
from bot.facts import KPIS, STEPS, FunnelStep


def open(source: str | Path = "data", engine: str = "duckdb") -> Events:
    """The events of a store (a directory, or `s3://bucket/prefix`) on DuckDB, or on Spark (engine="spark",
    analytics.spark.SparkEvents: the same methods and tables)."""
    if engine == "spark":
        from analytics.spark import SparkEvents  # pyspark is the `spark` extra

        return SparkEvents(str(source))
    if engine != "duckdb":
        raise AnalyticsError(f"engine must be duckdb or spark, not {engine!r}")
    return query.open(source)


__all__ = ["KPIS", "STEPS", "AnalyticsError", "Events", "Filters", "FunnelStep", "open"]
