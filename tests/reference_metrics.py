"""Moved to tests/support/reference_metrics.py; this name stays until tests/test_analytics.py imports it
from there."""

from tests.support.reference_metrics import buttons, cohorts, experiment, funnel, sources, timeline

__all__ = ["buttons", "cohorts", "experiment", "funnel", "sources", "timeline"]
