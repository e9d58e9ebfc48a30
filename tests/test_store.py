"""The event store: durable appends, atomic Parquet partitions, crash replay, shared stores, bad disks."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from bot.events import FILE_SCHEMA, Event, message_digest
from bot.store import EventLog, StoreError, event_row
from bot.wal import Segment, SyncProcess, WriteAheadLog, encode_rows, list_segments, read_records
from tests.conftest import REPO

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(n: int, ts: datetime = T0, **overrides) -> Event:
    values = dict(
        event_id=f"e{n}",
        ts=ts + timedelta(seconds=n),
        page_id="page",
        customer_id=f"c{n % 7}",
        campaign_id="spring-sale",
        event="welcome_sent",
    )
    values.update(overrides)
    return Event(**values)


def stored(data: Path) -> list[tuple]:
    """(event_id, rows) for every stored event, read the way analytics reads them."""
    files = f"{data}/events/*/*.parquet"
    if not list(data.glob("events/*/*.parquet")):
        return []
    query = f"select event_id, count(*) from read_parquet('{files}') group by 1 order by 1"
    return duckdb.connect().execute(query).fetchall()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def open_log(data: Path, wal: str = "wal", **options) -> EventLog:
    return EventLog.open(str(data), data.parent / wal, **options)


def test_appended_events_are_readable_after_close(data):
    with open_log(data) as log:
        log.append_blocking([event(n) for n in range(100)])
    assert stored(data) == sorted((f"e{n}", 1) for n in range(100))


def test_files_carry_the_schema_zstd_and_utc_microseconds(data):
    with open_log(data) as log:
        log.append_blocking([event(1)])
    [path] = data.glob("events/event_date=2026-03-01/*.parquet")
    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow == FILE_SCHEMA
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    query = f"select ts, event_date from read_parquet('{path}', hive_partitioning=true)"
    row = duckdb.connect().execute(query).fetchone()
    assert row[0] == T0 + timedelta(seconds=1)
    assert row[1] == date(2026, 3, 1)


def test_append_returns_only_once_the_events_are_in_the_log(data):
    log = open_log(data, flush_age_s=3600)
    asyncio.run(log.append([event(1), event(2)]))
    # Not flushed yet, but already durable: a copy of the log directory taken now replays them.
    copy = data.parent / "wal-copy"
    shutil.copytree(data.parent / "wal", copy, ignore=shutil.ignore_patterns("LOCK"))
    assert stored(data) == []
    with EventLog.open(str(data.parent / "other"), copy) as replayed:
        assert [e.event_id for e in replayed.recent(T0)] == ["e1", "e2"]
    log.close()


def test_flush_happens_when_the_age_threshold_is_reached(data):
    with open_log(data, flush_age_s=0.1) as log:
        log.append_blocking([event(1)])
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while not stored(data) and datetime.now(UTC) < deadline:
            asyncio.run(asyncio.sleep(0.02))
        assert stored(data) == [("e1", 1)]


def test_flush_happens_when_the_size_threshold_is_reached(data):
    with open_log(data, flush_bytes=2048, flush_age_s=3600) as log:
        for n in range(60):
            log.append_blocking([event(n)])
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while not stored(data) and datetime.now(UTC) < deadline:
            asyncio.run(asyncio.sleep(0.02))
        assert stored(data), "no file was flushed although the segment outgrew flush_bytes"


@pytest.mark.parametrize("threshold", ["size", "age"])
def test_appends_from_an_event_loop_are_flushed_when_the_segment_is_full_or_old(data, threshold):
    options = {"flush_bytes": 2048, "flush_age_s": 3600} if threshold == "size" else {"flush_age_s": 0.2}

    async def run(log: EventLog) -> None:
        for n in range(60 if threshold == "size" else 1):
            await log.append([event(n)])

    with open_log(data, **options) as log:
        asyncio.run(run(log))
        deadline = time.monotonic() + 10
        while not stored(data) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stored(data), f"no file was flushed although the segment passed its {threshold} threshold"


def test_concurrent_appends_are_all_recorded(data):
    async def run(log: EventLog) -> None:
        await asyncio.gather(*(log.append([event(n)]) for n in range(500)))

    with open_log(data) as log:
        asyncio.run(run(log))
    assert len(stored(data)) == 500


def test_what_an_event_loop_appends_in_one_turn_shares_one_fsync(data, monkeypatch):
    fsyncs = counting_fsyncs(monkeypatch)

    async def run(log: EventLog) -> None:
        await asyncio.gather(*(log.append([event(n)]) for n in range(200)))

    with open_log(data, flush_age_s=3600) as log:
        asyncio.run(run(log))
        assert 1 <= len(fsyncs) <= 2
        assert len(copy_of_log(data)) == 200


def slow_fsyncs(monkeypatch, seconds: float) -> None:
    """From now on every fsync takes `seconds` longer (a slow or busy disk)."""
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        time.sleep(seconds)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)


def test_the_event_loop_goes_on_while_the_disk_is_slow_to_fsync(data, monkeypatch):
    async def run(log: EventLog) -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await log.append([event(1)])
        ticker.cancel()
        return ticks

    with open_log(data, flush_age_s=3600) as log:
        slow_fsyncs(monkeypatch, 0.3)
        ticks = asyncio.run(run(log))
        monkeypatch.undo()
    assert ticks >= 10, "the event loop stood still while the append waited for the disk"
    assert stored(data) == [("e1", 1)]


def test_where_the_platform_has_no_fdatasync_appends_are_fsynced(data, monkeypatch):
    monkeypatch.delattr(os, "fdatasync")  # as on macOS
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real(fd))
    with open_log(data, flush_age_s=3600) as log:
        asyncio.run(log.append([event(1)]))
        log.append_blocking([event(2)])
        assert fsyncs
        assert sorted(copy_of_log(data)) == ["e1", "e2"]


def test_a_failed_fsync_fails_the_appends_waiting_for_it_and_the_next_ones_go_through(data, monkeypatch):
    real = os.fdatasync

    def failing_fdatasync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with open_log(data, flush_age_s=3600) as log:
        monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
        with pytest.raises(StoreError, match=r"fsync failed.*Input/output error"):
            asyncio.run(log.append([event(1)]))
        monkeypatch.setattr(os, "fdatasync", real)
        asyncio.run(log.append([event(2)]))
        assert "e2" in copy_of_log(data)


def sync_processes() -> list[int]:
    """This test process's children that are a write-ahead log's sync process."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        for pid in task.read_text().split():
            try:
                if b"bot.wal" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
            except OSError:
                continue
    return pids


def test_with_a_sync_process_an_event_loops_appends_are_fsynced_by_it_and_it_stops_with_the_log(
    data, monkeypatch
):
    fsyncs_here = counting_fsyncs(monkeypatch)

    async def run(log: EventLog) -> None:
        for n in range(5):
            await asyncio.gather(*(log.append([event(10 * n + k)]) for k in range(10)))
        assert len(sync_processes()) == 1

    with open_log(data, flush_age_s=3600, sync_process=True) as log:
        asyncio.run(run(log))
        assert fsyncs_here == []  # not one from this process: the sync process did them all
        assert len(copy_of_log(data)) == 50
    assert sync_processes() == []
    assert len(stored(data)) == 50


def test_when_the_sync_process_dies_the_appends_are_fsynced_from_a_thread(data, monkeypatch, caplog):
    fsyncs_here = counting_fsyncs(monkeypatch)

    async def run(log: EventLog) -> None:
        await log.append([event(1)])
        [pid] = sync_processes()
        slow = asyncio.create_task(log.append([event(2)]))
        os.kill(pid, signal.SIGKILL)  # whether it answered that fsync or not, the append is durable
        await asyncio.wait_for(slow, 5)
        await asyncio.gather(*(log.append([event(n)]) for n in range(3, 10)))

    with open_log(data, flush_age_s=3600, sync_process=True) as log:
        asyncio.run(run(log))
        assert fsyncs_here  # the thread took over
        assert sorted(copy_of_log(data)) == sorted(f"e{n}" for n in range(1, 10))
    assert "sync process stopped; fsyncing from a thread" in caplog.text


def test_a_sync_process_that_answers_nonsense_is_dropped_and_the_thread_fsyncs(data, monkeypatch, caplog):
    nonsense = "import sys\nfor line in sys.stdin: print('ok?', flush=True)"
    monkeypatch.setattr(SyncProcess, "command", (sys.executable, "-c", nonsense))
    fsyncs_here = counting_fsyncs(monkeypatch)

    async def run(log: EventLog) -> None:
        await asyncio.wait_for(log.append([event(1)]), 5)
        await asyncio.wait_for(asyncio.gather(*(log.append([event(n)]) for n in range(2, 6))), 5)

    with open_log(data, flush_age_s=3600, sync_process=True) as log:
        asyncio.run(run(log))
        assert fsyncs_here
        assert sorted(copy_of_log(data)) == sorted(f"e{n}" for n in range(1, 6))
    assert "sync process answered b'ok?'; not asking it again" in caplog.text
    assert sync_processes() == []


def test_a_sync_process_that_stops_answering_is_dropped_and_the_thread_fsyncs(data, monkeypatch, caplog):
    stuck = "import sys, time\nsys.stdin.readline()\ntime.sleep(3600)"
    monkeypatch.setattr(SyncProcess, "command", (sys.executable, "-c", stuck))
    monkeypatch.setattr(SyncProcess, "patience_s", 0.3)

    async def run(log: EventLog) -> None:
        await asyncio.wait_for(asyncio.gather(*(log.append([event(n)]) for n in range(1, 4))), 5)
        await asyncio.wait_for(log.append([event(4)]), 5)

    with open_log(data, flush_age_s=3600, sync_process=True) as log:
        asyncio.run(run(log))
        assert sorted(copy_of_log(data)) == ["e1", "e2", "e3", "e4"]
    assert "sync process has not answered for 0 s; not asking it again" in caplog.text
    assert sync_processes() == []


def test_a_segment_the_sync_process_finds_gone_was_fsynced_when_it_was_closed(tmp_path):
    closed: list[Segment] = []
    wal = WriteAheadLog(
        tmp_path, first_seq=1, on_segment_closed=closed.append, segment_bytes=1 << 20, segment_age_s=3600
    )
    try:
        wal.write_unsynced(b"record")
        wal.rotate().result()  # closes segment 1, fsyncing it
        closed[0].path.unlink()  # flushed and deleted
        assert wal.synced_by_process(1, errno.ENOENT) is None
        assert wal.synced_by_process(2, 0) is None
        assert "fsync failed" in str(wal.synced_by_process(2, errno.EIO))
    finally:
        wal.close()


def test_a_preallocated_log_writes_over_zeros_prepared_ahead_and_replays_what_it_holds(tmp_path, caplog):
    closed: list[Segment] = []
    wal = WriteAheadLog(
        tmp_path,
        first_seq=1,
        on_segment_closed=closed.append,
        segment_bytes=64 * 1024,
        segment_age_s=3600,
        preallocate=True,
    )
    try:
        first = tmp_path / "000000000001.wal"
        assert first.stat().st_size == 64 * 1024  # zeros, before any record
        for n in range(3):
            wal.sync({wal.write_unsynced(b"record %d" % n)})
        assert first.stat().st_size == 64 * 1024  # written over the zeros, not appended
        assert list(read_records(first)) == [b"record 0", b"record 1", b"record 2"]  # as after a crash
        wal.rotate().result()
        deadline = time.monotonic() + 5
        while not (tmp_path / "spare.wal.tmp").exists():  # the next one is prepared ahead
            assert time.monotonic() < deadline
            time.sleep(0.01)
        wal.sync({wal.write_unsynced(b"record 3")})
        assert list(read_records(tmp_path / "000000000002.wal")) == [b"record 3"]
    finally:
        wal.close()
    assert [segment.seq for segment in closed] == [1, 2]
    assert not (tmp_path / "spare.wal.tmp").exists()
    assert "torn" not in caplog.text


def test_a_segment_ending_in_zeros_after_a_crash_replays_its_records(data):
    with open_log(data, flush_age_s=3600) as log:
        log.append_blocking([event(1), event(2)])
        [segment] = list_segments(data.parent / "wal")
        segment = segment.path
        copy = data.parent / "crashed"
        copy.mkdir()
        # A crash can leave a file longer than what was written into it: zeros.
        (copy / segment.name).write_bytes(segment.read_bytes() + bytes(4096))
    with EventLog.open(str(data.parent / "other"), copy) as replayed:
        assert sorted(e.event_id for e in replayed.recent(T0)) == ["e1", "e2"]


def test_appends_waiting_for_an_fsync_when_the_log_closes_are_answered(data, monkeypatch):
    async def run(log: EventLog) -> None:
        first = asyncio.create_task(log.append([event(1)]))
        await asyncio.sleep(0.05)  # its fsync is under way
        second = asyncio.create_task(log.append([event(2)]))
        await asyncio.sleep(0.05)  # written, waiting for the next fsync
        await asyncio.to_thread(log.close)
        await asyncio.wait_for(first, 5)
        with pytest.raises(StoreError, match="closed"):
            await asyncio.wait_for(second, 5)

    log = open_log(data, flush_age_s=3600)
    slow_fsyncs(monkeypatch, 0.2)
    asyncio.run(run(log))


def test_a_duplicate_id_in_one_flush_is_stored_once(data):
    with open_log(data) as log:
        log.append_blocking([event(1), event(2)])
        log.append_blocking([event(1)])  # a redelivered webhook
    assert stored(data) == [("e1", 1), ("e2", 1)]


def test_a_duplicate_id_in_two_flushes_is_read_once(data):
    with open_log(data) as log:
        log.append_blocking([event(1)])
        log.flush_blocking()
        log.append_blocking([event(1)])
    rows = (
        duckdb.connect()
        .execute(f"select count(distinct event_id), count(*) from read_parquet('{data}/events/*/*.parquet')")
        .fetchone()
    )
    assert rows == (1, 2)  # the store never rewrites a visible file; readers deduplicate by event_id


def test_events_around_utc_midnight_land_in_their_own_days(data):
    midnight = datetime(2026, 3, 2, tzinfo=UTC)
    late = event(1, ts=midnight - timedelta(microseconds=1) - timedelta(seconds=1))
    early = event(2, ts=midnight - timedelta(seconds=2))  # 00:00:00 exactly, after + n seconds
    local = event(3, ts=datetime.fromisoformat("2026-03-02T00:29:57+01:00"))  # 23:29:57 UTC on March 1
    with open_log(data) as log:
        log.append_blocking([late, early, local])
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


def test_two_writers_share_one_store_without_colliding(data):
    with open_log(data, "wal-a") as a, open_log(data, "wal-b") as b:
        assert a.writer_id != b.writer_id
        for n in range(0, 200, 2):
            a.append_blocking([event(n)])
            b.append_blocking([event(n + 1)])
            if n % 50 == 0:
                a.flush_blocking()
                b.flush_blocking()
    assert stored(data) == sorted((f"e{n}", 1) for n in range(200))
    names = [p.name for p in data.glob("events/*/*.parquet")]
    assert len(names) == len(set(names))
    assert {name.split("-")[0] for name in names} == {a.writer_id, b.writer_id}


def test_one_log_directory_refuses_a_second_process(data):
    with open_log(data), pytest.raises(StoreError, match="in use by another process"):
        open_log(data)


def test_writer_id_is_stable_across_restarts_of_one_log(data):
    with open_log(data) as log:
        first = log.writer_id
    with open_log(data) as log:
        assert log.writer_id == first


def test_replay_after_a_crash_between_rename_and_segment_deletion_writes_nothing_twice(data):
    wal = data.parent / "wal"
    log = open_log(data, flush_age_s=3600)
    log.append_blocking([event(n) for n in range(10)])
    [segment] = list_segments(wal)
    saved = segment.path.read_bytes()
    log.close()  # flushes the segment, then deletes it
    # As if the process had died after the Parquet file became visible but before the segment was deleted:
    segment.path.write_bytes(saved)
    with open_log(data) as log:
        log.append_blocking([event(10)])
    assert stored(data) == sorted((f"e{n}", 1) for n in range(11))


@pytest.mark.parametrize("options", [[], ["--sync-process"]], ids=["thread", "sync-process-preallocated"])
def test_kill_9_in_the_middle_of_appends_loses_and_doubles_nothing(data, options):
    wal = data.parent / "wal"
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.store_writer", str(data), str(wal), *options],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged = []
    for line in writer.stdout:
        acknowledged.append(line.strip())
        if len(acknowledged) == 3000:
            break
    writer.send_signal(signal.SIGKILL)
    # Whatever it printed after our last read was acknowledged too.
    acknowledged.extend(line.strip() for line in writer.stdout)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL

    with open_log(data):  # start-up replays what the crash left
        pass
    counts = dict(stored(data))
    missing = [event_id for event_id in acknowledged if event_id not in counts]
    assert missing == []
    assert all(n == 1 for n in counts.values()), "an event was stored twice"


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


def test_a_full_disk_refuses_appends_with_a_clear_error_and_keeps_what_was_acknowledged(small_disk, data):
    log = EventLog.open(str(data), small_disk / "wal", flush_age_s=3600)
    acknowledged = []
    big = "x" * 2000
    refusal = None
    for n in range(1000):
        try:
            log.append_blocking([event(n, detail=big)])
        except StoreError as exc:
            refusal = exc
            break
        acknowledged.append(f"e{n}")
    assert "No space left on device" in str(refusal)
    assert acknowledged, "the disk was full before the first append"
    with pytest.raises(StoreError, match="No space left on device"):
        log.append_blocking([event(5000, detail=big)])  # still refused, never silently dropped
    log.close()  # the acknowledged ones reach the store
    assert [event_id for event_id, _ in stored(data)] == sorted(acknowledged)


def test_a_full_disk_refuses_an_event_loops_appends_too_and_keeps_what_was_acknowledged(small_disk, data):
    async def run(log: EventLog) -> tuple[list[str], StoreError | None]:
        acknowledged = []
        for n in range(1000):
            try:
                await log.append([event(n, detail="x" * 2000)])
            except StoreError as exc:
                return acknowledged, exc
            acknowledged.append(f"e{n}")
        return acknowledged, None

    log = EventLog.open(str(data), small_disk / "wal", flush_age_s=3600)
    acknowledged, refusal = asyncio.run(run(log))
    assert "No space left on device" in str(refusal)
    assert acknowledged, "the disk was full before the first append"
    log.close()
    assert [event_id for event_id, _ in stored(data)] == sorted(acknowledged)


def test_a_disk_without_room_for_a_preallocated_segment_is_appended_to(small_disk):
    wal = WriteAheadLog(
        small_disk,
        first_seq=1,
        on_segment_closed=lambda segment: None,
        segment_bytes=1 << 20,  # more than the disk holds
        segment_age_s=3600,
        preallocate=True,
    )
    try:
        wal.sync({wal.write_unsynced(b"record")})
        assert list(read_records(small_disk / "000000000001.wal")) == [b"record"]
    finally:
        wal.close()


def test_an_unwritable_store_keeps_events_in_the_log_until_it_is_writable_again(tmp_path):
    data = tmp_path / "store"
    _mount_tmpfs(data, "size=1m")
    try:
        log = EventLog.open(str(data), tmp_path / "wal", flush_age_s=3600)
        log.append_blocking([event(1)])
        subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
        with pytest.raises(StoreError, match="Read-only file system"):
            log.flush_blocking()
        with pytest.raises(StoreError):
            log.check()
        subprocess.run(["mount", "-o", "remount,rw", str(data)], check=True)
        log.close()
        assert stored(data) == [("e1", 1)]
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_an_unwritable_log_directory_refuses_to_open(tmp_path):
    wal = tmp_path / "wal"
    _mount_tmpfs(wal, "size=64k,ro")
    try:
        with pytest.raises(StoreError, match="write-ahead log directory"):
            EventLog.open(str(tmp_path / "data"), wal)
    finally:
        subprocess.run(["umount", "-l", str(wal)], check=False)


def test_recent_returns_this_writers_events_from_log_and_files(data):
    with open_log(data) as other:
        other.append_blocking([event(99)])
    with open_log(data, "wal-2") as log:
        log.append_blocking([event(1), event(2)])
        log.flush_blocking()
        log.append_blocking([event(3)])
        assert [e.event_id for e in log.recent(T0 + timedelta(seconds=2))] == ["e2", "e3"]


def test_appending_to_a_closed_log_is_refused(data):
    log = open_log(data)
    log.close()
    with pytest.raises(StoreError, match="closed"):
        log.append_blocking([event(1)])


def copy_of_log(data: Path) -> list[str]:
    """The event ids a copy of the write-ahead log taken now would replay."""
    copy = data.parent / "wal-copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(data.parent / "wal", copy, ignore=shutil.ignore_patterns("LOCK"))
    with EventLog.open(str(data.parent / "other"), copy) as replayed:
        return [e.event_id for e in replayed.recent(T0)]


def counting_fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return calls


def test_append_soon_is_written_within_a_fraction_of_a_second_without_an_fsync_of_its_own(data, monkeypatch):
    log = open_log(data, flush_age_s=3600)
    fsyncs = counting_fsyncs(monkeypatch)
    log.append_soon([event_row(event(1)), event_row(event(2))])
    deadline = time.monotonic() + 5
    while not (replayed := copy_of_log(data)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert replayed == ["e1", "e2"]
    assert fsyncs == []
    log.close()
    assert stored(data) == [("e1", 1), ("e2", 1)]


def test_append_soon_rides_along_with_the_next_commit(data, monkeypatch):
    log = open_log(data, flush_age_s=3600)
    fsyncs = counting_fsyncs(monkeypatch)
    log.append_soon([event_row(event(1))])
    asyncio.run(log.append([event(2)]))  # made durable at once, and the waiting row with it
    assert copy_of_log(data) == ["e1", "e2"]
    assert len(fsyncs) == 1
    log.close()


def test_append_soon_refuses_a_row_of_the_wrong_shape_and_records_nothing(data):
    with open_log(data) as log:
        good = event_row(event(1))
        bad_rows = [
            good[:-1],
            [*good[:1], "not a timestamp", *good[2:]],
            [*good[:6], "no_such_event", *good[7:]],
        ]
        for bad in bad_rows:
            with pytest.raises(ValueError, match="not an event row"):
                log.append_soon([good, bad])
    assert stored(data) == []


def test_append_soon_to_a_closed_log_is_refused(data):
    log = open_log(data)
    log.close()
    with pytest.raises(StoreError, match="closed"):
        log.append_soon([event_row(event(1))])


# -- what earlier versions left -----------------------------------------------------------------------------
# tests/data/previous_versions holds one conversation as two earlier versions wrote it, with their own code
# (see write.py there): a write-ahead log record's rows and the Parquet file their flusher made. Both kept the
# platform's message ids; f06ab7d also kept receipts' watermarks inside `detail` (rows of ten values).

PREVIOUS = REPO / "tests" / "data" / "previous_versions"
VERSIONS = ["f06ab7d", "72a54e4"]
WELCOME_ID = "m_qr6GPBlzTU4jqP0PBqaIoIAcfn2p3T7uiO5jm0L_PMTKMJhEIUGFkEKQBhGkpCnPXVZNsYdkN7A2Sel0dOz_Iw"
COUPON_SHOWN_AT = 1_772_366_420_700  # the platform's time of the coupon message: delivered and read up to it


def previous_rows(version: str) -> list[list]:
    return json.loads((PREVIOUS / f"{version}.rows.json").read_bytes())


def assert_upgraded(events: list[Event], version: str) -> None:
    """The conversation the version wrote, as this version has it: each message id it kept is that id's
    digest, each receipt's watermark is in its column."""
    old = {row[0]: row for row in previous_rows(version)}
    new = {e.event_id: e for e in events if e.event_id in old}
    assert new.keys() == old.keys()
    for event_id, row in old.items():
        assert new[event_id].message_digest == (message_digest(row[8]) if row[8] is not None else None)
    by_name = {str(e.event): e for e in new.values()}
    assert by_name["welcome_sent"].message_digest == message_digest(WELCOME_ID)
    delivered = [e for e in new.values() if e.event == "message_delivered"]
    assert [e.message_digest for e in delivered] == [
        by_name["welcome_sent"].message_digest,
        by_name["coupon_sent"].message_digest,
    ]
    assert (by_name["message_read"].watermark, by_name["message_read"].detail) == (COUPON_SHOWN_AT, None)
    assert (delivered[1].watermark, delivered[1].detail) == (COUPON_SHOWN_AT, None)
    assert json.loads(by_name["send_failed"].detail)["code"] == 551


def stored_digests(path: Path) -> dict[str, int | None]:
    query = f"select event_id, message_digest from read_parquet('{path}')"
    return dict(duckdb.connect().execute(query).fetchall())


@pytest.mark.parametrize("version", VERSIONS)
def test_a_log_an_earlier_version_left_replays_with_digests_of_its_message_ids(tmp_path, version):
    # Given the log record the earlier version wrote, left unflushed when it stopped
    wal = tmp_path / "wal"
    wal.mkdir()
    options = {"segment_bytes": 1 << 20, "segment_age_s": 3600}
    previous = WriteAheadLog(wal, first_seq=1, on_segment_closed=lambda _: None, **options)
    previous.sync({previous.write_unsynced((PREVIOUS / f"{version}.rows.json").read_bytes())})
    previous.close()

    # When this version starts on it, then the events replay, read back and are flushed as this version's
    with EventLog.open(str(tmp_path / "data"), wal) as log:
        assert_upgraded(log.replayed, version)
        assert_upgraded(log.recent(T0), version)
    [path] = (tmp_path / "data").glob("events/*/*.parquet")
    assert pq.read_schema(path) == FILE_SCHEMA
    ids = {row[0]: row[8] for row in previous_rows(version)}
    assert stored_digests(path) == {key: message_digest(mid) if mid else None for key, mid in ids.items()}


@pytest.mark.parametrize("version", VERSIONS)
def test_files_an_earlier_version_wrote_are_read_back_with_digests_of_its_message_ids(data, version):
    # Given a file the earlier version's flusher wrote, among this writer's own
    with open_log(data) as log:
        writer_id = log.writer_id
    folder = data / "events" / "event_date=2026-03-01"
    folder.mkdir(parents=True)
    shutil.copy(PREVIOUS / f"{version}.parquet", folder / f"{writer_id}-00000000.parquet")
    assert "message_id" in pq.read_schema(folder / f"{writer_id}-00000000.parquet").names

    # When this version logs a send of its own and reads its recent events back
    with open_log(data) as log:
        log.append_blocking([event(99, event="coupon_sent", message_digest=message_digest("m_new"))])
        log.flush_blocking()
        recent = log.recent(T0)

    # Then the earlier file's events have digests, and this version's send keeps its own
    assert_upgraded(recent, version)
    assert [e.message_digest for e in recent if e.event_id == "e99"] == [message_digest("m_new")]


def test_rows_of_this_and_earlier_versions_in_one_log_replay_together(tmp_path):
    wal = tmp_path / "wal"
    wal.mkdir()
    options = {"segment_bytes": 1 << 20, "segment_age_s": 3600}
    rows = [*previous_rows("f06ab7d")[:3], *previous_rows("72a54e4")[3:]]
    mine = event(99, event="welcome_sent", message_digest=-(2**63))
    previous = WriteAheadLog(wal, first_seq=1, on_segment_closed=lambda _: None, **options)
    previous.sync({previous.write_unsynced(encode_rows([*rows, event_row(mine)]))})
    previous.close()

    with EventLog.open(str(tmp_path / "data"), wal) as log:
        replayed = {e.event_id: e for e in log.replayed}
    assert replayed["e99"] == mine
    digests = {row[0]: replayed[row[0]].message_digest for row in rows}
    assert digests == {row[0]: message_digest(row[8]) if row[8] else None for row in rows}


def test_append_soon_refuses_a_digest_no_int64_holds(data):
    # A value Parquet's int64 cannot hold would fail the flush of every event logged with it.
    with open_log(data) as log:
        for digest in (2**63, -(2**63) - 1):
            bad = event_row(event(2))
            bad[8] = digest
            with pytest.raises(ValueError, match="not an event row"):
                log.append_soon([event_row(event(1)), bad])
        log.append_soon([event_row(event(3, message_digest=2**63 - 1))])
    assert stored(data) == [("e3", 1)]
