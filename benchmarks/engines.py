"""DuckDB and Spark on the same store, in one process: what docs/scale.md's "When to move from DuckDB to
Spark" rests on.

For each size: each engine's store opened and its first `funnel()` timed (it reads the store); then, for
two new questions (every campaign; one campaign in Europe/Paris), the time of `funnel`, `timeline` and
`cohorts("week")` together. Spark runs on `analytics.spark.local_session()` (`local[2]` here), its session's
start timed apart. The run fails unless both engines give the same figures.

    python benchmarks/engines.py [--sizes 1000000 10000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analytics.filters import Filters
from analytics.metrics import Metrics
from analytics.query import Events
from benchmarks.bench_data import dataset
from tests.support.engines import assert_same

QUESTIONS = {
    "every campaign": Filters(),
    "one campaign, Paris": Filters(campaign="spring-sale", tz="Europe/Paris"),
}


def timed(call):
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def question(events: Metrics, filters: Filters) -> list[pa.Table]:
    """A new question's funnel, timeline and weekly cohorts."""
    return [events.funnel(filters), events.timeline(filters), events.cohorts("week", filters)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    args = parser.parse_args()

    from analytics.spark import SparkEvents, local_session

    session_s, spark = timed(local_session)
    print(f"Spark session ({spark.sparkContext.master}): {session_s:.1f} s")
    for size in args.sizes:
        store = dataset(size)
        engines: dict[str, Metrics] = {
            "DuckDB": Events(str(store)),
            "Spark": SparkEvents(str(store), spark=spark),
        }
        answers: dict[str, list[pa.Table]] = {}
        print(f"\n{store.name}")
        for name, events in engines.items():
            read_s, _ = timed(lambda events=events: events.funnel(Filters()))
            times = []
            answers[name] = []
            for filters in QUESTIONS.values():
                seconds, answer = timed(lambda events=events, filters=filters: question(events, filters))
                times.append(seconds)
                answers[name] += answer
            shown = ", ".join(
                f"{label} {seconds:.2f} s" for label, seconds in zip(QUESTIONS, times, strict=True)
            )
            print(f"  {name:7} read + funnel {read_s:6.2f} s; a question: {shown}", flush=True)
        try:
            for spark_table, duckdb_table in zip(answers["Spark"], answers["DuckDB"], strict=True):
                assert_same(spark_table, duckdb_table)
        except AssertionError as difference:
            sys.exit(f"the engines' figures differ: {difference}")


if __name__ == "__main__":
    main()
