"""The event store: a write-ahead log on local disk, flushed as immutable Parquet partitions.

`EventLog.append` returns once the events are durable in the write-ahead log (bot.wal). A flusher thread turns
each closed log segment into one Parquet file per day, `events/event_date=YYYY-MM-DD/<writer>-<seq>.parquet`,
in a local directory or an `s3://bucket/prefix`, and deletes the segment only once the files are visible.
A file's name is fixed by its segment, so replaying a segment after a crash rewrites the same file with the
same rows: nothing acknowledged is lost, nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bot.events import (
    FILE_SCHEMA,
    PARTITION_COLUMN,
    Event,
    EventError,
    EventName,
    from_table,
    message_digest,
)
from bot.wal import (
    DirectoryLock,
    Segment,
    SyncProcess,
    SyncProcessGone,
    WALError,
    WriteAheadLog,
    decode_rows,
    encode_rows,
    fsync_directory,
    list_segments,
    next_sequence,
    read_records,
)

log = logging.getLogger(__name__)

EVENTS_DIR = "events"
# Rows sorted so that one customer's journey sits together: the funnel queries read them that way, and
# neighbouring rows that share ids and timestamps compress to almost nothing.
SORT_KEYS = [("campaign_id", "ascending"), ("customer_id", "ascending"), ("ts", "ascending")]
_DICTIONARY_COLUMNS = ["page_id", "campaign_id", "variant", "event", "button", "detail"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StoreError(RuntimeError):
    """The store cannot take events (unwritable or full disk, closed log); the events were not recorded."""


# -- where the files live ----------------------------------------------------------------------------------


def open_filesystem(data: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and root path of a store: a local directory or `s3://bucket/prefix`.

    S3 credentials and region come from the standard AWS environment variables; `AWS_ENDPOINT_URL` (or
    `AWS_ENDPOINT_URL_S3`) points at an S3-compatible store instead of AWS.
    """
    if data.startswith("s3://"):
        parts = urlsplit(data)
        options: dict = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            endpoint_parts = urlsplit(endpoint)
            options["endpoint_override"] = endpoint_parts.netloc or endpoint
            options["scheme"] = endpoint_parts.scheme or "https"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        root = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
        return pafs.S3FileSystem(**options), root
    return pafs.LocalFileSystem(), str(Path(data).resolve())


class FileStore:
    """Immutable files under a root, made visible whole: the one way events reach their partitions."""

    def __init__(self, data: str) -> None:
        self.data = data
        self.fs, self.root = open_filesystem(data)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def put(self, relative: str, body: bytes) -> None:
        """Write a file so that readers see all of it or none of it."""
        target = self.path(relative)
        if not self.is_local:
            # An S3 object appears whole when its single PUT (or multipart completion) succeeds.
            with self.fs.open_output_stream(target) as out:
                out.write(body)
            return
        # Locally: a temporary name outside the `*.parquet` glob, fsync, rename, fsync the directory.
        final = Path(target)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp"
        with open(temporary, "wb") as file:
            file.write(body)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, final)
        fsync_directory(final.parent)

    def list(self, relative: str) -> list[str]:
        """Relative paths of the visible `.parquet` files below a folder (none if it does not exist)."""
        selector = pafs.FileSelector(self.path(relative), recursive=True, allow_not_found=True)
        prefix = len(self.root) + 1
        return sorted(
            info.path[prefix:]
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(".")
        )

    def list_manifests(self, relative: str) -> list[str]:
        selector = pafs.FileSelector(self.path(relative), allow_not_found=True)
        prefix = len(self.root) + 1
        return sorted(
            info.path[prefix:]
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.startswith("_compaction-")
        )

    def read_table(self, relative: str) -> pa.Table:
        return pq.read_table(self.path(relative), filesystem=self.fs)

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_file(self.path(relative)) as file:
            return file.read()

    def delete(self, relative: str, *, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path(relative))
        except FileNotFoundError:
            if not missing_ok:
                raise

    def check_writable(self) -> None:
        probe = f"{EVENTS_DIR}/.probe-{secrets.token_hex(4)}"
        self.put(probe, b"")
        self.delete(probe)


def partition_dir(day: date) -> str:
    return f"{EVENTS_DIR}/{PARTITION_COLUMN}={day.isoformat()}"


# -- rows, tables, Parquet ---------------------------------------------------------------------------------

_FIELDS = FILE_SCHEMA.names  # event_id, ts, page_id, customer_id, campaign_id, variant, event, ..., watermark
_TS = _FIELDS.index("ts")


def event_row(event: Event) -> list:
    """An event as the write-ahead log stores it: FILE_SCHEMA's columns in order, ts in µs since the epoch."""
    micros = (event.ts - _EPOCH) // timedelta(microseconds=1)
    return [
        event.event_id,
        micros,
        event.page_id,
        event.customer_id,
        event.campaign_id,
        event.variant,
        str(event.event),
        event.button,
        event.message_digest,
        event.detail,
        event.watermark,
    ]


def row_event(row: Sequence) -> Event:
    """The event a row made by `event_row` holds (its inverse). Raises EventError for a row that is none."""
    if not is_event_row(row):
        raise EventError(f"not an event row: {row!r:.200}")
    event_id, micros, page_id, customer_id, campaign_id, variant, name, button, digest, detail, mark = row
    return Event(
        event_id=event_id,
        ts=_EPOCH + timedelta(microseconds=micros),
        page_id=page_id,
        customer_id=customer_id,
        campaign_id=campaign_id,
        event=name,
        variant=variant,
        button=button,
        message_digest=digest,
        detail=detail,
        watermark=mark,
    )


_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_ROW_TYPES = (str, int, str, str, str, _OPT_STR, str, _OPT_STR, _OPT_INT, _OPT_STR, _OPT_INT)
_INT_COLUMNS = (_FIELDS.index("message_digest"), _FIELDS.index("watermark"))
_INT64 = 1 << 63
_EVENT_NAMES = frozenset(str(name) for name in EventName)


def is_event_row(row: object) -> bool:
    """Whether `row` has the shape `event_row` gives (checked before a row from elsewhere is logged)."""
    return (
        isinstance(row, list)
        and len(row) == len(_ROW_TYPES)
        and all(isinstance(value, kind) for value, kind in zip(row, _ROW_TYPES, strict=True))
        and all(row[index] for index in (0, 2, 3, 4))
        and row[6] in _EVENT_NAMES
        # A value the int64 columns cannot hold would fail the flush of every event logged with it.
        and all(row[index] is None or -_INT64 <= row[index] < _INT64 for index in _INT_COLUMNS)
    )


def rows_to_table(rows: Sequence[Sequence]) -> pa.Table:
    """Rows made by `event_row` (or left in a log by an earlier version) as a table with FILE_SCHEMA."""
    if any(is_earlier_row(row) for row in rows):
        rows = [upgrade_row(row) if is_earlier_row(row) else row for row in rows]
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in _FIELDS]
    arrays = {}
    for name, values in zip(_FIELDS, columns, strict=True):
        field = FILE_SCHEMA.field(name)
        arrays[name] = (
            pa.array(values, type=pa.int64()).cast(field.type)
            if name == "ts"
            else pa.array(values, type=field.type)
        )
    return pa.Table.from_pydict(arrays, schema=FILE_SCHEMA)


# -- what earlier versions wrote ---------------------------------------------------------------------------
# Two earlier versions kept the platform's message id itself (a string) where this one keeps its digest. The
# first also kept a receipt's watermark as the whole of its detail, `{"watermark":ms}`: its log records hold
# rows of ten values, and its Parquet files lack the `watermark` column. The second's rows have eleven values,
# like this version's, with a string where this version has the digest.

_FIRST_ROW_LENGTH = 10
_MESSAGE = _FIELDS.index("message_digest")
_RECEIPTS = frozenset({str(EventName.MESSAGE_READ), str(EventName.MESSAGE_DELIVERED)})
_LEGACY_DETAIL = r'^\{"watermark":(?P<watermark>-?[0-9]+)\}$'
_LEGACY_DETAIL_RE = re.compile(_LEGACY_DETAIL)


def is_earlier_row(row: Sequence) -> bool:
    """Whether `row` is of a log record an earlier version wrote (see `upgrade_row`)."""
    return len(row) == _FIRST_ROW_LENGTH or row[_MESSAGE].__class__ is str


def upgrade_row(row: Sequence) -> list:
    """A row of an earlier version as this version's: a message id becomes its digest, and a receipt's
    watermark moves from its detail to its column."""
    if len(row) == _FIRST_ROW_LENGTH:
        detail = row[9]
        match = _LEGACY_DETAIL_RE.match(detail) if row[6] in _RECEIPTS and isinstance(detail, str) else None
        row = [*row, None] if match is None else [*row[:9], None, int(match["watermark"])]
    message_id = row[_MESSAGE]
    if not isinstance(message_id, str):
        return list(row)
    return [*row[:_MESSAGE], message_digest(message_id), *row[_MESSAGE + 1 :]]


def conform_table(table: pa.Table) -> pa.Table:
    """A stored file's table with FILE_SCHEMA: columns an earlier version did not write read as null, its
    message ids become their digests, and its receipts' watermarks move from `detail` to their column."""
    if "message_id" in table.column_names and "message_digest" not in table.column_names:
        ids = table.column("message_id").to_pylist()
        digests = [message_digest(mid) if mid is not None else None for mid in ids]
        table = table.append_column(FILE_SCHEMA.field("message_digest"), pa.array(digests, pa.int64()))
    missing = [name for name in _FIELDS if name not in table.column_names]
    for name in missing:
        table = table.append_column(
            FILE_SCHEMA.field(name), pa.nulls(table.num_rows, FILE_SCHEMA.field(name).type)
        )
    table = table.select(_FIELDS).cast(FILE_SCHEMA)
    if "watermark" not in missing or table.num_rows == 0:
        return table
    found = pc.extract_regex(table.column("detail"), _LEGACY_DETAIL)
    is_legacy = pc.and_(
        pc.is_in(table.column("event"), pa.array(sorted(_RECEIPTS))), pc.is_valid(found)
    ).fill_null(False)
    legacy_mark = pc.cast(pc.struct_field(found, "watermark"), pa.int64())
    watermark = pc.if_else(is_legacy, legacy_mark, table.column("watermark"))
    detail = pc.if_else(is_legacy, pa.scalar(None, pa.string()), table.column("detail"))
    table = table.set_column(_FIELDS.index("watermark"), FILE_SCHEMA.field("watermark"), watermark)
    return table.set_column(_FIELDS.index("detail"), FILE_SCHEMA.field("detail"), detail)


def parquet_bytes(table: pa.Table) -> bytes:
    """A partition file: rows sorted for the readers, zstd, dictionaries for the repetitive columns."""
    table = table.sort_by(SORT_KEYS)
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=9,
        use_dictionary=_DICTIONARY_COLUMNS,
        # Ids share long prefixes with their neighbours once rows are sorted (a customer's with the row
        # above): store only what differs. Message digests are random and stay plain: a dictionary costs
        # more than the repeats it saves (a delivery's digest, just below its send's, zstd finds anyway).
        column_encoding={name: "DELTA_BYTE_ARRAY" for name in ("event_id", "customer_id")},
        coerce_timestamps="us",
        write_statistics=True,
    )
    return sink.getvalue()


def split_by_day(table: pa.Table) -> dict[date, pa.Table]:
    days = pc.cast(table.column("ts"), pa.date32())
    parts = {}
    for day in pc.unique(days).to_pylist():
        parts[day] = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
    return parts


def deduplicate(table: pa.Table) -> pa.Table:
    """Keep the first row of each event_id."""
    if table.num_rows == 0:
        return table
    indexed = table.append_column("__row", pa.array(range(table.num_rows), pa.int64()))
    first = indexed.group_by("event_id", use_threads=False).aggregate([("__row", "min")])
    keep = pc.sort_indices(first.column("__row_min"))
    return table.take(pc.take(first.column("__row_min"), keep))


# -- the event log -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlushPolicy:
    """When the write-ahead log's current segment becomes Parquet: whichever comes first."""

    max_bytes: int = 8 * 1024 * 1024
    max_age_s: float = 60.0


def _settle(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue  # its caller was cancelled; the events are durable (or not) all the same
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


@dataclass
class _LoopSync:
    """An event loop's fsync under way, and what was written since, waiting for the next."""

    in_flight: bool = False
    waiting: list[tuple[int, list[asyncio.Future[None]]]] = field(default_factory=list)  # (segment, waiters)


class EventLog:
    """Appends events durably, flushes them to Parquet partitions, replays what a crash left."""

    def __init__(
        self,
        files: FileStore,
        wal_dir: Path,
        policy: FlushPolicy,
        writer_id: str | None,
        *,
        sync_process: bool = False,
    ) -> None:
        self.files = files
        self.wal_dir = wal_dir
        self.policy = policy
        try:
            wal_dir.mkdir(parents=True, exist_ok=True)
            self._lock = DirectoryLock(wal_dir)
        except OSError as exc:
            raise StoreError(f"cannot use write-ahead log directory {wal_dir}: {exc}") from exc
        self.writer_id = writer_id or self._load_writer_id()
        self._flush_queue: list[Segment] = []
        self._flush_cond = threading.Condition()
        self._flushing = threading.Lock()  # the flusher thread and flush_blocking never flush at once
        self._flush_errors = 0
        self._stopping = False
        self._closed = False
        self._loop_syncs: dict[asyncio.AbstractEventLoop, _LoopSync] = {}
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="promobot-wal-sync")
        self._sync_process: SyncProcess | None = None
        self._loop_batches: dict[asyncio.AbstractEventLoop, tuple[list, list[asyncio.Future[None]]]] = {}
        self.last_flush_error: BaseException | None = None

        leftovers = list_segments(wal_dir)
        replayed_rows: list = []
        for segment in leftovers:
            # Anything left is from a previous run that stopped before flushing it.
            for record in read_records(segment.path, repair=True):
                replayed_rows.extend(decode_rows(record))
        # What a previous run left unflushed: the events it may have died handling.
        self.replayed: list[Event] = (
            from_table(deduplicate(rows_to_table(replayed_rows))) if replayed_rows else []
        )
        self._flush_queue.extend(leftovers)
        self._drain_flush_queue(raise_errors=False)
        first_seq = next_sequence(wal_dir)
        self._wal = WriteAheadLog(
            wal_dir,
            first_seq=first_seq,
            on_segment_closed=self._segment_closed,
            segment_bytes=policy.max_bytes,
            segment_age_s=policy.max_age_s,
            preallocate=sync_process,
        )
        self._flusher = threading.Thread(target=self._flush_loop, name="promobot-flusher", daemon=True)
        self._flusher.start()
        if sync_process:
            try:
                self._sync_process = SyncProcess(wal_dir)
            except OSError as exc:
                log.error(
                    "cannot start a sync process for the write-ahead log (%s); fsyncing from a thread", exc
                )

    @classmethod
    def open(
        cls,
        data: str = "./data",
        wal_dir: Path | str = Path("data/wal"),
        *,
        flush_bytes: int = FlushPolicy.max_bytes,
        flush_age_s: float = FlushPolicy.max_age_s,
        writer_id: str | None = None,
        sync_process: bool = False,
    ) -> EventLog:
        """Open the log, replaying what a previous run left, and start flushing in the background.

        With `sync_process`, an event loop's appends are fsynced by a small process of the log's own rather
        than a thread (`bot.wal.SyncProcess`), and segments are preallocated: quicker under load, for a server
        that runs for long; not worth a process's start and a segment's zeros for a short run (a Lambda
        invocation).
        """
        policy = FlushPolicy(flush_bytes, flush_age_s)
        return cls(FileStore(data), Path(wal_dir), policy, writer_id, sync_process=sync_process)

    def _load_writer_id(self) -> str:
        # Stable for this log directory across restarts (so replays rewrite the same file names),
        # different for every other log directory (so writers sharing a bucket never collide).
        path = self.wal_dir / "writer-id"
        if path.exists():
            return path.read_text().strip()
        writer_id = uuid.uuid4().hex[:12]
        temporary = path.with_suffix(".tmp")
        temporary.write_text(writer_id)
        os.replace(temporary, path)
        fsync_directory(self.wal_dir)
        return writer_id

    # -- appending -----------------------------------------------------------------------------------------

    def _submit(self, events: Sequence[Event]):
        if self._closed:
            raise StoreError("the event log is closed")
        for event in events:
            if not isinstance(event, Event):
                raise TypeError(f"append takes Event records, got {type(event).__name__}")
        try:
            return self._wal.submit(encode_rows([event_row(e) for e in events]))
        except WALError as exc:
            raise StoreError(str(exc)) from exc

    async def append(self, events: Sequence[Event]) -> None:
        """Record events; returns once they are durable on disk. Raises StoreError if they are not.

        What the tasks of one event loop append in the same turn of the loop is written as one record right
        after that turn, on the loop's own thread (a write into the page cache: microseconds). A thread of the
        log (or its sync process) fsyncs it (about a millisecond on a virtual disk), one fsync at a time: what
        the loop writes meanwhile shares the next one (group commit), and the loop never waits for the disk.
        """
        if not events:
            return
        if self._closed:
            raise StoreError("the event log is closed")
        rows = []
        for event in events:
            if not isinstance(event, Event):
                raise TypeError(f"append takes Event records, got {type(event).__name__}")
            rows.append(event_row(event))
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        batch = self._loop_batches.get(loop)
        if batch is None:
            batch = self._loop_batches[loop] = ([], [])
            loop.call_soon(self._submit_loop_batch, loop)
        batch[0].extend(rows)
        batch[1].append(waiter)
        await waiter

    def _submit_loop_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        rows, waiters = self._loop_batches.pop(loop)

        try:
            segment = self._wal.write_unsynced(encode_rows(rows))
        except WALError as exc:
            _settle(waiters, StoreError(f"events not recorded: {exc}"))
            return
        except Exception as exc:
            # Nobody may be left waiting: the webhooks answer 503 and the platform delivers them again.
            log.exception("events not recorded")
            _settle(waiters, StoreError(f"events not recorded: {exc!r}"))
            return
        syncing = self._loop_syncs.setdefault(loop, _LoopSync())
        syncing.waiting.append((segment, waiters))
        if not syncing.in_flight:
            self._sync_for(loop, syncing)

    def _sync_for(self, loop: asyncio.AbstractEventLoop, syncing: _LoopSync) -> None:
        """One fsync at a time per loop, covering every record written before it began (group commit)."""
        batch, syncing.waiting = syncing.waiting, []
        syncing.in_flight = True

        def finish(error: BaseException | None) -> None:
            syncing.in_flight = False
            if error is not None and not isinstance(error, WALError):
                log.error("events not recorded", exc_info=error)
            failure = None if error is None else StoreError(f"events not recorded: {error}")
            for _, waiters in batch:
                _settle(waiters, failure)
            if syncing.waiting:
                self._sync_for(loop, syncing)
            else:
                self._loop_syncs.pop(loop, None)

        segments = {segment for segment, _ in batch}
        process = self._live_sync_process()
        if process is None:
            self._sync_by_thread(loop, segments, finish)
        else:
            self._sync_by_process(process, loop, segments, finish)

    def _sync_by_process(
        self,
        process: SyncProcess,
        loop: asyncio.AbstractEventLoop,
        segments: set[int],
        finish: Callable[[BaseException | None], None],
    ) -> None:
        try:
            seq = self._wal.unsynced(segments)
        except WALError as exc:
            finish(exc)
            return
        if seq is None:
            finish(None)
            return

        def answered(code: int) -> None:
            if code >= 0:
                finish(self._wal.synced_by_process(seq, code))
            else:  # it stopped before answering: the thread fsyncs instead
                self._sync_by_thread(loop, segments, finish)

        try:
            process.sync(seq, answered)
        except SyncProcessGone:
            self._sync_by_thread(loop, segments, finish)

    def _sync_by_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        segments: set[int],
        finish: Callable[[BaseException | None], None],
    ) -> None:
        try:
            future = loop.run_in_executor(self._syncer, self._wal.sync, segments)
        except RuntimeError:  # the log was closed meanwhile (its fsync thread stopped)
            finish(WALError("the event log is closed"))
            return
        future.add_done_callback(
            lambda done: finish(WALError("the fsync was cancelled") if done.cancelled() else done.exception())
        )

    def _live_sync_process(self) -> SyncProcess | None:
        """The log's sync process; None if it has none (or none left)."""
        process = self._sync_process
        if process is not None and not process.alive:
            log.error("the write-ahead log's sync process stopped; fsyncing from a thread")
            process = self._sync_process = None
        return process

    def append_soon(self, rows: Sequence[list]) -> None:
        """Record rows made by `event_row` without waiting: written within a fraction of a second.

        For events whose loss costs little if the machine (not the process) crashes before they reach the
        disk: the outcomes of replies, made in the reply worker, which sends a reply again when its outcome
        is missing after a restart. Raises StoreError if the log is closed, ValueError for a row of the
        wrong shape (nothing is recorded then).
        """
        if not rows:
            return
        if self._closed:
            raise StoreError("the event log is closed")
        for row in rows:
            if not is_event_row(row):
                raise ValueError(f"not an event row: {row!r:.200}")
        try:
            self._wal.submit_soon(encode_rows(list(rows)))
        except WALError as exc:
            raise StoreError(str(exc)) from exc

    def append_blocking(self, events: Sequence[Event]) -> None:
        """`append` for synchronous code."""
        if not events:
            return
        try:
            self._submit(events).result()
        except WALError as exc:
            raise StoreError(f"events not recorded: {exc}") from exc

    # -- flushing ------------------------------------------------------------------------------------------

    def _segment_closed(self, segment: Segment) -> None:
        with self._flush_cond:
            self._flush_queue.append(segment)
            self._flush_cond.notify_all()

    def _flush_loop(self) -> None:
        backoff = 1.0
        while True:
            with self._flush_cond:
                while not self._flush_queue and not self._stopping:
                    self._flush_cond.wait()
                if not self._flush_queue and self._stopping:
                    return
            if self._drain_flush_queue(raise_errors=False):
                backoff = 1.0
            else:
                # The store is unreachable (S3 down, disk full): the events are safe in the log; try again.
                with self._flush_cond:
                    if self._stopping:
                        return
                    self._flush_cond.wait(timeout=backoff)
                backoff = min(backoff * 2, 60.0)

    def _drain_flush_queue(self, *, raise_errors: bool) -> bool:
        with self._flushing:
            while True:
                with self._flush_cond:
                    if not self._flush_queue:
                        return True
                    segment = self._flush_queue[0]
                try:
                    self._flush_segment(segment)
                except Exception as exc:
                    self.last_flush_error = exc
                    log.error("flushing events from log segment %s failed: %s", segment.seq, exc)
                    if raise_errors:
                        raise StoreError(f"flushing events to {self.files.data} failed: {exc}") from exc
                    return False
                with self._flush_cond:
                    self._flush_queue.remove(segment)
                    self.last_flush_error = None

    def _flush_segment(self, segment: Segment) -> None:
        started = time.perf_counter()
        rows = [row for record in read_records(segment.path) for row in decode_rows(record)]
        table = deduplicate(rows_to_table(rows))
        for day, part in split_by_day(table).items():
            name = f"{self.writer_id}-{segment.seq:08d}.parquet"
            self.files.put(f"{partition_dir(day)}/{name}", parquet_bytes(part))
        segment.path.unlink()
        fsync_directory(self.wal_dir)
        log.debug(
            "flushed %d events from segment %d in %.1f ms",
            table.num_rows,
            segment.seq,
            (time.perf_counter() - started) * 1e3,
        )

    def flush_blocking(self) -> None:
        """Write everything appended so far to Parquet now; raises StoreError if the store refuses."""
        self._wal.rotate().result()
        self._drain_flush_queue(raise_errors=True)

    async def flush(self) -> None:
        await asyncio.to_thread(self.flush_blocking)

    def close(self) -> None:
        """Flush and stop. Events that cannot be flushed stay in the log for the next start."""
        if self._closed:
            return
        self._closed = True
        if self._sync_process is not None:
            self._sync_process.close()
        self._syncer.shutdown(wait=True)
        self._wal.close()
        with self._flush_cond:
            self._stopping = True
            self._flush_cond.notify_all()
        self._flusher.join()
        try:
            self._drain_flush_queue(raise_errors=True)
        finally:
            self._lock.release()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading back and health ---------------------------------------------------------------------------

    def recent(self, since: datetime) -> list[Event]:
        """This writer's events at or after `since`: from the log and from its own Parquet files."""
        since_us = (since - _EPOCH) // timedelta(microseconds=1)
        rows = []
        for segment in list_segments(self.wal_dir):
            if segment.path.exists():
                for record in read_records(segment.path):
                    rows.extend(row for row in decode_rows(record) if row[_TS] >= since_us)
        tables = [rows_to_table(rows)]
        day = since.astimezone(UTC).date()
        while day <= datetime.now(UTC).date() + timedelta(days=1):
            for relative in self.files.list(partition_dir(day)):
                if PurePosixPath(relative).name.startswith(f"{self.writer_id}-"):
                    tables.append(conform_table(self.files.read_table(relative)))
            day += timedelta(days=1)
        table = deduplicate(pa.concat_tables(tables))
        since_scalar = pa.scalar(since, FILE_SCHEMA.field("ts").type)
        table = table.filter(pc.greater_equal(table.column("ts"), since_scalar))
        return sorted(from_table(table), key=lambda e: e.ts)

    def check(self) -> None:
        """Raise StoreError unless new events can be logged and flushed."""
        if self._closed:
            raise StoreError("the event log is closed")
        try:
            probe = self.wal_dir / f".probe-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"write-ahead log directory {self.wal_dir} is not writable: {exc}") from exc
        if self.last_flush_error is not None:
            raise StoreError(f"flushing to {self.files.data} fails: {self.last_flush_error}")


# -- compaction --------------------------------------------------------------------------------------------


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
    manifest = json.dumps({"merged": name, "replaced": replaced, "at": time.time()}).encode()
    files.put(f"{folder}/_compaction-{token}.json", manifest)
    if grace_s <= 0:
        compact_day(files, day, grace_s=0)  # nothing to wait for: delete the replaced files now
    log.info("compacted %d files of %s into %s (%d events)", len(inputs), day, name, merged.num_rows)
    return len(inputs)


def closed_days(files: FileStore, today: date | None = None) -> list[date]:
    """Days with events that have been over (in UTC) for a whole day.

    No writer adds to them in the normal course, and no bot restarting after a crash still looks in them for
    replies it owes: it looks among its own files of the last day (replies older than a day are past the
    platform's window), which a merged file would no longer be.
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
    from bot.config import ConfigError, Mode, Settings

    try:
        # Compaction touches only the event files: it needs PROMOBOT_DATA, never the platform's secrets.
        data = data or Settings.from_env(mode=Mode.LOCAL).data
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


__all__ = [
    "EventLog",
    "EventName",
    "FileStore",
    "FlushPolicy",
    "StoreError",
    "compact",
    "compact_command",
    "open_filesystem",
]
