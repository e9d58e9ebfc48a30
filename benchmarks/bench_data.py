"""The benchmarks' event stores: realistic journeys, made once and cached under benchmarks/.data/."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from analytics.sample import write_sample  # noqa: E402

CACHE = REPO / "benchmarks" / ".data"


def dataset(size: int) -> Path:
    """A store of about `size` events, made once and cached."""
    base = CACHE / "events-1m"
    if not (base / "events").exists():
        print("writing 1M sample events (once) …", flush=True)
        write_sample(base, customers=130_000, days=60, seed=1)
    if size <= 1_000_000:
        return base
    copies = round(size / 1_000_000)
    target = CACHE / f"events-{copies}m"
    if not (target / "events").exists():
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
    return target
