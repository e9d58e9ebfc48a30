"""The benchmarks' event stores: realistic journeys, made once and cached under benchmarks/.data/; and the new
flush files the incremental benchmark adds to a copy of one."""

from __future__ import annotations

import hashlib
import itertools
import random
import secrets
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analytics.sample import CAMPAIGNS, journey, write_sample  # noqa: E402
from bot.events import FILE_SCHEMA, to_table  # noqa: E402
from bot.store import FileStore, parquet_bytes, partition_dir, split_by_day  # noqa: E402

CACHE = REPO / "benchmarks" / ".data"


def dataset(size: int) -> Path:
    """A store of about `size` events, made once and cached."""
    base = CACHE / "events-1m"
    if not (base / "events").exists():
        print("writing 1M sample events (once) …", flush=True)
        write_sample(base, customers=130_000, days=60, seed=1)
        (base / STAMP).write_text(generator_version())
    if size <= 1_000_000:
        warn_if_stale(base)
        return base
    copies = round(size / 1_000_000)
    target = CACHE / f"events-{copies}m"
    if (target / "events").exists():
        warn_if_stale(target)
    else:
        print(f"making the {copies}M set from the 1M one …", flush=True)
        table = ds.dataset(base / "events", format="parquet", partitioning="hive").to_table()
        for copy in range(copies):
            suffix = pa.scalar(f"-{copy}")
            shifted = table.set_column(
                table.schema.get_field_index("customer_id"),
                "customer_id",
                pc.binary_join_element_wise(table.column("customer_id"), suffix, ""),
            ).set_column(
                table.schema.get_field_index("event_id"),
                "event_id",
                pc.binary_join_element_wise(table.column("event_id"), suffix, ""),
            )
            for day in pc.unique(shifted.column("event_date")).to_pylist():
                part = shifted.filter(pc.equal(shifted.column("event_date"), day))
                directory = target / "events" / f"event_date={day}"
                directory.mkdir(parents=True, exist_ok=True)
                pq.write_table(
                    part.drop_columns(["event_date"]),
                    directory / f"copy{copy:02d}.parquet",
                    compression="zstd",
                )
        shutil.copy(base / STAMP, target / STAMP)
    return target


STAMP = "generator.sha256"


def generator_version() -> str:
    """A digest of the sample generator's code: the cached stores are its output."""
    return hashlib.sha256((REPO / "analytics" / "sample.py").read_bytes()).hexdigest()


def warn_if_stale(store: Path) -> None:
    # Not made again by itself: another benchmark may be reading the store right now.
    stamp = store / STAMP
    if not stamp.exists() or stamp.read_text() != generator_version():
        print(
            f"note: {store} was made by another version of analytics/sample.py; delete it to make it again",
            flush=True,
        )


def event_files(root: Path) -> list[Path]:
    """The visible Parquet files of a store, in the bot's layout."""
    return sorted(Path(root, "events").glob("*/*.parquet"))


def new_flushes(
    root: Path, *, customers_per_hour: int = 400, returning: float = 0.5, seed: int = 1
) -> Iterator[list[Path]]:
    """Flush the next hour of the shop's events into the store at `root`, one hour per step: yields the files
    written (one per day the hour touches, as the bot's flusher splits a batch).

    Every hour `customers_per_hour` journeys start (a share of them by customers already in the store, the
    rest by new ones); each file holds the events that happened in its hour, so journeys started earlier
    answer, read and reveal in later files. The hours follow the last event in the store.
    """
    rng = random.Random(seed)
    table = ds.dataset(Path(root, "events"), format="parquet", partitioning="hive").to_table(
        columns=["customer_id", "ts"]
    )
    known = pc.unique(table.column("customer_id")).to_pylist()
    clock = pc.max(table.column("ts")).as_py()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    store, writer = FileStore(str(root)), secrets.token_hex(6)
    pending: list = []
    for seq in itertools.count(1):
        hour_start, clock = clock, clock + timedelta(hours=1)
        for _ in range(customers_per_hour):
            new = f"7{rng.randrange(10**15):015d}"  # not one of the sample's ids, which start with 6
            customer = rng.choice(known) if rng.random() < returning else new
            (campaign,) = rng.choices([c for c, _ in CAMPAIGNS], weights=[w for _, w in CAMPAIGNS])
            start = hour_start + timedelta(seconds=rng.uniform(0, 3600))
            pending += journey(rng, customer, (start - epoch) // timedelta(microseconds=1), campaign).events
        due = [e for e in pending if e.ts <= clock]
        pending = [e for e in pending if e.ts > clock]
        written = []
        for day, part in split_by_day(to_table(due, FILE_SCHEMA)).items():
            relative = f"{partition_dir(day)}/{writer}-{seq:08d}.parquet"
            store.put(relative, parquet_bytes(part))
            written.append(Path(store.path(relative)))
        yield written
