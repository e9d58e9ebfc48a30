"""Moved to tests/support/builders.py; this name stays until tests/test_spark.py imports it from there."""

from tests.support.builders import customer_event

__all__ = ["customer_event"]
