"""The metric definitions in Spark's, Trino's and Athena's SQL: DuckDB's dialect translated by sqlglot.

transpile(sql.FUNNEL, "spark")                        # one definition, as Spark runs it
statements(Filters(campaign="spring-sale"), "athena") # views and metrics for Athena (docs/scale.md)
"""

from __future__ import annotations

import functools
from typing import Any

import sqlglot
from sqlglot import exp

from analytics import definitions as sql
from analytics.filters import AnalyticsError, Filters
from bot.events import SCHEMA

DIALECTS = ("spark", "trino", "athena")

# -- translating the definitions -----------------------------------------------------------------------------
# sqlglot translates DuckDB's dialect; these are the places where a DuckDB function has no namesake of the
# same meaning in the other engine. Each rule is checked by tests/test_spark.py (Spark, run against DuckDB)
# or tests/test_scale_docs.py (Trino, parsed).

_INTERVAL_FUNCTIONS = {"to_days": "day", "to_weeks": "week", "to_months": "month"}


def _function_name(node: exp.Expr) -> str | None:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    if isinstance(node, exp.ToDays):
        return "to_days"
    return None


def _interval_arguments(node: exp.Expr) -> tuple[str, exp.Expr] | None:
    """`to_weeks(n)` and its kin as (unit, n)."""
    name = _function_name(node)
    if name not in _INTERVAL_FUNCTIONS:
        return None
    amount = node.this if isinstance(node, exp.ToDays) else node.expressions[0]
    return _INTERVAL_FUNCTIONS[name], amount


def _for_spark(node: exp.Expr) -> exp.Expr:
    name = _function_name(node)
    if name == "hash":  # DuckDB's hash is 64-bit, Spark's 32-bit (customer keys would collide): xxhash64
        return exp.Anonymous(this="xxhash64", expressions=node.expressions)
    if name == "epoch_us":
        return exp.Anonymous(this="unix_micros", expressions=node.expressions)
    if isinstance(node, exp.PercentileCont):
        # Spark's percentile_cont takes only WITHIN GROUP; percentile interpolates linearly, as DuckDB does.
        return exp.Anonymous(this="percentile", expressions=[node.this, node.expression])
    interval = _interval_arguments(node)
    if interval:  # make_interval(years, months, weeks, days): Spark adds it to a time as DuckDB does
        unit, amount = interval
        position = {"month": 1, "week": 2, "day": 3}[unit]
        return exp.Anonymous(this="make_interval", expressions=[exp.Literal.number(0)] * position + [amount])
    return node


def _for_trino(node: exp.Expr) -> exp.Expr:
    name = _function_name(node)
    if name == "hash":  # a 64-bit key, as DuckDB's: xxhash64 of the values, joined by a unit separator
        values = node.expressions
        text = values[0]
        for value in values[1:]:
            text = exp.DPipe(
                this=exp.DPipe(
                    this=text, expression=exp.Anonymous(this="chr", expressions=[exp.Literal.number(31)])
                ),
                expression=value,
            )
        return exp.func("from_big_endian_64", exp.func("xxhash64", exp.func("to_utf8", text)))
    if name == "epoch_us":  # Athena reads Parquet times to the millisecond; an integer difference is exact
        epoch = exp.cast(exp.Literal.string("1970-01-01 00:00:00"), "timestamp")
        since = exp.DateDiff(this=node.expressions[0], expression=epoch, unit=exp.var("MILLISECOND"))
        return exp.Mul(this=since, expression=exp.Literal.number(1000))
    if isinstance(node, exp.PercentileCont):
        # Trino has no exact quantile: the funnel's median and p90 are approximate there (docs/scale.md).
        return exp.Anonymous(this="approx_percentile", expressions=[node.this, node.expression])
    if isinstance(node, exp.IgnoreNulls) and isinstance(node.this, exp.AnyValue):
        return node.this  # Trino's arbitrary skips nulls, and refuses IGNORE NULLS outside a window
    if isinstance(node, exp.IntDiv):
        # Trino divides integers as integers; sqlglot's floor of a double would lose µs past 2**53.
        return exp.Div(this=node.this, expression=node.expression, typed=True)
    if isinstance(node, exp.Add) and (interval := _interval_arguments(node.expression)):
        unit, amount = interval
        return exp.DateAdd(this=node.this, expression=amount, unit=exp.var(unit.upper()))
    return node


_FIXES = {"spark": _for_spark, "trino": _for_trino, "athena": _for_trino}


def _without_hints(node: exp.Expr) -> exp.Expr:
    """A common table expression without DuckDB's [NOT] MATERIALIZED, which neither Spark nor Trino parses
    (each decides for itself)."""
    if isinstance(node, exp.CTE) and node.args.get("materialized") is not None:
        node.set("materialized", None)
    return node


@functools.lru_cache(maxsize=256)
def _translated(query: str, dialect: str) -> exp.Expr:
    tree = sqlglot.parse_one(query, read="duckdb")
    rule = _FIXES[dialect]
    # Children before their parent (the reverse of a depth-first walk): a rule sees its arguments translated.
    for node in reversed(list(tree.walk(bfs=False))):
        new = rule(_without_hints(node))
        if new is not node:
            if node is tree:
                tree = new
            else:
                node.replace(new)
    return tree


def parameters(query: str) -> set[str]:
    """The names of a query's `$name` parameters."""
    return {node.name for node in _translated(query, "spark").find_all(exp.Placeholder) if node.name}


def transpile(
    query: str, dialect: str = "spark", params: dict[str, Any] | None = None, pretty: bool = False
) -> str:
    """A query in DuckDB's dialect (a metric definition) as `dialect` (spark, trino or athena) runs it.

    Parameters:
        query: SQL in DuckDB's dialect, with named parameters `$name`.
        dialect: one of DIALECTS.
        params: values to put in place of the parameters, as literals sqlglot quotes; None keeps them as
            named parameter markers (`:name`, which Spark binds itself).
        pretty: indent the SQL.
    Raises:
        AnalyticsError: an unknown dialect, or a parameter `params` has no value for.
    """
    if dialect not in DIALECTS:
        raise AnalyticsError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
    tree = _translated(query, dialect)
    if params is not None:

        def bind(node: exp.Expr) -> exp.Expr:
            if isinstance(node, exp.Placeholder) and node.name:
                if node.name not in params:
                    raise AnalyticsError(f"no value for parameter ${node.name}")
                return exp.convert(params[node.name])
            return node

        tree = tree.transform(bind)
    # Comments are left out: sqlglot moves a line comment to where it no longer says anything.
    return tree.sql(dialect=dialect, pretty=pretty, comments=False)


# What every question reads, built from the store once (each may read those before it).
STORED_RELATIONS = (
    ("journeys", sql.JOURNEYS),
    ("reads", sql.READS),
    ("multi_campaign_customers", sql.MULTI_CAMPAIGN_CUSTOMERS),
)


# -- Athena and Trino ----------------------------------------------------------------------------------------

STORED_TABLE = "stored_events"


def statements(filters: Filters, dialect: str = "athena", period: str = "week") -> dict[str, str]:
    """The definitions as statements Athena or Trino run over a table `stored_events` of the store's files
    (docs/scale.md): views of the stored rows and of the relations built from them, then the funnel,
    timeline and cohorts of one question, its parameters written in as literals.

    Returns:
        name -> SQL text: raw_events, journeys, reads, multi_campaign_customers (CREATE VIEW); funnel,
        timeline, cohorts.
    """
    params = filters.params()

    def pretty(query: str) -> str:
        return transpile(query, dialect, params, pretty=True)

    def view(name: str, query: str) -> str:
        create = exp.Create(
            this=exp.to_table(name),
            kind="VIEW",
            replace=True,
            expression=sqlglot.parse_one(query, read="duckdb"),
        )
        return pretty(create.sql(dialect="duckdb"))

    return {
        "raw_events": view("raw_events", sql.raw_events(STORED_TABLE, set(SCHEMA.names))),
        **{
            name: view(name, _joined([("source", "select * from raw_events")], query))
            for name, query in STORED_RELATIONS
        },
        "funnel": pretty(_joined([("customer_steps", sql.CUSTOMER_STEPS)], sql.FUNNEL)),
        "timeline": pretty(_joined([("customer_steps", sql.CUSTOMER_STEPS)], sql.TIMELINE)),
        "cohorts": pretty(_joined([("customer_steps", sql.CUSTOMER_STEPS)], sql.cohorts(period))),
    }


def _query(text: str) -> exp.Query:
    """`text`, a query in DuckDB's dialect, parsed.

    Raises:
        AnalyticsError: text that is not a query.
    """
    tree = sqlglot.parse_one(text, read="duckdb")
    if not isinstance(tree, exp.Query):
        raise AnalyticsError(f"not a query: {text[:60]!r}")
    return tree


def _ctes(tree: exp.Query) -> tuple[exp.Query, list[tuple[str, exp.Expr]]]:
    """A query without its WITH clause, and the (name, query) pairs the clause held."""
    clause = tree.find(exp.With)
    if clause is None or clause.parent is not tree:
        return tree, []
    pairs = [(cte.alias, cte.this) for cte in clause.expressions]
    clause.pop()
    return tree, pairs


def _joined(relations: list[tuple[str, str]], query: str) -> str:
    """`query` as one statement, those of the relations it reads (each with its own WITH clause) written in
    as common table expressions before its own."""
    final, own = _ctes(_query(query))
    read = {table.name for table in _query(query).find_all(exp.Table)}
    pairs: list[tuple[str, exp.Expr]] = []
    for name, relation in relations:
        if name in read:
            body, inner = _ctes(_query(relation))
            pairs += [*inner, (name, body)]
    for alias, cte in [*pairs, *own]:
        final.with_(alias, as_=cte, copy=False)
    return final.sql(dialect="duckdb")


__all__ = ["DIALECTS", "STORED_RELATIONS", "STORED_TABLE", "parameters", "statements", "transpile"]
