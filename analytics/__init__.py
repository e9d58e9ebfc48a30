"""promobot analytics: the funnel, timelines, cohorts and buttons over the bot's events, with DuckDB.

import analytics
events = analytics.open("data")          # a directory or "s3://bucket/prefix"
events.funnel(campaign="spring-sale")    # pyarrow.Table
"""

from analytics.query import STEPS, AnalyticsError, Events, open

__all__ = ["STEPS", "AnalyticsError", "Events", "open"]
