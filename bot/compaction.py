"""Compaction: each closed day's event files merged into one, `python -m bot compact`."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import PurePosixPath

import pyarrow as pa

from bot.events import PARTITION_COLUMN
from bot.store import EVENTS_DIR, FileStore, conform_table, deduplicate, parquet_bytes, partition_dir

log = logging.getLogger(__name__)


# Readers list a day's files, then open them: a file deleted in between fails their query. So compaction
# only records which files its merged file replaces (in a manifest outside the `*.parquet` glob) and deletes
# them on a later run, once every reader that could have listed them is long done. Until then a reader sees
# those events twice, and deduplicates them by event_id as every reader must.
DEFAULT_GRACE_S = 600.0


def compact_day(files: FileStore, day: date, *, grace_s: float = DEFAULT_GRACE_S) -> int:
    """Merge one day's files into one, sorted; returns how many files the new one replaces (0: none)."""
    folder = partition_dir(day)
    superseded: set[str] = set()
    for manifest in files.list_manifests(folder):
        record = json.loads(files.read_bytes(manifest))
        inputs = [f"{folder}/{name}" for name in record["replaced"]]
        if time.time() - record["at"] >= grace_s:
            for relative in inputs:
                files.delete(relative, missing_ok=True)
            files.delete(manifest, missing_ok=True)
        else:
            superseded.update(inputs)
    inputs = [relative for relative in files.list(folder) if relative not in superseded]
    if len(inputs) < 2:
        return 0
    tables = [conform_table(files.read_table(relative)) for relative in inputs]
    merged = deduplicate(pa.concat_tables(tables))
    token = uuid.uuid4().hex[:12]
    name = f"compacted-{token}.parquet"
    files.put(f"{folder}/{name}", parquet_bytes(merged))
    replaced = [PurePosixPath(relative).name for relative in inputs]
    manifest_json = json.dumps({"merged": name, "replaced": replaced, "at": time.time()}).encode()
    files.put(f"{folder}/_compaction-{token}.json", manifest_json)
    if grace_s <= 0:
        compact_day(files, day, grace_s=0)  # nothing to wait for: delete the replaced files now
    log.info("compacted %d files of %s into %s (%d events)", len(inputs), day, name, merged.num_rows)
    return len(inputs)


def closed_days(files: FileStore, today: date | None = None) -> list[date]:
    """Days with events that have been over (in UTC) for a whole day.

    No writer adds to them in the normal course: events wait in the transactional store only until the
    flusher's next round, seconds.
    """
    today = today or datetime.now(UTC).date()
    days = set()
    for relative in files.list(EVENTS_DIR):
        folder = PurePosixPath(relative).parent.name
        if folder.startswith(f"{PARTITION_COLUMN}="):
            try:
                days.add(date.fromisoformat(folder.split("=", 1)[1]))
            except ValueError:
                continue
    return sorted(d for d in days if d < today - timedelta(days=1))


def compact(
    data: str, days: Iterable[date] | None = None, *, grace_s: float = DEFAULT_GRACE_S
) -> dict[date, int]:
    """Compact the given days (default: every closed day); returns files replaced per day."""
    files = FileStore(data)
    chosen = closed_days(files) if days is None else days
    return {day: compact_day(files, day, grace_s=grace_s) for day in chosen}


def compact_command(data: str | None, day: str | None, grace_s: float = DEFAULT_GRACE_S) -> int:
    """`python -m bot compact`: merge each closed day's files (or one day's) into one file."""
    from bot.config import ConfigError
    from bot.startup import command_settings

    try:
        data = data or command_settings().data
    except ConfigError as exc:
        print(f"promobot: {exc}", flush=True)
        return 2
    try:
        days = None if day is None else [date.fromisoformat(day)]
    except ValueError:
        print(f"promobot: --day {day!r} is not a date (YYYY-MM-DD)", flush=True)
        return 2
    results = compact(data, days, grace_s=grace_s)
    merged = {d: n for d, n in results.items() if n}
    for d, n in merged.items():
        print(f"{d}: {n} files merged into one")
    if not merged:
        print("nothing to compact")
    return 0
