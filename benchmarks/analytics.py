"""Analytics benchmark: the funnel cold (a new process, files to answer) against pandas, Polars and plain
DuckDB, and the updated funnel after a new flush file lands in an opened store.

    python benchmarks/analytics.py [--sizes 1000000 10000000] [--repeat 3] [--rounds 5] [--quick]

Cold: every measurement is a fresh Python process that imports its libraries (timed apart), then is timed from
before reading the files to the answer in hand. Contenders: promobot (`analytics.open(root).funnel()`, also
cohorts and timeline), pandas, Polars (lazy), a plain DuckDB query, all computing the funnel of
docs/metrics.md (every campaign, every day, a 7-day window, UTC), and a baseline DuckDB pass that
only groups every journey's rows. The peers' figures must equal promobot's, or the run fails. The files are in
the OS's page cache (read once before timing), as on the machine that wrote them.

Incremental: a copy of the 1M store is opened and asked the funnel; then, each round, the next hour of events
lands as a new flush file, and the next `funnel()` on the same object is timed.

The events are the sample generator's journeys (written once through the bot's event writer and cached under
benchmarks/.data/); the 10M set is ten copies of the 1M one with distinct customers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bot.facts import SEND_ALLOWANCE, STEPS, EventName  # noqa: E402

WINDOW_S = 7 * 86400
ALLOWANCE_S = int(SEND_ALLOWANCE.total_seconds())
FUNNEL_EVENTS = [
    str(name)
    for name in (
        EventName.WELCOME_SENT,
        EventName.COUPON_REQUESTED,
        EventName.DECLINED,
        EventName.COUPON_SENT,
        EventName.COUPON_REVEALED,
        EventName.COUPON_REDEEMED,
        EventName.MESSAGE_READ,
    )
]
JOURNEY = ["campaign_id", "customer_id"]
# The peers' column for each step after `reached`.
STEP_COLUMNS = {
    "responded": "responded",
    "coupon_requested": "requested",
    "coupon_seen": "seen",
    "coupon_revealed": "revealed",
    "redeemed": "redeemed",
    "declined": "declined",
}
# Per step (STEPS' order): customers, median and p90 seconds after entry (None for `reached`).
Funnel = dict[str, tuple[int, float | None, float | None]]


def glob(root: Path) -> str:
    return str(Path(root, "events", "*", "*.parquet"))


# -- the peers: the same definitions, written the straightforward way ----------------------------------------
#
# No peer deduplicates by event_id: every step is a first time or an existence, so a repeated row changes no
# figure (the test copies a file to make sure).


def _funnel_from_seconds(reached: int, rows: dict[str, tuple[int, float | None, float | None]]) -> Funnel:
    return {"reached": (reached, None, None), **{step: rows[step] for step in STEPS[1:]}}


def pandas_funnel(root: Path) -> Funnel:
    """The funnel with pandas (reading through pyarrow, the columns and events it needs)."""
    import pandas as pd
    import pyarrow as pa

    schema = pa.schema(
        [
            ("campaign_id", pa.string()),
            ("customer_id", pa.string()),
            ("event", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("detail", pa.string()),
            ("watermark", pa.int64()),  # files written before it was a column read it as null
        ]
    )
    df = pd.read_parquet(
        Path(root, "events"), schema=schema, columns=schema.names, filters=[("event", "in", FUNNEL_EVENTS)]
    )
    window, allowance = pd.Timedelta(seconds=WINDOW_S), pd.Timedelta(seconds=ALLOWANCE_S)

    def of(name: str) -> pd.DataFrame:
        return df[df.event == name]

    def first_between(
        rows: pd.DataFrame, journeys: pd.DataFrame, low: str, high: str, name: str
    ) -> pd.Series:
        joined = rows.join(journeys, on=JOURNEY, how="inner")
        joined = joined[(joined.ts >= joined[low]) & (joined.ts <= joined[high])]
        return by_journey(joined).ts.min().rename(name)

    def by_journey(rows: pd.DataFrame) -> pd.core.groupby.DataFrameGroupBy:
        # A join on the journey's columns may keep them as an index as well (pandas 3): group by the columns.
        return rows.reset_index(drop=True).groupby(JOURNEY)

    j = of("welcome_sent").groupby(JOURNEY).ts.min().rename("entry").to_frame()
    j["earliest"], j["deadline"] = j.entry - allowance, j.entry + window
    j = j.join(first_between(of("coupon_requested"), j, "earliest", "deadline", "requested"))
    j = j.join(first_between(of("declined"), j, "earliest", "deadline", "declined"))
    asked = j[j.requested.notna()]
    j = j.join(first_between(of("coupon_revealed"), asked, "requested", "deadline", "revealed"))
    j["redeem_from"] = j.revealed - allowance  # the redemption is the bot's clock, the reveal the platform's
    shown = j[j.revealed.notna()]
    j = j.join(first_between(of("coupon_redeemed"), shown, "redeem_from", "deadline", "redeemed"))
    sent = of("coupon_sent").join(asked, on=JOURNEY, how="inner")
    sent_after = by_journey(sent[sent.ts >= sent.requested]).size().index
    reads = of("message_read").join(asked.loc[asked.index.isin(sent_after)], on=JOURNEY, how="inner")
    from_detail = reads.detail.str.extract(r'"watermark":\s*(\d+)')[0].astype("float64")
    watermark = reads.watermark.fillna(from_detail)
    requested_ms = (reads.requested - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    reads = reads[(watermark > requested_ms) & (reads.ts <= reads.deadline)]
    j = j.join(by_journey(reads).ts.min().rename("read"))
    j["responded"] = j[["requested", "declined"]].min(axis=1)
    j["seen"] = j[["revealed", "read"]].min(axis=1)

    micros = pd.DataFrame(
        {step: (j[column] - j.entry) / pd.Timedelta(microseconds=1) for step, column in STEP_COLUMNS.items()}
    )
    per_customer = micros.groupby(level="customer_id").min().clip(lower=0)
    rows = {}
    for step in STEP_COLUMNS:
        values = per_customer[step].dropna()
        quantiles = (float(values.quantile(q)) / 1e6 for q in (0.5, 0.9)) if len(values) else (None, None)
        rows[step] = (len(values), *quantiles)
    return _funnel_from_seconds(len(per_customer), rows)


def polars_funnel(root: Path) -> Funnel:
    """The funnel with Polars' lazy API over `scan_parquet`."""
    import polars as pl

    schema = {
        "campaign_id": pl.String,
        "customer_id": pl.String,
        "event": pl.String,
        "ts": pl.Datetime("us", "UTC"),
        "detail": pl.String,
        "watermark": pl.Int64,
    }
    events = (
        pl.scan_parquet(
            glob(root),
            schema=schema,
            hive_partitioning=False,
            missing_columns="insert",
            extra_columns="ignore",
        )
    ).filter(pl.col("event").is_in(FUNNEL_EVENTS))
    ts, window, allowance = pl.col("ts"), pl.duration(seconds=WINDOW_S), pl.duration(seconds=ALLOWANCE_S)

    def of(name: str) -> pl.LazyFrame:
        return events.filter(pl.col("event") == name)

    def first_between(rows: pl.LazyFrame, journeys: pl.LazyFrame, low: pl.Expr, high: pl.Expr, name: str):
        return (
            rows.join(journeys, on=JOURNEY)
            .filter(ts.is_between(low, high))
            .group_by(JOURNEY)
            .agg(ts.min().alias(name))
        )

    entry = of("welcome_sent").group_by(JOURNEY).agg(entry=ts.min())
    bounds = (pl.col("entry") - allowance, pl.col("entry") + window)
    requested = first_between(of("coupon_requested"), entry, *bounds, "requested")
    declined = first_between(of("declined"), entry, *bounds, "declined")
    asked = entry.join(requested, on=JOURNEY)
    revealed = first_between(
        of("coupon_revealed"), asked, pl.col("requested"), pl.col("entry") + window, "revealed"
    )
    redeemed = first_between(
        of("coupon_redeemed"),
        entry.join(revealed, on=JOURNEY),
        pl.col("revealed") - allowance,
        pl.col("entry") + window,
        "redeemed",
    )
    sent_after = (
        of("coupon_sent").join(asked, on=JOURNEY).filter(ts >= pl.col("requested")).select(JOURNEY).unique()
    )
    from_detail = pl.col("detail").str.json_path_match("$.watermark").cast(pl.Int64)
    read = (
        of("message_read")
        .with_columns(watermark=pl.coalesce("watermark", from_detail))
        .join(asked.join(sent_after, on=JOURNEY), on=JOURNEY)
        .filter((pl.col("watermark") > pl.col("requested").dt.epoch("ms")) & (ts <= pl.col("entry") + window))
        .group_by(JOURNEY)
        .agg(read=ts.min())
    )
    journeys = entry
    for frame in (requested, declined, revealed, redeemed, read):
        journeys = journeys.join(frame, on=JOURNEY, how="left")
    steps = {
        "responded": pl.min_horizontal("requested", "declined"),
        "coupon_requested": pl.col("requested"),
        "coupon_seen": pl.min_horizontal("revealed", "read"),
        "coupon_revealed": pl.col("revealed"),
        "redeemed": pl.col("redeemed"),
        "declined": pl.col("declined"),
    }
    per_customer = (
        journeys.select(
            "customer_id",
            **{step: (t - pl.col("entry")).dt.total_microseconds() for step, t in steps.items()},
        )
        .group_by("customer_id")
        .agg(pl.col(step).min().clip(lower_bound=0) for step in steps)
    )
    figures = per_customer.select(
        reached=pl.len(),
        **{f"{step}_n": pl.col(step).count() for step in steps},
        **{f"{step}_p50": pl.col(step).quantile(0.5, "linear") for step in steps},
        **{f"{step}_p90": pl.col(step).quantile(0.9, "linear") for step in steps},
    ).collect()
    row = figures.row(0, named=True)

    def seconds(value: float | None) -> float | None:
        return None if value is None else value / 1e6

    rows = {
        step: (row[f"{step}_n"], seconds(row[f"{step}_p50"]), seconds(row[f"{step}_p90"])) for step in steps
    }
    return _funnel_from_seconds(row["reached"], rows)


DUCKDB_FUNNEL = """
with events as (
    select campaign_id, customer_id, event, ts, {watermark} as watermark
    from read_parquet('{files}', union_by_name = true)
),
entry as (
    select campaign_id, customer_id, min(ts) as entry
    from events where event = 'welcome_sent'
    group by campaign_id, customer_id
),
requested as (
    select campaign_id, customer_id, min(e.ts) as requested
    from entry j join events e using (campaign_id, customer_id)
    where e.event = 'coupon_requested'
      and e.ts between j.entry - interval {allowance} second and j.entry + interval {window} second
    group by campaign_id, customer_id
),
declined as (
    select campaign_id, customer_id, min(e.ts) as declined
    from entry j join events e using (campaign_id, customer_id)
    where e.event = 'declined'
      and e.ts between j.entry - interval {allowance} second and j.entry + interval {window} second
    group by campaign_id, customer_id
),
revealed as (
    select campaign_id, customer_id, min(e.ts) as revealed
    from entry j join requested r using (campaign_id, customer_id)
    join events e using (campaign_id, customer_id)
    where e.event = 'coupon_revealed' and e.ts between r.requested and j.entry + interval {window} second
    group by campaign_id, customer_id
),
redeemed as (  -- the redemption is the bot's clock, the reveal the platform's
    select campaign_id, customer_id, min(e.ts) as redeemed
    from entry j join revealed v using (campaign_id, customer_id)
    join events e using (campaign_id, customer_id)
    where e.event = 'coupon_redeemed'
      and e.ts between v.revealed - interval {allowance} second and j.entry + interval {window} second
    group by campaign_id, customer_id
),
coupon_sent as (  -- a coupon sent after the request
    select distinct campaign_id, customer_id
    from requested r join events e using (campaign_id, customer_id)
    where e.event = 'coupon_sent' and e.ts >= r.requested
),
read as (  -- a read receipt whose watermark is past the request
    select campaign_id, customer_id, min(e.ts) as read
    from entry j join requested r using (campaign_id, customer_id)
    join coupon_sent using (campaign_id, customer_id)
    join events e using (campaign_id, customer_id)
    where e.event = 'message_read' and e.watermark > epoch_ms(r.requested)
      and e.ts <= j.entry + interval {window} second
    group by campaign_id, customer_id
),
journeys as (
    select customer_id, entry,
           least(requested, declined) as responded, requested,
           least(revealed, read) as seen, revealed, redeemed, declined
    from entry
    left join requested using (campaign_id, customer_id)
    left join declined using (campaign_id, customer_id)
    left join revealed using (campaign_id, customer_id)
    left join redeemed using (campaign_id, customer_id)
    left join read using (campaign_id, customer_id)
),
per_customer as (  -- a customer's earliest step over their journeys, in microseconds after entry
    select customer_id,
           min(epoch_us(responded) - epoch_us(entry)) as responded,
           min(epoch_us(requested) - epoch_us(entry)) as requested,
           min(epoch_us(seen) - epoch_us(entry)) as seen,
           min(epoch_us(revealed) - epoch_us(entry)) as revealed,
           min(epoch_us(redeemed) - epoch_us(entry)) as redeemed,
           min(epoch_us(declined) - epoch_us(entry)) as declined
    from journeys group by customer_id
)
select count(*) as reached, {per_step}
from per_customer
"""


def duckdb_funnel(root: Path) -> Funnel:
    """The funnel as one plain DuckDB query: a join per step, grouped by journey, then by customer."""
    import duckdb

    con = duckdb.connect()
    files = glob(root).replace("'", "''")
    columns = con.sql(f"select * from read_parquet('{files}', union_by_name = true) limit 0").columns
    from_detail = "try_cast(json_extract_string(detail, '$.watermark') as bigint)"
    watermark = f"coalesce(watermark, {from_detail})" if "watermark" in columns else from_detail
    names = STEP_COLUMNS
    # max(0, …) written out: DuckDB's greatest() skips nulls, and a missing step must stay null.
    clamped = {step: f"case when {name} < 0 then 0 else {name} end" for step, name in names.items()}
    per_step = ", ".join(
        f"count({name}) as {step}_n, quantile_cont({clamped[step]}, [0.5, 0.9]) as {step}_q"
        for step, name in names.items()
    )
    sql = DUCKDB_FUNNEL.format(
        watermark=watermark, files=files, allowance=ALLOWANCE_S, window=WINDOW_S, per_step=per_step
    )
    cursor = con.sql(sql)
    (row,) = cursor.fetchall()
    row = dict(zip(cursor.columns, row, strict=True))
    rows = {}
    for step in names:
        quantiles = row[f"{step}_q"]
        rows[step] = (row[f"{step}_n"], *((q / 1e6 for q in quantiles) if quantiles else (None, None)))
    return _funnel_from_seconds(row["reached"], rows)


def duckdb_group_pass(root: Path) -> int:
    """The baseline: one DuckDB pass that only groups every journey's rows, kept in a table."""
    import duckdb

    con = duckdb.connect()
    files = glob(root).replace("'", "''")
    con.execute(
        "create table journeys as select campaign_id, customer_id, count(*) as n "
        f"from read_parquet('{files}', union_by_name = true) group by campaign_id, customer_id"
    )
    return con.sql("select count(*) from journeys").fetchall()[0][0]


def funnel_figures(table) -> Funnel:
    """A funnel table (analytics' `funnel()`) as step -> (customers, median, p90)."""
    return {
        row["step"]: (row["customers"], row["median_seconds"], row["p90_seconds"])
        for row in table.to_pylist()
    }


def promobot_funnel(root: Path) -> Funnel:
    import analytics

    return funnel_figures(analytics.open(root).funnel())


def promobot_cohorts(root: Path) -> int:
    import analytics

    return analytics.open(root).cohorts(period="week").num_rows


def promobot_timeline(root: Path) -> int:
    import analytics

    return analytics.open(root).timeline().num_rows


@dataclass(frozen=True)
class Contender:
    name: str
    imports: tuple[str, ...]  # imported before the clock starts, timed apart
    run: Callable[[Path], object]
    is_funnel: bool = True  # computes the funnel, so its figures are checked against promobot's


CONTENDERS = {
    c.name: c
    for c in (
        Contender("promobot", ("analytics",), promobot_funnel),
        Contender("pandas", ("pandas", "pyarrow"), pandas_funnel),
        Contender("polars", ("polars",), polars_funnel),
        Contender("duckdb", ("duckdb",), duckdb_funnel),
        Contender("group-pass", ("duckdb",), duckdb_group_pass, is_funnel=False),
        Contender("promobot-cohorts", ("analytics",), promobot_cohorts, is_funnel=False),
        Contender("promobot-timeline", ("analytics",), promobot_timeline, is_funnel=False),
    )
}


# -- cold runs: one fresh process per measurement ------------------------------------------------------------


@dataclass(frozen=True)
class Cold:
    imports: float
    seconds: float
    answer: object


def cold_child(name: str, root: Path) -> None:
    """In the fresh process: import, then time files to answer; print the figures as one JSON line."""
    contender = CONTENDERS[name]
    started = time.perf_counter()
    for module in contender.imports:
        importlib.import_module(module)
    imported = time.perf_counter()
    answer = contender.run(root)
    done = time.perf_counter()
    print(json.dumps({"imports": imported - started, "seconds": done - imported, "answer": answer}))


def run_cold(name: str, root: Path) -> Cold:
    """One cold measurement of a contender, in a new Python process."""
    out = subprocess.run(
        [sys.executable, __file__, "--cold", name, str(root)], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"the cold run of {name} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    answer = result["answer"]
    if CONTENDERS[name].is_funnel:
        answer = {step: tuple(values) for step, values in answer.items()}
    return Cold(result["imports"], result["seconds"], answer)


def same_step(a: tuple | None, b: tuple | None) -> bool:
    """Whether two funnel steps agree: customers exactly, median and p90 seconds to the microsecond."""
    if a is None or b is None or a[0] != b[0]:
        return False
    return all(
        (x is None and y is None) or (x is not None and y is not None and math.isclose(x, y, abs_tol=1e-6))
        for x, y in zip(a[1:], b[1:], strict=True)
    )


def same_funnel(a: Funnel, b: Funnel) -> bool:
    """Whether two funnels agree on every step (see `same_step`)."""
    return all(same_step(a.get(step), b.get(step)) for step in STEPS)


def check_same(reference: str, figures: dict[str, Funnel]) -> None:
    """Fail loudly unless every contender's funnel equals the reference's."""
    expected = figures[reference]
    for name, funnel in figures.items():
        wrong = [
            f"  {step}: {name} {funnel.get(step)} != {reference} {expected.get(step)}"
            for step in STEPS
            if not same_step(funnel.get(step), expected.get(step))
        ]
        if wrong:
            raise SystemExit(f"{name} computes other figures than {reference}:\n" + "\n".join(wrong))


def warm_page_cache(root: Path) -> int:
    """Read every file once so that no contender pays for the disk; returns how many events the store has."""
    import pyarrow.parquet as pq

    rows = 0
    for path in Path(root, "events").glob("*/*.parquet"):
        path.read_bytes()
        rows += pq.ParquetFile(path).metadata.num_rows
    return rows


# -- updated figures after a new flush file -----------------------------------------------------------------


def incremental(root: Path, rounds: int) -> tuple[list[float], list[int]]:
    """Seconds to the updated funnel after each new flush file (on one opened store), and each file's rows."""
    import pyarrow.parquet as pq

    import analytics
    from benchmarks.bench_data import new_flushes

    with tempfile.TemporaryDirectory(prefix="promobot-bench-") as scratch:
        store = Path(scratch) / "store"
        shutil.copytree(root, store)
        events = analytics.open(store)
        before = funnel_figures(events.funnel())
        flushes = new_flushes(store)
        timings, sizes = [], []
        for _ in range(rounds):
            files = next(flushes)
            started = time.perf_counter()
            after = funnel_figures(events.funnel())
            timings.append(time.perf_counter() - started)
            sizes.append(sum(pq.ParquetFile(f).metadata.num_rows for f in files))
            if after == before:
                raise SystemExit("the funnel did not change after a new flush file: stale figures")
            before = after
        # The updated figures must be the ones a fresh reading of the store gives.
        check_same("duckdb (fresh)", {"duckdb (fresh)": duckdb_funnel(store), "promobot (updated)": after})
    return timings, sizes


# -- the report ---------------------------------------------------------------------------------------------


def goal(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="cold runs per contender and size (median)")
    parser.add_argument("--rounds", type=int, default=5, help="new flush files in the incremental benchmark")
    parser.add_argument("--quick", action="store_true", help="1M events, one repeat, two rounds: a smoke run")
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), help="run these contenders only")
    parser.add_argument("--cold", nargs=2, metavar=("CONTENDER", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        cold_child(args.cold[0], Path(args.cold[1]))
        return
    if args.quick:
        args.sizes, args.repeat, args.rounds = [1_000_000], 1, 2
    names = args.only or list(CONTENDERS)

    from benchmarks.bench_data import dataset

    goals = []
    for size in args.sizes:
        root = dataset(size)
        rows = warm_page_cache(root)
        runs: dict[str, list[Cold]] = {name: [] for name in names}
        for _ in range(args.repeat):
            for name in names:  # interleaved, so that a busy moment of the machine is shared out
                runs[name].append(run_cold(name, root))
        funnels = {name: runs[name][0].answer for name in names if CONTENDERS[name].is_funnel}
        if funnels:
            check_same("promobot" if "promobot" in funnels else next(iter(funnels)), funnels)
        seconds = {name: statistics.median(r.seconds for r in runs[name]) for name in names}
        imports = {name: statistics.median(r.imports for r in runs[name]) for name in names}
        ours = seconds.get("promobot")
        print(f"\n{rows:,} events, cold (new process; median of {args.repeat})")
        print(f"  {'contender':<18} {'imports s':>9} {'files→answer s':>15} {'× promobot funnel':>18}")
        for name in names:
            ratio = f"{seconds[name] / ours:>17.1f}x" if ours else ""
            print(f"  {name:<18} {imports[name]:>9.2f} {seconds[name]:>15.3f} {ratio}", flush=True)
        if ours:
            if size >= 10_000_000:
                goals.append((f"cold funnel over {rows:,} events ≤ 1.5 s ({ours:.2f} s)", ours <= 1.5))
            if size >= 10_000_000 and "group-pass" in seconds:
                times = ours / seconds["group-pass"]
                goals.append((f"{rows:,}: ≤ 5× the DuckDB group pass ({times:.1f}×)", times <= 5))
            if "pandas" in seconds:
                times = seconds["pandas"] / ours
                goals.append((f"{rows:,}: ≥ 20× pandas cold to cold ({times:.1f}×)", times >= 20))
            if "polars" in seconds:
                times = seconds["polars"] / ours
                goals.append((f"{rows:,}: ≥ 3× Polars cold to cold ({times:.1f}×)", times >= 3))

    if "promobot" in names and args.rounds:
        timings, sizes = incremental(dataset(1_000_000), args.rounds)
        updated = statistics.median(timings)
        print(f"\nupdated funnel after a new flush file ({statistics.median(sizes):,.0f} rows), 1M events:")
        print("  " + ", ".join(f"{t:.3f}" for t in timings) + f" s; median {updated:.3f} s")
        goals.append((f"updated figures after a new flush file ≤ 0.5 s ({updated:.2f} s)", updated <= 0.5))

    if goals:
        print("\ngoals")
        for text, met in goals:
            print(f"  {goal(met):<8} {text}")


if __name__ == "__main__":
    main()
