"""Compaction: a closed day's files become one, and no reader ever misses or double-counts an event."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from bot.compaction import compact
from bot.events import FILE_SCHEMA, Event, message_digest
from bot.store import FileStore, write_events
from tests.support.paths import REPO

DAY = date(2026, 3, 1)


def write_day(data: Path, files: int, per_file: int) -> None:
    """`files` files of `per_file` events each on DAY, as a writer leaves them, and one more holding a
    redelivered copy of the first event."""
    start = datetime(2026, 3, 1, tzinfo=UTC)
    store = FileStore(str(data))
    writer = uuid.uuid4().hex[:12]  # each call a writer of its own, as a new bot instance is
    first = None
    for f in range(files):
        events = [
            Event(
                event_id=f"e{f}-{n}",
                ts=start + timedelta(minutes=f * per_file + n),
                page_id="page",
                customer_id=f"c{n % 9}",
                campaign_id=("a", "b")[n % 2],
                event="welcome_sent",
            )
            for n in range(per_file)
        ]
        first = first or events[0]
        write_events(store, events, f"{writer}-{f:08d}")
    write_events(store, [first], f"{writer}-{files:08d}")


def distinct_and_total(data: Path) -> tuple[int, int]:
    return (
        duckdb.connect()
        .execute(f"select count(distinct event_id), count(*) from read_parquet('{data}/events/*/*.parquet')")
        .fetchone()
    )


def test_compaction_merges_a_day_into_one_sorted_file(tmp_path):
    data = tmp_path / "data"
    write_day(data, files=5, per_file=40)
    assert len(list(data.glob("events/*/*.parquet"))) == 6
    assert distinct_and_total(data) == (200, 201)

    assert compact(str(data), grace_s=0) == {DAY: 6}

    [merged] = data.glob("events/*/*.parquet")
    assert merged.name.startswith("compacted-")
    assert distinct_and_total(data) == (200, 200)  # the duplicate is gone too
    table = pq.read_table(merged)
    columns = (table.column(c).to_pylist() for c in ("campaign_id", "customer_id", "ts"))
    keys = list(zip(*columns, strict=True))
    assert keys == sorted(keys)


def test_a_reader_during_compaction_always_sees_every_event_once(tmp_path):
    data = tmp_path / "data"
    write_day(data, files=8, per_file=300)
    seen: list[int] = []
    done = threading.Event()

    def reader() -> None:
        connection = duckdb.connect()
        while not done.is_set():
            # Readers deduplicate by event_id, as analytics does.
            files = f"{data}/events/*/*.parquet"
            query = f"select count(*) from (select distinct event_id from read_parquet('{files}'))"
            [(count,)] = connection.execute(query).fetchall()
            seen.append(count)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            compact(str(data))
            write_day(data, files=2, per_file=300)  # new files arrive; the next run merges them in
    finally:
        done.set()
        thread.join()
    assert len(seen) > 3
    assert set(seen) == {2400}
    # The replaced files go once no reader can still be listing them.
    compact(str(data), grace_s=0)
    assert len(list(data.glob("events/*/*.parquet"))) == 2  # one per day
    assert distinct_and_total(data) == (2400, 2400)


def test_replaced_files_stay_for_the_grace_period(tmp_path):
    data = tmp_path / "data"
    write_day(data, files=3, per_file=10)
    assert compact(str(data)) == {DAY: 4}
    assert len(list(data.glob("events/*/*.parquet"))) == 5  # merged + the four it replaces
    assert compact(str(data)) == {DAY: 0}  # already merged: nothing new to do
    assert distinct_and_total(data)[0] == 30


def test_only_days_over_for_a_whole_day_are_compacted(tmp_path):
    # Today is still written to, and so may yesterday be by a flusher catching up after midnight.
    data = tmp_path / "data"
    store = FileStore(str(data))
    now = datetime.now(UTC)
    days = {"today": now, "yesterday": now - timedelta(days=1), "before": now - timedelta(days=2)}
    for name, ts in days.items():
        for n in range(2):
            event = Event(
                event_id=f"{name}{n}",
                ts=ts,
                page_id="p",
                customer_id="c",
                campaign_id="a",
                event="welcome_sent",
            )
            write_events(store, [event], f"writer-{name}{n}")

    assert compact(str(data), grace_s=0) == {days["before"].date(): 2}
    files_per_day = [len(list(data.glob(f"events/event_date={ts.date()}/*.parquet"))) for ts in days.values()]
    assert files_per_day == [2, 2, 1]


def test_compact_command_merges_closed_days(tmp_path):
    data = tmp_path / "data"
    write_day(data, files=3, per_file=10)
    result = subprocess.run(
        [sys.executable, "-m", "bot", "compact", "--data", str(data), "--grace", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "2026-03-01: 4 files merged into one" in result.stdout
    assert len(list(data.glob("events/*/*.parquet"))) == 1


def test_compact_command_reads_the_store_from_the_environment_without_the_platforms_secrets(tmp_path):
    data = tmp_path / "data"
    write_day(data, files=2, per_file=10)
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PROMOBOT_APP_SECRET", "PROMOBOT_VERIFY_TOKEN", "PROMOBOT_PAGE_TOKEN")
    }
    result = subprocess.run(
        [sys.executable, "-m", "bot", "compact", "--grace", "0"],
        cwd=REPO,
        env={**environment, "PROMOBOT_DATA": str(data)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert len(list(data.glob("events/*/*.parquet"))) == 1


def test_a_day_with_files_of_earlier_versions_is_merged_into_one_of_this_versions_schema(tmp_path):
    # Given a day written partly by this version and partly by two earlier ones (their own files, one
    # conversation each wrote with its own code): both kept the platform's message ids, the older kept a
    # receipt's watermark in its detail.
    data = tmp_path / "data"
    write_day(data, files=2, per_file=5)
    previous = REPO / "tests" / "data" / "previous_versions"
    for writer, version in (("0123456789ab", "f06ab7d"), ("0123456789ac", "72a54e4")):
        shutil.copy(
            previous / f"{version}.parquet", data / "events" / f"event_date={DAY}" / f"{writer}-7.parquet"
        )

    # When the day is compacted
    assert compact(str(data), grace_s=0) == {DAY: 5}

    # Then the merged file has this version's schema and every event; the message ids are digests, the
    # receipts' watermarks are in their column.
    [merged] = data.glob("events/*/*.parquet")
    assert pq.read_schema(merged) == FILE_SCHEMA
    rows = {row["event_id"]: row for row in pq.read_table(merged).to_pylist()}
    assert len(rows) == 21  # ten of this version (one of them delivered twice), eleven of the conversation
    sends = {row["event"]: row for row in rows.values() if row["event"] in ("welcome_sent", "coupon_sent")}
    assert sends["welcome_sent"]["message_digest"] == message_digest(
        "m_qr6GPBlzTU4jqP0PBqaIoIAcfn2p3T7uiO5jm0L_PMTKMJhEIUGFkEKQBhGkpCnPXVZNsYdkN7A2Sel0dOz_Iw"
    )
    delivered = sorted((r for r in rows.values() if r["event"] == "message_delivered"), key=lambda r: r["ts"])
    assert [r["message_digest"] for r in delivered] == [
        sends[name]["message_digest"] for name in ("welcome_sent", "coupon_sent")
    ]
    [read] = [row for row in rows.values() if row["event"] == "message_read"]
    assert (read["watermark"], read["detail"]) == (delivered[1]["watermark"], None)
    assert {rows[f"e0-{n}"]["message_digest"] for n in range(5)} == {None}
