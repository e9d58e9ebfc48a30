"""The event record: the one contract between the bot, which writes events, and analytics, which reads them.

Every column and the Arrow schema are defined here and nowhere else; event names live in bot.facts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from bot.facts import EventName


class EventError(ValueError):
    """An event that does not fit the schema."""


# The columns as stored. `event_date` is the Hive partition key: it lives in the directory name
# (`event_date=YYYY-MM-DD`), so the Parquet files themselves carry FILE_SCHEMA, without it.
SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("event_date", pa.date32(), nullable=False),
        pa.field("page_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("campaign_id", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=True),
        pa.field("event", pa.string(), nullable=False),
        pa.field("button", pa.string(), nullable=True),
        pa.field("message_digest", pa.int64(), nullable=True),
        pa.field("detail", pa.string(), nullable=True),
        pa.field("watermark", pa.int64(), nullable=True),
        pa.field("source", pa.string(), nullable=True),
    ]
)
PARTITION_COLUMN = "event_date"
FILE_SCHEMA = pa.schema([f for f in SCHEMA if f.name != PARTITION_COLUMN])

_REQUIRED = ("event_id", "ts", "page_id", "customer_id", "campaign_id", "event")
_OPTIONAL_TEXT = ("variant", "button", "detail", "source")
_OPTIONAL_INT = ("message_digest", "watermark")
_OPTIONAL = ("variant", "button", "message_digest", "detail", "watermark", "source")
_FIELDS = (*_REQUIRED, *_OPTIONAL)
_REQUIRED_TEXT = ("event_id", "page_id", "customer_id", "campaign_id")


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened: a step of the conversation, a click, a receipt, a failure.

    `message_digest` is a send's or a delivery receipt's: `message_digest` of the platform's id of the
    message sent or delivered. `watermark` is a read or delivery receipt's: the platform's time (ms since the
    epoch, on its clock) of the last message read or delivered, not the time of reading. Other events have
    neither. `source` is where a journey came from (an entry link's placement, `ad:<ad_id>`, or `direct`): set
    on the events that start one (`conversation_started`) and on the welcome that answers it.
    """

    event_id: str
    ts: datetime
    page_id: str
    customer_id: str
    campaign_id: str
    event: EventName
    variant: str | None = None
    button: str | None = None
    message_digest: int | None = None
    detail: str | None = field(default=None)
    watermark: int | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        # Every event the bot records passes here. The common case (required strings non-empty, optional
        # ones str or None, an EventName, a datetime in UTC) is one expression; only an event that fails it
        # is looked at again, for the message or to normalise it.
        if not (
            self.event_id.__class__ is str
            and self.event_id
            and self.page_id.__class__ is str
            and self.page_id
            and self.customer_id.__class__ is str
            and self.customer_id
            and self.campaign_id.__class__ is str
            and self.campaign_id
            and self.event.__class__ is EventName
            and self.ts.__class__ is datetime
            and self.ts.tzinfo is UTC
            and (self.variant is None or self.variant.__class__ is str)
            and (self.button is None or self.button.__class__ is str)
            and (self.message_digest is None or self.message_digest.__class__ is int)
            and (self.detail is None or self.detail.__class__ is str)
            and (self.watermark is None or self.watermark.__class__ is int)
            and (self.source is None or self.source.__class__ is str)
        ):
            self._check_and_normalise()

    def _check_and_normalise(self) -> None:
        for key in _REQUIRED_TEXT:
            value = getattr(self, key)
            if value is None or value == "":
                raise EventError(f"event is missing required key {key!r}")
            if not isinstance(value, str):
                raise EventError(f"event key {key!r} must be a string, got {type(value).__name__}")
        for key in _OPTIONAL_TEXT:
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise EventError(f"event key {key!r} must be a string or None, got {type(value).__name__}")
        for key in _OPTIONAL_INT:
            value = getattr(self, key)
            if value is not None and (value.__class__ is bool or not isinstance(value, int)):
                raise EventError(f"event key {key!r} must be an integer or None, got {type(value).__name__}")
            if value is not None and value.__class__ is not int:
                object.__setattr__(self, key, int(value))  # a subclass of int, stored as a plain int
        if self.event.__class__ is not EventName:
            if self.event is None or self.event == "":
                raise EventError("event is missing required key 'event'")
            try:
                name = EventName(self.event)
            except ValueError:
                raise EventError(
                    f"unknown event name {self.event!r}; expected one of {', '.join(EventName)}"
                ) from None
            object.__setattr__(self, "event", name)
        ts = self.ts
        if ts is None:
            raise EventError("event is missing required key 'ts'")
        if not isinstance(ts, datetime):
            raise EventError(f"event key 'ts' must be a datetime, got {type(ts).__name__}")
        if ts.tzinfo is not UTC:
            if ts.tzinfo is None or ts.utcoffset() is None:
                raise EventError(f"event timestamp must be timezone-aware (UTC), got naive {ts.isoformat()}")
            object.__setattr__(self, "ts", ts.astimezone(UTC))

    @property
    def event_date(self) -> date:
        """The UTC date of `ts`: the partition the event is stored in."""
        return self.ts.date()

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Event:
        """Build an event from a mapping (a decoded row or a log record); unknown keys are an error."""
        missing = [key for key in _REQUIRED if key not in record]
        if missing:
            raise EventError(f"event is missing required key {missing[0]!r}")
        unknown = set(record) - set(_REQUIRED) - set(_OPTIONAL) - {PARTITION_COLUMN}
        if unknown:
            raise EventError(f"event has unknown key {sorted(unknown)[0]!r}")
        # Values of any type: __post_init__ checks each, with a message that names the key.
        values: dict[str, Any] = {key: record.get(key) for key in (*_REQUIRED, *_OPTIONAL)}
        ts = values["ts"]
        if isinstance(ts, str):
            try:
                values["ts"] = datetime.fromisoformat(ts)
            except ValueError:
                raise EventError(f"event timestamp {ts!r} is not an ISO 8601 date-time") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The event as plain values, `event_date` included (the inverse of `from_dict`)."""
        # Every value is immutable (strings, an aware datetime): no copies needed, unlike dataclasses.asdict.
        record = {key: getattr(self, key) for key in _FIELDS}
        record["event"] = str(self.event)
        record[PARTITION_COLUMN] = self.event_date
        return record


def message_digest(message_id: str) -> int:
    """The stored digest of a platform's message id: the first 8 bytes of the SHA-256 of its UTF-8, read as a
    signed big-endian int64.

    SQL engines compute it too, e.g. DuckDB: `('0x' || left(sha256(id), 16))::ubigint`, less 2**64 when at
    least 2**63.
    """
    # surrogatepass: an id with a lone surrogate (no real one has; a malformed answer might) still has one.
    utf8 = message_id.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(utf8).digest()[:8], "big", signed=True)


_DETAIL_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def detail_json(**fields: Any) -> str:
    """The `detail` column's JSON: compact, keys sorted, so equal details are equal strings."""
    return _DETAIL_ENCODER.encode(fields)  # (one encoder for all: json.dumps with options makes one a call)


def to_table(events: Iterable[Event], schema: pa.Schema = SCHEMA) -> pa.Table:
    """Events as an Arrow table with `schema` (SCHEMA, or FILE_SCHEMA for a partition's file)."""
    rows = [e.to_dict() for e in events]
    return pa.Table.from_pydict({name: [row[name] for row in rows] for name in schema.names}, schema=schema)


def from_table(table: pa.Table) -> list[Event]:
    """Events back from an Arrow table that carries at least the required columns."""
    rows = table.drop_columns([PARTITION_COLUMN]) if PARTITION_COLUMN in table.column_names else table
    return [Event.from_dict(row) for row in rows.to_pylist()]
