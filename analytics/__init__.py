"""promobot analytics: the funnel, timelines, cohorts and buttons over the bot's events, with DuckDB.

import analytics
events = analytics.open("data")          # a directory or "s3://bucket/prefix"
events.funnel(campaign="spring-sale")    # pyarrow.Table
"""

from analytics.filters import AnalyticsError, Filters
from analytics.query import Events, open
from bot.facts import KPIS, STEPS, FunnelStep

__all__ = ["KPIS", "STEPS", "AnalyticsError", "Events", "Filters", "FunnelStep", "open"]
