"""promobot's analytics: the conversion funnel, timelines and cohorts over the event store, with DuckDB."""
