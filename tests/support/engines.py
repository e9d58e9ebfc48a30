"""The same figures from two engines: what Spark answers against what DuckDB answers."""

from __future__ import annotations

import math

import pyarrow as pa


def assert_same(spark_table: pa.Table, duckdb_table: pa.Table) -> None:
    """Equal columns, types and rows; floats to within rounding (Spark and DuckDB sum in another order)."""
    assert spark_table.schema == duckdb_table.schema
    assert spark_table.num_rows == duckdb_table.num_rows
    for spark_row, duckdb_row in zip(spark_table.to_pylist(), duckdb_table.to_pylist(), strict=True):
        for column, expected in duckdb_row.items():
            value = spark_row[column]
            if isinstance(expected, float) and isinstance(value, float):
                assert math.isclose(value, expected, rel_tol=1e-9), (column, spark_row, duckdb_row)
            else:
                assert value == expected, (column, spark_row, duckdb_row)
