"""Event files: Hive partitions of Parquet, each made visible whole, and their codec.

`events/event_date=YYYY-MM-DD/<name>.parquet`, in a local directory or an `s3://bucket/prefix`.
"""

from __future__ import annotations

import builtins
import io
import itertools
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bot.events import FILE_SCHEMA, PARTITION_COLUMN, Event, message_digest
from bot.facts import EventName

log = logging.getLogger(__name__)

EVENTS_DIR = "events"
# Rows sorted so that one customer's journey sits together: the funnel queries read them that way, and
# neighbouring rows that share ids and timestamps compress to almost nothing.
SORT_KEYS = [("campaign_id", "ascending"), ("customer_id", "ascending"), ("ts", "ascending")]
_DICTIONARY_COLUMNS = ["page_id", "campaign_id", "variant", "event", "button", "detail"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CHUNK = 50_000  # events turned into columns at a time by `write_events`


# -- where the files live ----------------------------------------------------------------------------------


def open_filesystem(data: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and root path of a store: a local directory or `s3://bucket/prefix`.

    S3 credentials and region come from the standard AWS environment variables; `AWS_ENDPOINT_URL` (or
    `AWS_ENDPOINT_URL_S3`) points at an S3-compatible store instead of AWS.
    """
    if data.startswith("s3://"):
        parts = urlsplit(data)
        options: dict[str, str] = {}
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
        try:
            with open(temporary, "wb") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, final)
        except BaseException:
            temporary.unlink(missing_ok=True)  # a full disk must not fill up with the halves of each retry
            raise
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

    def list_manifests(self, relative: str) -> builtins.list[str]:  # (`list` is the method above)
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
            body: bytes = file.read()
            return body

    def delete(self, relative: str, *, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path(relative))
        except FileNotFoundError:
            if not missing_ok:
                raise


def partition_dir(day: date) -> str:
    return f"{EVENTS_DIR}/{PARTITION_COLUMN}={day.isoformat()}"


def fsync_directory(directory: Path) -> None:
    """Make the names in a local directory (a file renamed into it, a new folder) survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_events(files: FileStore, events: Iterable[Event], name: str) -> int:
    """Write events as one Parquet file per UTC day they fall on, `events/event_date=D/<name>.parquet`,
    each made visible whole; writing under the same name again replaces those files.

    Parameters: `files` where the partitions live; `events` in any order, read once and turned into columns
    a chunk at a time (a generator of millions stays small); `name` the files' name, its writer's own.
    Returns: how many files were written.
    Raises: ValueError for a name that is no file name; OSError if a file could not be written (the days
    written before it stay written).
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"event file name {name!r} must be a plain name: no '/', not starting with '.'")
    remaining = iter(events)
    tables = []
    while rows := [event_row(event) for event in itertools.islice(remaining, _CHUNK)]:
        tables.append(rows_to_table(rows))
    if not tables:
        return 0
    parts = split_by_day(pa.concat_tables(tables))
    for day, part in sorted(parts.items()):
        files.put(f"{partition_dir(day)}/{name}.parquet", parquet_bytes(part))
    return len(parts)


# -- rows, tables, Parquet ---------------------------------------------------------------------------------

_FIELDS = FILE_SCHEMA.names  # event_id, ts, page_id, customer_id, campaign_id, variant, event, ..., source


def event_row(event: Event) -> list[object]:
    """An event as a row for `rows_to_table`: FILE_SCHEMA's columns in order, ts in µs since the epoch."""
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
        event.source,
    ]


def rows_to_table(rows: Sequence[Sequence[object]]) -> pa.Table:
    """Rows made by `event_row` as a table with FILE_SCHEMA."""
    columns: list[Sequence[object]] = list(zip(*rows, strict=True)) if rows else [[] for _ in _FIELDS]
    arrays = {}
    for name, values in zip(_FIELDS, columns, strict=True):
        field = FILE_SCHEMA.field(name)
        arrays[name] = (
            pa.array(values, type=pa.int64()).cast(field.type)
            if name == "ts"
            else pa.array(values, type=field.type)
        )
    return pa.Table.from_pydict(arrays, schema=FILE_SCHEMA)


# Two earlier versions kept the platform's message id itself (a string column, `message_id`) where this one
# keeps its digest. The first also kept a receipt's watermark as the whole of its detail, `{"watermark":ms}`:
# its files lack the `watermark` column. Their files are still read, and compacted into this version's.
_RECEIPTS = frozenset({str(EventName.MESSAGE_READ), str(EventName.MESSAGE_DELIVERED)})
_LEGACY_DETAIL = r'^\{"watermark":(?P<watermark>-?[0-9]+)\}$'


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


# -- removing a customer's rows ----------------------------------------------------------------------------


def files_naming(files: FileStore, customer_id: str) -> list[str]:
    """Relative paths of the event files that hold a row of the customer (row groups whose statistics rule
    the customer out are not read)."""
    import pyarrow.dataset as ds  # the scan's machinery, for this rare command only

    relatives = files.list(EVENTS_DIR)
    if not relatives:
        return []
    dataset = ds.dataset([files.path(r) for r in relatives], filesystem=files.fs, format="parquet")
    naming = ds.field("customer_id") == customer_id
    prefix = len(files.root) + 1
    return sorted(
        fragment.path[prefix:] for fragment in dataset.get_fragments() if fragment.count_rows(filter=naming)
    )


def rewrite_without(files: FileStore, relative: str, customer_id: str) -> int:
    """Replace an event file by the same file without the customer's rows, made visible whole under the same
    name (readers see the old file or the new one, and a compaction's manifest still names it); the file's
    columns are kept as its writer wrote them. Returns how many rows went (0: the file is left as it was).
    Raises: OSError if the file could not be read or written (it is then as it was)."""
    table = files.read_table(relative)
    keep = pc.invert(pc.equal(table.column("customer_id"), customer_id).fill_null(False))
    kept = table.filter(keep)
    removed: int = table.num_rows - kept.num_rows
    if removed:
        files.put(relative, parquet_bytes(kept))
    return removed


__all__ = [
    "FileStore",
    "files_naming",
    "open_filesystem",
    "rewrite_without",
    "write_events",
]
