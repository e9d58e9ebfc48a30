"""Analytics benchmark: funnel, cohorts and timeline over 1M and 10M events, against pandas in the same run.

    python benchmarks/analytics.py [--sizes 1000000 10000000] [--repeat 3]

The events are the sample generator's realistic journeys (written once through the bot's event writer and
cached under benchmarks/.data/); the 10M set is ten copies of the 1M one with distinct customers. The
baseline is a straightforward pandas implementation of the same definitions, run on the same files.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import pyarrow.dataset as ds

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_data import dataset  # noqa: E402

import analytics  # noqa: E402

WINDOW = timedelta(days=7)


# -- the pandas baseline: the same definitions, written the straightforward way ------------------------------


def pandas_frame(root: Path):
    return ds.dataset(root / "events", format="parquet", partitioning="hive").to_table().to_pandas()


def pandas_funnel(df):
    import pandas as pd

    df = df.sort_values("ts").drop_duplicates("event_id")
    key = ["campaign_id", "customer_id"]
    entry = (
        df[df.event == "welcome_sent"].groupby(key, as_index=False).ts.min().rename(columns={"ts": "entry"})
    )
    after = df.merge(entry, on=key)
    after = after[(after.ts >= after.entry) & (after.ts <= after.entry + pd.Timedelta(WINDOW))]

    def first(frame, name):
        return frame.groupby(key).ts.min().rename(name)

    responded = first(after[after.event.isin(["coupon_requested", "declined"])], "responded")
    requested = first(after[after.event == "coupon_requested"], "requested")
    req = after.merge(requested.reset_index(), on=key)
    sent = first(req[(req.event == "coupon_sent") & (req.ts >= req.requested)], "sent")
    reads = after[after.event == "message_read"].merge(sent.reset_index(), on=key)
    watermark = reads.detail.str.extract(r'"watermark":\s*(\d+)')[0].astype("int64")
    sent_ms = reads.sent.astype("int64") // 1_000_000 if reads.sent.dtype.kind == "M" else reads.sent
    read = first(reads[watermark.values >= sent_ms.values], "read")
    revealed = first(req[(req.event == "coupon_revealed") & (req.ts >= req.requested)], "revealed")
    declined = first(after[after.event == "declined"], "declined")
    journeys = entry.set_index(key).join([responded, requested, read, revealed, declined])
    journeys["seen"] = journeys[["read", "revealed"]].min(axis=1)
    return {
        column: int(journeys[column].notna().sum())
        for column in ("entry", "responded", "requested", "seen", "revealed", "declined")
    }


def pandas_timeline(df):
    df = df.sort_values("ts").drop_duplicates("event_id")
    first = df.groupby(["campaign_id", "customer_id", "event"]).ts.min().reset_index()
    first["day"] = first.ts.dt.date
    return first.groupby(["day", "event"]).size()


def pandas_cohorts(df):
    df = df.sort_values("ts").drop_duplicates("event_id")
    welcome = df[df.event == "welcome_sent"].groupby("customer_id").ts.min()
    cohort = welcome.dt.tz_localize(None).dt.to_period("W").dt.start_time.rename("cohort")
    reveals = df[df.event == "coupon_revealed"].merge(cohort.reset_index(), on="customer_id")
    reveals["k"] = (reveals.ts.dt.tz_localize(None) - reveals.cohort).dt.days // 7
    counts = reveals.drop_duplicates(["customer_id", "k"]).groupby(["cohort", "k"]).size()
    sizes = cohort.value_counts()
    return counts / sizes.reindex(counts.index.get_level_values(0)).values


def timed(function, repeat: int) -> tuple[float, object]:
    timings, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-pandas", action="store_true", help="skip the baseline")
    args = parser.parse_args()

    print(f"{'events':>12} {'metric':<10} {'promobot s':>11} {'pandas s':>10} {'speed-up':>9}")
    for size in args.sizes:
        root = dataset(size)
        # Opening reads the files and keeps the deduplicated metric columns in memory, once per file change.
        opened, events = timed(lambda r=root: analytics.open(r), 1)
        print(f"{'':>12} {'open':<10} {opened:>11.3f}", flush=True)
        rows = events.sql("select count(*) as n from raw_events").column("n")[0].as_py()
        ours = {
            "funnel": timed(lambda e=events: e.funnel(window=WINDOW), args.repeat)[0],
            "cohorts": timed(lambda e=events: e.cohorts(period="week"), args.repeat)[0],
            "timeline": timed(lambda e=events: e.timeline(window=WINDOW), args.repeat)[0],
        }
        theirs: dict[str, float] = {}
        if not args.no_pandas:
            load, frame = timed(lambda r=root: pandas_frame(r), 1)
            theirs = {
                "funnel": timed(lambda f=frame: pandas_funnel(f), 1)[0] + load,
                "cohorts": timed(lambda f=frame: pandas_cohorts(f), 1)[0] + load,
                "timeline": timed(lambda f=frame: pandas_timeline(f), 1)[0] + load,
            }
            del frame
        for metric, seconds in ours.items():
            baseline = theirs.get(metric)
            ratio = f"{baseline / seconds:>8.1f}x" if baseline else f"{'':>9}"
            shown = f"{baseline:>10.2f}" if baseline else f"{'-':>10}"
            print(f"{rows:>12,} {metric:<10} {seconds:>11.3f} {shown} {ratio}", flush=True)


if __name__ == "__main__":
    main()
