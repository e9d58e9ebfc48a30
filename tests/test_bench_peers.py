"""The benchmark's peers (pandas, Polars, plain DuckDB) compute the funnel of the metric definitions: on
hand-built journeys with known answers, and the same figures as promobot on sample journeys, whether a
receipt's watermark is a column or in `detail`, and with a file stored twice."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from analytics.sample import write_sample
from benchmarks import analytics as bench
from benchmarks.bench_data import event_files
from bot.store import parquet_bytes, partition_dir

PEERS = {"pandas": bench.pandas_funnel, "polars": bench.polars_funnel, "duckdb": bench.duckdb_funnel}
CONTENDERS = {**PEERS, "promobot": bench.promobot_funnel}

T = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def write_events(root: Path, name: str, rows: list[dict], *, typed_watermark: bool) -> None:
    """Rows (customer, campaign, event, seconds after T, watermark) as one of the bot's files."""
    columns: dict[str, list] = {
        "event_id": [f"{name}.{i}" for i in range(len(rows))],
        "ts": [T + timedelta(seconds=row["at"]) for row in rows],
        "page_id": ["p"] * len(rows),
        "customer_id": [row["customer"] for row in rows],
        "campaign_id": [row.get("campaign", "edge") for row in rows],
        "variant": [None] * len(rows),
        "event": [row["event"] for row in rows],
        "button": [None] * len(rows),
        "message_id": [None] * len(rows),
        "detail": [None] * len(rows),
    }
    watermarks = [row.get("watermark") for row in rows]
    if typed_watermark:
        columns["watermark"] = watermarks
    else:
        columns["detail"] = [None if w is None else json.dumps({"watermark": w}) for w in watermarks]
    table = pa.table(columns).cast(
        pa.schema(
            [
                (
                    n,
                    pa.timestamp("us", tz="UTC")
                    if n == "ts"
                    else pa.int64()
                    if n == "watermark"
                    else pa.string(),
                )
                for n in columns
            ]
        )
    )
    target = root / partition_dir(T.date()) / f"{name}-00000001.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(parquet_bytes(table))


def journey(customer: str, *steps: tuple, campaign: str = "edge") -> list[dict]:
    """A welcome at T, then (event, seconds after T[, watermark ms]) each."""
    rows = [{"customer": customer, "campaign": campaign, "event": "welcome_sent", "at": 0}]
    for event, at, *watermark in steps:
        rows.append({"customer": customer, "campaign": campaign, "event": event, "at": at})
        if watermark:
            rows[-1]["watermark"] = watermark[0]
    return rows


def edge_journeys() -> list[dict]:
    """One journey per rule of the definitions, each named for what it shows."""
    second = 1000
    return [
        # a tap before the welcome's stamp, within the allowance; the coupon read, then revealed
        *journey(
            "quick-tap",
            ("coupon_requested", -10),
            ("coupon_sent", 1),
            ("message_read", 20, ms(T) - 9 * second),
            ("coupon_revealed", 60),
            ("coupon_redeemed", 45),  # the bot's clock, 15 s behind the platform's: within the allowance
        ),
        # a tap longer before the welcome than the allowance: answers an older message
        *journey("early-tap", ("coupon_requested", -40), ("coupon_sent", -39)),
        # a late receipt of the welcome: its watermark is before the click
        *journey("late-receipt", ("coupon_requested", 30), ("coupon_sent", 31), ("message_read", 40, ms(T))),
        # a receipt after the click, but no coupon was sent
        *journey("no-coupon", ("coupon_requested", 30), ("message_read", 40, ms(T) + 35 * second)),
        # a reveal after the 7-day window
        *journey(
            "late-reveal",
            ("coupon_requested", 60),
            ("coupon_sent", 61),
            ("coupon_revealed", 8 * 86400),
            ("coupon_redeemed", 8 * 86400 + 60),  # a reveal the window does not count: nor its redemption
        ),
        # a watermark equal to the click's time does not cover the coupon
        *journey(
            "equal-watermark",
            ("coupon_requested", 30),
            ("coupon_sent", 31),
            ("message_read", 45, ms(T) + 30_000),
        ),
        # declined, then asked for the coupon after all
        *journey(
            "changed-mind",
            ("declined", 20),
            ("coupon_requested", 25),
            ("coupon_sent", 26),
            ("coupon_redeemed", 90),  # no reveal to follow
        ),
        # one customer in two campaigns counts once; the second journey declines 50 s after its entry
        *journey("two-campaigns"),
        *[
            {**row, "at": row["at"] + 100}
            for row in journey("two-campaigns", ("declined", 50), campaign="edge-2")
        ],
    ]


EDGE_FUNNEL = {
    "reached": (8, None, None),
    "responded": (7, 30.0, 54.0),  # 0 (clamped), 20, 30, 30, 30, 50, 60
    "coupon_requested": (6, 30.0, 45.0),  # 0, 25, 30, 30, 30, 60
    "coupon_seen": (1, 20.0, 20.0),
    "coupon_revealed": (1, 60.0, 60.0),
    "redeemed": (1, 45.0, 45.0),
    "declined": (2, 35.0, 47.0),  # 20, 50
}


@pytest.mark.parametrize("typed_watermark", [False, True], ids=["watermark-in-detail", "watermark-column"])
@pytest.mark.parametrize("contender", CONTENDERS)
def test_each_rule_of_the_definitions_is_computed(tmp_path, contender, typed_watermark):
    write_events(tmp_path / "store", "edge", edge_journeys(), typed_watermark=typed_watermark)

    figures = CONTENDERS[contender](tmp_path / "store")

    assert bench.same_funnel(figures, EDGE_FUNNEL), figures


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    write_sample(root, customers=400, days=14, seed=5, progress=False)
    write_events(root, "edge", edge_journeys(), typed_watermark=False)
    return root


def rewrite_watermarks(path: Path, *, typed: bool) -> None:
    """Rewrite one file with its receipts' watermarks in a `watermark` column, or in `detail` only."""
    table = pq.read_table(path)
    details = table.column("detail").to_pylist()
    typed_marks = table.column("watermark").to_pylist() if "watermark" in table.column_names else None
    marks = [
        (typed_marks[i] if typed_marks and typed_marks[i] is not None else None)
        or (json.loads(d).get("watermark") if d and d.startswith('{"watermark"') else None)
        for i, d in enumerate(details)
    ]
    if "watermark" in table.column_names:
        table = table.drop_columns(["watermark"])
    if typed:
        detail = [None if m is not None else d for m, d in zip(marks, details, strict=True)]
        table = table.set_column(table.column_names.index("detail"), "detail", pa.array(detail, pa.string()))
        table = table.append_column("watermark", pa.array(marks, pa.int64()))
    else:
        detail = [
            d if m is None else json.dumps({"watermark": m}) for m, d in zip(marks, details, strict=True)
        ]
        table = table.set_column(table.column_names.index("detail"), "detail", pa.array(detail, pa.string()))
    path.write_bytes(parquet_bytes(table))


@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_computes_promobots_funnel(sample, peer):
    assert bench.same_funnel(PEERS[peer](sample), bench.promobot_funnel(sample))


@pytest.mark.parametrize("contender", CONTENDERS)
def test_the_figures_are_the_same_whether_the_watermark_is_a_column_or_in_detail(sample, tmp_path, contender):
    mixed = tmp_path / "mixed"
    shutil.copytree(sample, mixed)
    files = event_files(mixed)
    for index, path in enumerate(files):
        rewrite_watermarks(path, typed=index % 2 == 0)
    assert sum(pc.sum(pq.read_table(f).column("watermark").is_valid()).as_py() for f in files[::2]) > 0

    assert bench.same_funnel(CONTENDERS[contender](mixed), CONTENDERS[contender](sample))


@pytest.mark.parametrize("contender", CONTENDERS)
def test_a_file_stored_twice_changes_no_figure(sample, tmp_path, contender):
    twice = tmp_path / "twice"
    shutil.copytree(sample, twice)
    biggest = max(event_files(twice), key=lambda p: p.stat().st_size)
    shutil.copy(biggest, biggest.with_name("copied-00000001.parquet"))

    assert bench.same_funnel(CONTENDERS[contender](twice), CONTENDERS[contender](sample))
