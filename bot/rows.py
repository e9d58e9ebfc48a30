"""How the transactional store writes events, replies and times as rows: column order, µs since the epoch."""

# The SQL is assembled from constant column lists and placeholders; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from bot.events import Event
from bot.flow import IssuedCode, Reply


class Cursor(Protocol):
    """What the store uses of a DB-API cursor, sqlite3's or psycopg's (`?` placeholders on both)."""

    @property
    def rowcount(self) -> int: ...

    @property
    def connection(self) -> Any: ...

    def execute(self, query: str, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, query: str, params: Iterable[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
ROWS_PER_STATEMENT = 1000  # rows per INSERT or IN list: under both engines' limits on bound values
EVENT_FIELDS = (
    *("event_id", "ts", "page_id", "customer_id", "campaign_id", "event"),
    *("variant", "button", "message_digest", "detail", "watermark", "source"),
)
EVENT_COLUMNS = ", ".join(EVENT_FIELDS)
INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_REPLY = (
    f"INSERT INTO outbox (reply_id, kind, ordinal, due_at, code, token, expires_at, {EVENT_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (reply_id) DO NOTHING"
)


def micros(at: datetime) -> int:
    """`at` as µs since the epoch."""
    return (at - EPOCH) // US


def moment(us: int) -> datetime:
    """The aware UTC time `us` µs after the epoch."""
    return EPOCH + us * US


def micros_or_none(at: datetime | None) -> int | None:
    """`micros`, keeping None."""
    return None if at is None else micros(at)


def event_values(event: Event) -> tuple[object, ...]:
    """The event's values in EVENT_FIELDS order (spelled out: every recorded event goes through here)."""
    return (
        event.event_id,
        micros(event.ts),
        event.page_id,
        event.customer_id,
        event.campaign_id,
        str(event.event),
        event.variant,
        event.button,
        event.message_digest,
        event.detail,
        event.watermark,
        event.source,
    )


def row_event(row: Sequence[Any]) -> Event:
    """The event of a row read in EVENT_FIELDS order (the order of Event's fields; Event checks each value
    and makes the event's name an EventName)."""
    event_id, ts, *rest = row
    return Event(event_id, moment(ts), *rest)


def issued_code(code: str | None, token: str | None, expires_at: int | None) -> IssuedCode | None:
    """The single-use code an outbox row carries, None when it carries none."""
    if code is None or token is None:
        return None
    return IssuedCode(code, token, None if expires_at is None else moment(expires_at))


def reply_values(reply: Reply, ordinal: int, now: int) -> tuple[object, ...]:
    """INSERT_REPLY's parameters for `reply`: `ordinal` among its event's replies, due at `now` (µs)."""
    code = reply.issued
    columns = (None, None, None) if code is None else (code.code, code.token, micros_or_none(code.expires_at))
    return (reply.sent_id, str(reply.kind), ordinal, now, *columns, *event_values(reply.answers))


INSERT_DELETION_REQUEST = (
    "INSERT INTO deletion_requests (code, reason, customer_id, status, requested_at) VALUES (?, ?, ?, ?, ?)"
)
CUSTOMER_REASON = "customer"  # a request the customer made in the conversation (bot.privacy.Reason)


def deletion_code() -> str:
    """A deletion request's confirmation code: 16 letters and digits, unguessable (a status page is found by
    its code only)."""
    return base64.b32encode(secrets.token_bytes(10)).decode()


class RequestStatus(StrEnum):
    """Where a deletion request stands."""

    PENDING = "pending"  # recorded; its customer's rows not all deleted yet
    DONE = "done"  # their rows are deleted
    NOT_FOUND = "not_found"  # done, and nothing was kept under the id it named
