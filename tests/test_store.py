"""Event files: the codec, Parquet partitions made visible whole, and files earlier versions wrote."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bot.events import FILE_SCHEMA, Event, from_table, message_digest
from bot.store import FileStore, conform_table, deduplicate, write_events
from tests.support.builders import numbered_event
from tests.support.paths import REPO

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(n: int, ts: datetime = T0, **columns: object) -> Event:
    return numbered_event(n, ts, **columns)


def stored(data: Path) -> list[tuple]:
    """(event_id, rows) for every stored event, read the way analytics reads them."""
    files = f"{data}/events/*/*.parquet"
    if not list(data.glob("events/*/*.parquet")):
        return []
    query = f"select event_id, count(*) from read_parquet('{files}') group by 1 order by 1"
    return duckdb.connect().execute(query).fetchall()


def read_back(data: Path) -> list[Event]:
    tables = [conform_table(pq.read_table(path)) for path in sorted(data.glob("events/*/*.parquet"))]
    return sorted(from_table(pa.concat_tables(tables)), key=lambda e: e.event_id)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_written_events_are_read_back_as_they_were(data):
    # Given events using every column, with digests and watermarks at the ends of int64
    events = [
        event(1, variant="b", button="spring-sale|b|yes", event="coupon_requested", source="till"),
        event(2, event="coupon_sent", message_digest=-(2**63)),
        event(3, event="message_delivered", message_digest=2**63 - 1, watermark=1_772_366_400_700),
        event(4, event="send_failed", detail=json.dumps({"code": 551, "reason": "unavailable \ufffd"})),
    ]

    # When they are written and read back
    assert write_events(FileStore(str(data)), events, "writer-00000001") == 1

    # Then nothing was lost or changed on the way
    assert read_back(data) == events


def test_files_carry_the_schema_zstd_and_utc_microseconds(data):
    write_events(FileStore(str(data)), [event(1)], "writer-00000001")

    [path] = data.glob("events/event_date=2026-03-01/writer-00000001.parquet")
    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow == FILE_SCHEMA
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    query = f"select ts, event_date from read_parquet('{path}', hive_partitioning=true)"
    row = duckdb.connect().execute(query).fetchone()
    assert row[0] == T0 + timedelta(seconds=1)
    assert row[1] == date(2026, 3, 1)


def test_rows_are_sorted_so_each_customers_journey_sits_together(data):
    events = [event(n, campaign_id=("b", "a")[n % 2]) for n in reversed(range(60))]

    write_events(FileStore(str(data)), events, "writer-00000001")

    [path] = data.glob("events/*/*.parquet")
    table = pq.read_table(path)
    keys = list(
        zip(*(table.column(c).to_pylist() for c in ("campaign_id", "customer_id", "ts")), strict=True)
    )
    assert keys == sorted(keys)


def test_events_around_utc_midnight_land_in_their_own_days(data):
    midnight = datetime(2026, 3, 2, tzinfo=UTC)
    late = event(1, ts=midnight - timedelta(microseconds=1) - timedelta(seconds=1))
    early = event(2, ts=midnight - timedelta(seconds=2))  # 00:00:00 exactly, after + n seconds
    local = event(3, ts=datetime.fromisoformat("2026-03-02T00:29:57+01:00"))  # 23:29:57 UTC on March 1

    assert write_events(FileStore(str(data)), [late, early, local], "writer-00000001") == 2

    rows = (
        duckdb.connect()
        .execute(
            "select event_id, event_date, ts "
            f"from read_parquet('{data}/events/*/*.parquet', hive_partitioning=true) order by event_id"
        )
        .fetchall()
    )
    assert [(r[0], r[1]) for r in rows] == [
        ("e1", date(2026, 3, 1)),
        ("e2", date(2026, 3, 2)),
        ("e3", date(2026, 3, 1)),
    ]
    assert rows[0][2] == midnight - timedelta(microseconds=1)
    assert rows[1][2] == midnight


def test_writing_under_the_same_name_again_replaces_the_files(data):
    # As a flusher that died before forgetting its batch writes the batch again.
    files = FileStore(str(data))
    write_events(files, [event(n) for n in range(10)], "writer-00000001")

    write_events(files, [event(n) for n in range(10)], "writer-00000001")

    assert stored(data) == sorted((f"e{n}", 1) for n in range(10))


def test_two_writers_share_one_store_and_readers_keep_one_row_per_event(data):
    files = FileStore(str(data))
    write_events(files, [event(n) for n in range(0, 10, 2)], "a-00000001")
    write_events(files, [event(n) for n in range(1, 10, 2)], "b-00000001")
    write_events(files, [event(4, customer_id="redelivered")], "b-00000002")  # a redelivered event

    names = [Path(relative).name for relative in files.list("events")]
    assert names == ["a-00000001.parquet", "b-00000001.parquet", "b-00000002.parquet"]
    table = pa.concat_tables(files.read_table(p) for p in files.list("events"))
    kept = deduplicate(table)
    assert sorted(kept.column("event_id").to_pylist()) == sorted(f"e{n}" for n in range(10))
    [e4] = [row for row in kept.to_pylist() if row["event_id"] == "e4"]
    assert e4["customer_id"] == "c4"  # the first row of an id is the one kept


def test_no_events_write_no_files(data):
    assert write_events(FileStore(str(data)), iter([]), "writer-00000001") == 0
    assert not data.exists()


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_a_name_that_is_no_plain_file_name_is_refused(data, name):
    with pytest.raises(ValueError, match="must be a plain name"):
        write_events(FileStore(str(data)), [event(1)], name)
    assert not data.exists()


def test_listing_shows_only_visible_parquet_files(data):
    files = FileStore(str(data))
    write_events(files, [event(1)], "writer-00000001")
    folder = data / "events" / "event_date=2026-03-01"
    (folder / ".writer-00000002.parquet.1a2b3c4d.tmp").write_bytes(b"half a file")
    (folder / ".hidden.parquet").write_bytes(b"")
    (folder / "_compaction-0123.json").write_bytes(b"{}")

    assert files.list("events") == ["events/event_date=2026-03-01/writer-00000001.parquet"]
    assert files.list("no-such-folder") == []


# -- a full disk ---------------------------------------------------------------------------------------------


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {result.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "size=64k")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_file_that_does_not_fit_is_refused_and_leaves_nothing_behind(small_disk):
    # Given a disk that fills up while files are written (random details: zstd cannot shrink them)
    files = FileStore(str(small_disk))
    written, refusal = [], None
    for n in range(100):
        try:
            write_events(files, [event(n, detail=json.dumps(os.urandom(3000).hex()))], f"w-{n:08d}")
        except OSError as exc:
            refusal = exc
            break
        written.append(f"e{n}")

    # Then the write that did not fit failed loudly, left no half file nor temporary behind, and every file
    # written before it is whole
    assert refusal is not None
    assert "No space left on device" in str(refusal)
    assert written, "the disk was full before the first file"
    names = sorted(path.name for path in small_disk.rglob("*") if path.is_file())
    assert names == [f"w-{n:08d}.parquet" for n in range(len(written))]
    assert [e.event_id for e in read_back(small_disk)] == sorted(written)


# -- what earlier versions left ------------------------------------------------------------------------------
# tests/data/previous_versions holds one conversation as two earlier versions wrote it, with their own code
# (see write.py there): the Parquet file each version's flusher made. Both kept the platform's message ids
# (`message_id`); f06ab7d also kept receipts' watermarks inside `detail` and has no `watermark` column.

PREVIOUS = REPO / "tests" / "data" / "previous_versions"
VERSIONS = ["f06ab7d", "72a54e4"]
WELCOME_ID = "m_qr6GPBlzTU4jqP0PBqaIoIAcfn2p3T7uiO5jm0L_PMTKMJhEIUGFkEKQBhGkpCnPXVZNsYdkN7A2Sel0dOz_Iw"
COUPON_SHOWN_AT = 1_772_366_420_700  # the platform's time of the coupon message: delivered and read up to it


@pytest.mark.parametrize("version", VERSIONS)
def test_files_an_earlier_version_wrote_are_read_with_digests_of_its_message_ids(version):
    # Given the file an earlier version wrote
    raw = pq.read_table(PREVIOUS / f"{version}.parquet")
    assert "message_id" in raw.column_names
    assert "message_digest" not in raw.column_names

    # When it is read as this version reads files
    table = conform_table(raw)
    events = {e.event_id: e for e in from_table(table)}

    # Then it has this version's schema, every message id it kept is that id's digest, and each receipt's
    # watermark is in its column
    assert table.schema == FILE_SCHEMA
    ids = dict(zip(raw.column("event_id").to_pylist(), raw.column("message_id").to_pylist(), strict=True))
    assert {key: e.message_digest for key, e in events.items()} == {
        key: message_digest(mid) if mid else None for key, mid in ids.items()
    }
    by_name = {str(e.event): e for e in events.values()}
    assert by_name["welcome_sent"].message_digest == message_digest(WELCOME_ID)
    delivered = sorted((e for e in events.values() if e.event == "message_delivered"), key=lambda e: e.ts)
    assert [e.message_digest for e in delivered] == [
        by_name["welcome_sent"].message_digest,
        by_name["coupon_sent"].message_digest,
    ]
    assert (by_name["message_read"].watermark, by_name["message_read"].detail) == (COUPON_SHOWN_AT, None)
    assert (delivered[1].watermark, delivered[1].detail) == (COUPON_SHOWN_AT, None)
    assert json.loads(by_name["send_failed"].detail)["code"] == 551
    assert by_name["conversation_started"].detail is not None  # a detail that is no watermark stays
