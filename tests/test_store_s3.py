"""Event files on S3: a real S3-compatible server (moto) on loopback, reached through pyarrow.fs."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import boto3
import pyarrow.dataset as ds
import pytest

from bot.compaction import compact
from bot.database import Database
from bot.events import Event
from bot.facts import EventName
from bot.flusher import FlushError, flush_once
from bot.store import FileStore, open_filesystem, write_events
from tests.support.builders import numbered_event
from tests.support.s3 import object_keys

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(n: int, ts: datetime = T0) -> Event:
    return numbered_event(n, ts, customers=5, event=EventName.COUPON_REVEALED)


def stored_ids(data: str) -> list[str]:
    filesystem, root = open_filesystem(data)
    dataset = ds.dataset(f"{root}/events", filesystem=filesystem, format="parquet", partitioning="hive")
    return sorted(dataset.to_table(columns=["event_id"]).column("event_id").to_pylist())


def record(database: Database, events: list[Event]) -> None:
    asyncio.run(database.record(events, []))


def test_events_reach_s3_as_hive_partitioned_parquet(bucket, s3_endpoint):
    data = f"s3://{bucket}/shop"
    events = [event(n) for n in range(50)] + [event(100, ts=datetime(2026, 3, 2, tzinfo=UTC))]

    assert write_events(FileStore(data), events, "writer-00000001") == 2

    assert object_keys(bucket, s3_endpoint) == [
        "shop/events/event_date=2026-03-01/writer-00000001.parquet",
        "shop/events/event_date=2026-03-02/writer-00000001.parquet",
    ]
    assert stored_ids(data) == sorted([f"e{n}" for n in range(50)] + ["e100"])


def test_the_flushers_of_two_bot_instances_share_one_bucket(bucket, s3_endpoint, tmp_path):
    data = f"s3://{bucket}/shop"
    a, b = Database.open(None, tmp_path / "a"), Database.open(None, tmp_path / "b")
    try:
        record(a, [event(n) for n in range(0, 20, 2)])
        record(b, [event(n) for n in range(1, 20, 2)])

        assert flush_once(a, FileStore(data)) == flush_once(b, FileStore(data)) == 10

        writers = {key.rsplit("/", 1)[1].split("-")[0] for key in object_keys(bucket, s3_endpoint)}
        assert writers == {a.store_id, b.store_id}
        assert stored_ids(data) == sorted(f"e{n}" for n in range(20))
    finally:
        a.close()
        b.close()


def test_an_unreachable_bucket_keeps_the_events_in_the_database_until_it_is_there(
    tmp_path, monkeypatch, s3_endpoint
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    database = Database.open(None, tmp_path / "state")
    try:
        record(database, [event(1)])
        files = FileStore("s3://no-such-bucket/x")

        with pytest.raises(FlushError, match="could not be written to s3://no-such-bucket/x"):
            flush_once(database, files)
        assert [e.event_id for batch in database.pending_batches() for e in batch.events] == ["e1"]

        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
            Bucket="no-such-bucket"
        )
        assert flush_once(database, files) == 1
        assert stored_ids("s3://no-such-bucket/x") == ["e1"]
        assert database.pending_batches() == []
    finally:
        database.close()


def test_compaction_on_s3_leaves_one_file_per_day(bucket, s3_endpoint):
    data = f"s3://{bucket}/shop"
    for n in range(0, 30, 10):
        write_events(FileStore(data), [event(k) for k in range(n, n + 10)], f"writer-{n:08d}")
    assert len(object_keys(bucket, s3_endpoint)) == 3

    assert compact(data, grace_s=0) == {date(2026, 3, 1): 3}

    [key] = object_keys(bucket, s3_endpoint)
    assert "/compacted-" in key
    assert stored_ids(data) == sorted(f"e{n}" for n in range(30))


def test_analytics_reads_an_s3_store_without_duckdb_extensions(bucket, tmp_path):
    import analytics
    from analytics.sample import write_sample

    data = f"s3://{bucket}/promobot"
    write_sample(data, customers=60, days=5, seed=2, progress=False)
    local = tmp_path / "local"
    write_sample(local, customers=60, days=5, seed=2, progress=False)

    from_s3 = analytics.open(data)

    # The same journeys (written a moment apart, so the times differ by that moment only).
    steps = [(r["step"], r["customers"]) for r in from_s3.funnel().to_pylist()]
    assert steps == [(r["step"], r["customers"]) for r in analytics.open(local).funnel().to_pylist()]
    assert steps[0][1] > 0
    installed = from_s3.sql(
        "select extension_name from duckdb_extensions() where installed and "
        "install_mode not in ('STATICALLY_LINKED', 'NOT_INSTALLED')"
    )
    assert installed.column("extension_name").to_pylist() == []  # nothing downloaded to read S3
