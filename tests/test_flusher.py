"""The flusher (bot.flusher): events move from the transactional store to Parquet partitions, each once.

Every test runs on SQLite and on PostgreSQL; those about where files land also on a local directory and on S3
(a moto server on loopback).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import boto3
import pytest

import analytics
from bot.database import SEEN_RETENTION, Database
from bot.events import Event, detail_json
from bot.facts import EventName
from bot.flow import plan_replies
from bot.flusher import Flusher, FlushError, flush_once
from bot.store import FileStore
from tests.support import builders
from tests.support.builders import BOT_T0, Clock
from tests.support.paths import REPO
from tests.support.stores import opened

PAGE, CAMPAIGN = builders.PAGE, builders.CAMPAIGN
# The platform's time of the customers' actions: the first ones on the evening of one UTC day, the later ones
# past midnight, on the next.
PLATFORM_T0 = datetime(2026, 3, 14, 23, 59, 50, tzinfo=UTC)
DAY_ONE, DAY_TWO = date(2026, 3, 14), date(2026, 3, 15)
DEADLINE_S = 30.0


@pytest.fixture
def database(database_url: str | None, tmp_path: Path) -> Iterator[Database]:
    with opened(database_url, tmp_path / "state") as database:
        yield database


@pytest.fixture(params=["local", "s3"])
def data(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the partitions go: a local directory, or a prefix in a fresh bucket."""
    if request.param == "local":
        return str(tmp_path / "data")
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    bucket = request.node.name.replace("_", "-").replace("[", "-").replace("]", "")[-50:].strip("-").lower()
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/shop"


customer_event = functools.partial(builders.customer_event, start=PLATFORM_T0)


def webhook(customer: str, n: int) -> list[Event]:
    """A Get Started click, and a read receipt in the same notification."""
    return [
        customer_event(customer, n, detail=detail_json(trigger="postback")),
        customer_event(customer, n + 1, EventName.MESSAGE_READ, watermark=1773532790000 + n * 1000),
    ]


def record(database: Database, events: list[Event]) -> None:
    replies = [reply for event in events for reply in plan_replies(event)]
    asyncio.run(database.record(events, replies))


def stored(files: FileStore) -> dict[str, list[str]]:
    """Every visible file's event ids, by the file's path (read directly, not deduplicated)."""
    return {
        relative: files.read_table(relative).column("event_id").to_pylist()
        for relative in files.list("events")
    }


def stored_ids(files: FileStore) -> list[str]:
    return sorted(event_id for found in stored(files).values() for event_id in found)


def day_and_name(relative: str) -> tuple[str, str]:
    *_, folder, name = relative.split("/")
    return folder, name


# -- events reach their partitions ---------------------------------------------------------------------------


def test_recorded_events_end_up_in_their_day_partitions_each_once(database: Database, data: str) -> None:
    events = [event for n in range(0, 20, 2) for event in webhook(f"c{n}", n)]  # 23:59:50 to 00:00:09
    record(database, events)
    files = FileStore(data)

    assert flush_once(database, files, limit=7) == len(events)

    files_by_path = stored(files)
    ids = [event_id for found in files_by_path.values() for event_id in found]
    assert Counter(ids) == Counter(event.event_id for event in events)
    assert {day_and_name(path)[0] for path in files_by_path} == {
        f"event_date={DAY_ONE}",
        f"event_date={DAY_TWO}",
    }
    assert all(day_and_name(path)[1].startswith(f"{database.store_id}-") for path in files_by_path)
    read_back = analytics.open(data).sql("select event_id, event_date from raw_events order by event_id")
    expected = sorted((event.event_id, event.ts.date()) for event in events)
    assert list(zip(*read_back.to_pydict().values(), strict=True)) == expected
    assert database.pending_batches() == []
    assert database.next_batch(7) is None
    assert flush_once(database, files, limit=7) == 0


# -- a crash between writing a file and `flushed` ------------------------------------------------------------


FLUSH_AND_DIE = """
import os, signal, sys
from pathlib import Path
from bot.database import SEEN_RETENTION, Database
from bot.flusher import flush_once
from bot.store import FileStore


def die_when_flushed_is_called(frame, event, arg):
    # Observes the real call, changes nothing: the process dies as it enters Database.flushed.
    in_database = frame.f_globals["__name__"] == "bot.database"
    if event == "call" and in_database and frame.f_code.co_name == "flushed":
        os.kill(os.getpid(), signal.SIGKILL)


database = Database.open(sys.argv[1] or None, Path(sys.argv[2]))
sys.setprofile(die_when_flushed_is_called)
flush_once(database, FileStore(sys.argv[3]), int(sys.argv[4]))
"""


def test_a_flusher_killed_between_writing_and_flushed_is_followed_by_the_same_files_and_no_second_row(
    database_url: str | None, database: Database, data: str, tmp_path: Path
) -> None:
    early = [event for n in range(0, 20, 2) for event in webhook(f"c{n}", n)]  # one batch, two days
    record(database, early)
    files = FileStore(data)

    died = subprocess.run(
        [sys.executable, "-c", FLUSH_AND_DIE, database_url or "", str(tmp_path / "state"), data, "1000"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
        timeout=DEADLINE_S * 2,
    )
    assert died.returncode == -9, died.stderr
    left = stored(files)
    assert sorted(day_and_name(path)[0] for path in left) == [
        f"event_date={DAY_ONE}",
        f"event_date={DAY_TWO}",
    ]
    (pending,) = database.pending_batches()  # the crash left the batch in the database
    first_copies = {path: os.stat(files.path(path)).st_ino for path in left} if files.is_local else {}
    late = webhook("c9", 30)  # events that arrive after the crash
    record(database, late)

    assert flush_once(database, FileStore(data), limit=1000) == len(early) + len(late)

    files_by_path = stored(files)
    assert set(left) < set(files_by_path)  # the batch's files, under the same names, and the late batch's
    assert all(day_and_name(path)[1] == f"{database.store_id}-{pending.number:08d}.parquet" for path in left)
    if files.is_local:  # written again, not left as they were
        assert all(os.stat(files.path(path)).st_ino != inode for path, inode in first_copies.items())
    rows = [event_id for found in files_by_path.values() for event_id in found]
    assert len(rows) == len(early) + len(late)
    assert Counter(rows) == Counter(event.event_id for event in early + late)
    assert database.pending_batches() == []
    assert database.next_batch(1000) is None


# -- durability of new partitions ----------------------------------------------------------------------------


def test_a_new_partition_directory_is_fsynced_into_its_parent(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record(database, webhook("c1", 0))  # both events on DAY_ONE
    data = tmp_path / "data"
    (data / "events").mkdir(parents=True)
    # Which paths the operating system is asked to fsync: the call itself still goes through.
    synced: list[Path] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)

    flush_once(database, FileStore(str(data)), limit=100)

    partition = data / "events" / f"event_date={DAY_ONE}"
    (file,) = partition.glob("*.parquet")
    assert synced.index(data / "events") < synced.index(partition)  # its name, before the file's in it
    assert file.parent == partition
    assert not any(path.name.endswith(".parquet") for path in synced)  # fsynced under its temporary name


# -- failures ------------------------------------------------------------------------------------------------


def test_a_failing_file_store_keeps_the_batch_for_the_next_round(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "events").write_text("not a directory")  # the partitions cannot be made (as a full disk would)
    events = webhook("c1", 0)
    record(database, events)
    files = FileStore(str(data))

    with pytest.raises(FlushError, match=r"^batch \d+ \(2 events\) could not be written to "):
        flush_once(database, files, limit=100)
    (kept,) = database.pending_batches()
    assert kept.events == tuple(events)

    with caplog.at_level(logging.ERROR, "bot.flusher"), Flusher(database, files, interval_s=3600) as flusher:
        flusher.flush_soon()
        wait_for(lambda: flusher.last_error is not None)
        assert "could not be written" in caplog.text
        assert database.pending_batches() == [kept]
        (data / "events").unlink()  # the disk has room again
        flusher.flush_soon()
        wait_for(lambda: flusher.last_error is None)

    assert stored_ids(files) == sorted(event.event_id for event in events)
    assert database.pending_batches() == []


def test_close_flushes_what_came_since_the_last_round(database: Database, tmp_path: Path) -> None:
    files = FileStore(str(tmp_path / "data"))
    flusher = Flusher(database, files, interval_s=3600).start()
    record(database, webhook("c1", 0))

    flusher.close()

    assert stored_ids(files) == ["m_c1_0", "m_c1_1"]


def test_a_round_forgets_seen_marks_past_their_retention(database_url, tmp_path: Path) -> None:
    clock = Clock(BOT_T0)
    database = Database.open(database_url, tmp_path / "state", clock=clock)
    record(database, webhook("c1", 0))
    clock.now += SEEN_RETENTION + timedelta(hours=1)
    record(database, webhook("c2", 10))  # still recent when the round runs

    Flusher(database, FileStore(str(tmp_path / "data")), interval_s=3600).close()

    again = asyncio.run(database.record(webhook("c1", 0) + webhook("c2", 10), []))
    database.close()
    assert [event.customer_id for event in again] == ["c1", "c1"]  # a redelivery that late counts anew


def wait_for(condition: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)
