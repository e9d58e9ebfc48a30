"""promobot analytics: the funnel, timelines, cohorts and buttons over the bot's events, on DuckDB or Spark.

import analytics
events = analytics.open("data")          # a directory or "s3://bucket/prefix"
events.funnel(campaign="spring-sale")    # pyarrow.Table
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from analytics import query
from analytics.filters import AnalyticsError, Filters
from analytics.query import Events
from bot.facts import KPIS, STEPS, FunnelStep

if TYPE_CHECKING:
    from analytics.spark import SparkEvents

ENGINES = ("duckdb", "spark")


def open(source: str | Path = "data", engine: str = "duckdb") -> Events | SparkEvents:
    """The events of a store, and the metrics over them.

    Parameters:
        source: a directory, or `s3://bucket/prefix`.
        engine: "duckdb" (this machine), or "spark" (analytics.spark.SparkEvents: the same methods and
            tables, the same definitions; pyspark is the `spark` extra).
    Raises:
        AnalyticsError: an unknown engine.
    """
    if engine == "spark":
        from analytics.spark import SparkEvents

        return SparkEvents(str(source))
    if engine != "duckdb":
        raise AnalyticsError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    return query.open(source)


__all__ = ["ENGINES", "KPIS", "STEPS", "AnalyticsError", "Events", "Filters", "FunnelStep", "open"]
