"""docs/scale.md stays true: its Athena/Trino SQL parses, is what the current metric definitions generate,
and its table has the events' columns with `event_date` projected."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
import sqlglot
from sqlglot import exp

from analytics.dialects import STORED_TABLE, statements
from analytics.filters import Filters
from bot.events import PARTITION_COLUMN, SCHEMA

DOC = Path(__file__).resolve().parent.parent / "docs" / "scale.md"
EXAMPLE_CALL = (
    'question = Filters(campaign="spring-sale", start=date(2026, 3, 1), end=date(2026, 3, 31), '
    'tz="Europe/Paris")\nstatements(question, "athena")'
)
EXAMPLE = Filters(campaign="spring-sale", start=date(2026, 3, 1), end=date(2026, 3, 31), tz="Europe/Paris")
ATHENA_TYPES = {
    pa.string(): "STRING",
    pa.timestamp("us", tz="UTC"): "TIMESTAMP",  # Parquet's UTC-adjusted times: Athena reads them as UTC
    pa.int64(): "BIGINT",
    pa.date32(): "DATE",
}
GENERATED = tuple(statements(EXAMPLE))


def athena_type(arrow_type: pa.DataType) -> exp.DataType:
    return exp.DataType.build(ATHENA_TYPES[arrow_type], dialect="athena")


def sql_blocks() -> dict[str, str]:
    """The doc's SQL blocks by the name in the comment before each (`<!-- sql: name -->`)."""
    found = re.findall(r"<!-- sql: (\w+) -->\s*```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return {name: text.strip() for name, text in found}


def test_the_doc_shows_how_its_sql_was_generated():
    assert EXAMPLE_CALL in DOC.read_text()


@pytest.mark.parametrize("name", list(GENERATED))
def test_the_docs_sql_is_what_the_definitions_generate(name):
    # On a change of analytics/definitions.py, paste the new text: python -m analytics sql --campaign
    # spring-sale --start 2026-03-01 --end 2026-03-31 --tz Europe/Paris
    assert sql_blocks().get(name) == statements(EXAMPLE, "athena")[name]


@pytest.mark.parametrize("name", [STORED_TABLE, *GENERATED])
@pytest.mark.parametrize("dialect", ["athena", "trino"])
def test_the_docs_sql_parses(name, dialect):
    tree = sqlglot.parse_one(sql_blocks()[name], read=dialect)
    views = {view for view, text in statements(EXAMPLE, "athena").items() if text.startswith("CREATE")}
    assert isinstance(tree, exp.Create if name in {STORED_TABLE, *views} else exp.Select)


def test_the_table_has_the_event_columns_and_projects_event_date():
    table = sqlglot.parse_one(sql_blocks()[STORED_TABLE], read="athena")
    columns = {column.name: column.args["kind"] for column in table.this.expressions}
    assert columns == {f.name: athena_type(f.type) for f in SCHEMA if f.name != PARTITION_COLUMN}

    (partitioned,) = table.find_all(exp.PartitionedByProperty)
    assert [(c.name, c.args["kind"]) for c in partitioned.this.expressions] == [
        (PARTITION_COLUMN, athena_type(SCHEMA.field(PARTITION_COLUMN).type))
    ]
    location = table.find(exp.LocationProperty).this.name
    properties = {
        p.this.name: p.args["value"].name for p in table.find_all(exp.Property) if type(p) is exp.Property
    }
    assert properties["projection.enabled"] == "true"
    assert properties[f"projection.{PARTITION_COLUMN}.type"] == "date"
    assert properties[f"projection.{PARTITION_COLUMN}.format"] == "yyyy-MM-dd"
    assert properties["storage.location.template"] == f"{location}{PARTITION_COLUMN}=${{{PARTITION_COLUMN}}}/"


def test_the_sql_command_prints_the_docs_statements(capsys):
    from analytics.__main__ import main

    main(
        [
            "sql",
            "--campaign",
            "spring-sale",
            "--start",
            "2026-03-01",
            "--end",
            "2026-03-31",
            "--tz",
            "Europe/Paris",
        ]
    )

    printed = capsys.readouterr().out
    for name, text in sql_blocks().items():
        if name != STORED_TABLE:
            assert f"-- {name}\n{text};" in printed, name
