"""The bot's exact, shared state in a SQL database: seen marks, the events buffer, the outbox, flush batches.

One SQLite file by default (one process on a persistent disk), or PostgreSQL for a `postgresql://` URL
(several instances, ephemeral disks). The schema lives in bot.migrations and is brought up to date at open.

- `record` writes a webhook's new events, their seen marks and the replies they call for in one transaction;
  concurrent callers share transactions (group commit).
- `claim` / `complete` / `retry`: senders lease replies from the outbox; a sender that dies lets its lease
  run out and the reply goes to another.
- `next_batch` / `pending_batches` / `flushed`: the flusher moves events out in numbered batches.

Times are stored as µs since the epoch (UTC), from the bot's clock except for the events' own `ts`.
"""

# The SQL is assembled from constant column lists and placeholders; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from bot import audience, pool
from bot.audience import BroadcastResult, BroadcastState, Customer, Reason, RecipientState
from bot.config import SQLITE_FILE
from bot.events import Event
from bot.facts import EventName
from bot.flow import IssuedCode, Reply, ReplyKind, handover_span
from bot.migrations import MIGRATIONS, Migration, migrate

SEEN_RETENTION = timedelta(days=7)  # Messenger redelivers an unacknowledged webhook for at most a day
CONNECT_TIMEOUT_S = 5  # PostgreSQL: seconds to wait for a connection, unless the URL says otherwise
BUSY_TIMEOUT_S = 10.0  # SQLite: how long a writer waits for another process's transaction
_ROWS_PER_STATEMENT = 1000  # seen marks per INSERT: under both engines' limits on bound values
UNAVAILABLE_CODE = 551  # Send API: "this person isn't available right now"
BLOCKED_SUBCODE = 1545041  # Send API: the customer blocked the page (or left Messenger)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_EVENT_FIELDS = (
    *("event_id", "ts", "page_id", "customer_id", "campaign_id", "event"),
    *("variant", "button", "message_digest", "detail", "watermark", "source"),
)
_EVENT_COLUMNS = ", ".join(_EVENT_FIELDS)


class DatabaseError(RuntimeError):
    """The database could not do what was asked (unreachable, locked too long, full, closed)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Batch:
    """Events given to the flusher under one number: the same rows whenever the batch is read again."""

    number: int
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class HealthFigures:
    """What the store tells of the bot's health; times on the bot's clock, None when there is none."""

    last_seen: datetime | None  # the newest seen mark: when the last webhook with a new event was recorded
    outbox_rows: int  # replies owed, claimed or not
    oldest_due: datetime | None  # the earliest `due_at` in the outbox (a claimed reply's is its lease's end)
    buffered_events: int  # events waiting for the flusher
    oldest_buffered: datetime | None  # when the oldest of them was recorded


@dataclass(frozen=True, slots=True)
class _Engine:
    name: str  # "sqlite" or "postgresql", as bot.migrations names them
    where: str  # the database, for messages (never a password)
    connect: Callable[[], Any]  # a DB-API connection in autocommit mode, taking `?` placeholders
    error: type[Exception]  # the driver's base exception
    begin: str  # SQLite takes the write lock at BEGIN: no transaction fails upgrading a read to a write
    skip_locked: str  # PostgreSQL: a claim passes over rows another claim holds instead of waiting
    conflict: type[Exception]  # the driver's error for a unique index violated


def _sqlite(path: Path) -> _Engine:
    def connect() -> sqlite3.Connection:
        # Autocommit: transactions are begun and ended explicitly. One connection per thread, but all are
        # closed by the thread that closes the database. FULL: a commit survives a crash of the machine.
        connection = sqlite3.connect(path, BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    return _Engine(
        "sqlite", f"SQLite {path}", connect, sqlite3.Error, "BEGIN IMMEDIATE", "", sqlite3.IntegrityError
    )


def _postgresql(url: str) -> _Engine:
    import psycopg  # only needed with a PostgreSQL URL

    class QmarkCursor(psycopg.Cursor):
        """Takes `?` placeholders, as sqlite3 does: one text of each statement serves both engines."""

        def execute(self, query: str, params: Any = None, **options: Any) -> QmarkCursor:
            return super().execute(query.replace("?", "%s"), params, **options)

        def executemany(self, query: str, params_seq: Any, **options: Any) -> None:
            super().executemany(query.replace("?", "%s"), params_seq, **options)

    info = psycopg.conninfo.conninfo_to_dict(url)
    # Without a limit, a server that drops packets holds a webhook (or start-up) for minutes.
    timeout = {} if "connect_timeout" in info else {"connect_timeout": CONNECT_TIMEOUT_S}
    where = f"PostgreSQL {info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    return _Engine(
        "postgresql",
        where,
        lambda: psycopg.connect(url, autocommit=True, cursor_factory=QmarkCursor, **timeout),
        psycopg.Error,
        "BEGIN",
        "FOR UPDATE SKIP LOCKED",
        psycopg.errors.UniqueViolation,
    )


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // _US


def _moment(micros: int) -> datetime:
    return _EPOCH + micros * _US


def _event_values(event: Event) -> tuple:
    """The event's values in _EVENT_FIELDS order (spelled out: `record` does this for every event)."""
    return (
        event.event_id,
        _micros(event.ts),
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


def _issued(code: str | None, token: str | None, expires_at: int | None) -> IssuedCode | None:
    if code is None or token is None:
        return None
    return IssuedCode(code, token, None if expires_at is None else _moment(expires_at))


def _event(row: Sequence[Any]) -> Event:
    record = dict(zip(_EVENT_FIELDS, row, strict=True))
    record["ts"] = _moment(record["ts"])
    return Event.from_dict(record)


def redeemed_event(state: pool.CodeState, at: datetime) -> Event:
    """The event of a code used at the till at `at` (the bot's clock): one per customer and campaign."""
    return Event(
        event_id=f"{state.customer_id}.{state.campaign_id}.redeemed",
        ts=at,
        page_id=state.page_id or "",
        customer_id=state.customer_id or "",
        campaign_id=state.campaign_id,
        variant=state.variant,
        event=EventName.COUPON_REDEEMED,
    )


def _reply_values(reply: Reply, ordinal: int, now: int) -> tuple:
    issued = reply.issued
    code = (
        (None, None, None)
        if issued is None
        else (issued.code, issued.token, _micros_or_none(issued.expires_at))
    )
    return (reply.sent_id, str(reply.kind), ordinal, now, *code, *_event_values(reply.answers))


def _micros_or_none(moment: datetime | None) -> int | None:
    return None if moment is None else _micros(moment)


_INSERT_EVENT = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_REPLY = (
    f"INSERT INTO outbox (reply_id, kind, ordinal, due_at, code, token, expires_at, {_EVENT_COLUMNS})"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (reply_id) DO NOTHING"
)
# Due and not leased, and no earlier reply to the same event still owed: a thank-you's text goes before its
# image, whichever sender claims them.
_CLAIM = f"""
UPDATE outbox SET due_at = ?, claims = claims + 1
WHERE reply_id IN (
    SELECT reply_id FROM outbox AS reply
    WHERE due_at <= ? AND NOT EXISTS (
        SELECT 1 FROM outbox AS earlier
        WHERE earlier.event_id = reply.event_id AND earlier.ordinal < reply.ordinal
    )
    ORDER BY due_at, reply_id LIMIT ? {{skip_locked}}
)
RETURNING kind, code, token, expires_at, {_EVENT_COLUMNS}"""
_TAKE_BATCH = """
UPDATE events SET batch = ?
WHERE seq IN (SELECT seq FROM events WHERE batch IS NULL ORDER BY seq LIMIT ? {skip_locked})"""


# Each customer, with whether a broadcast of the campaign (the first parameter) sent or is sending them its
# welcome: see bot.audience.Customer.
_CUSTOMERS = """
SELECT c.page_id, c.customer_id, c.last_action_at, c.ad_referral_at, c.opted_out_at, c.handed_over_until,
       c.unreachable_at,
       EXISTS (
           SELECT 1 FROM broadcast_recipients AS r JOIN broadcasts AS b ON b.broadcast = r.broadcast
           WHERE r.page_id = c.page_id AND r.customer_id = c.customer_id AND b.campaign_id = ?
             AND r.state IN (?, ?)
       ) AS already_sent
FROM customers AS c"""


def _already_sent_params(campaign_id: str) -> tuple[str, str, str]:
    return (campaign_id, str(RecipientState.SENDING), str(RecipientState.SENT))


def _customer(row: Sequence[Any]) -> Customer:
    page_id, customer_id, *times, already_sent = row
    moments = (None if t is None else _moment(t) for t in times)
    return Customer(page_id, customer_id, *moments, already_sent=bool(already_sent))


# -- customers: the messaging window, opt-outs, takeovers -----------------------------------------------

# A customer's own actions: they open Messenger's window (receipts and the page's echoes do not).
OWN_ACTIONS = frozenset(
    {
        EventName.CONVERSATION_STARTED,
        EventName.COUPON_REQUESTED,
        EventName.DECLINED,
        EventName.COUPON_REVEALED,
        EventName.TEXT_RECEIVED,
        EventName.REACTION_RECEIVED,
        EventName.OPTED_OUT,
        EventName.OPTED_IN,
    }
)
_RECEIPTS = frozenset({EventName.MESSAGE_DELIVERED, EventName.MESSAGE_READ})
# Events a broadcast records for a customer carry this source and the bot's clock: not their action.
BROADCAST_SOURCE = "broadcast:"
_KEEP, _OPT_OUT, _OPT_IN = 0, 1, 2  # what a commit does to a customer's opt-out

_READ_CUSTOMERS = (
    "SELECT customer_id, opted_out_at, handed_over_until, last_action_at, ad_referral_at, unreachable_at"
    " FROM customers WHERE page_id = ? AND customer_id IN ({marks})"
)
# A customer's latest own action is written again only once it has moved on by this much (µs): a journey's
# taps, seconds apart, write the row once. The window this leaves is at most this much shorter than the
# platform's (24 hours or 7 days): never longer.
ACTION_GRAIN_US = 60_000_000
# Times only move forward (a redelivered older webhook, two instances committing at once); the last opt-out
# or opt-in of the commit wins, and an opt-out keeps the time of the first one.
_UPSERT_CUSTOMER = """
INSERT INTO customers (page_id, customer_id, last_action_at, ad_referral_at, opted_out_at, handed_over_until)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (page_id, customer_id) DO UPDATE SET
    last_action_at = CASE WHEN customers.last_action_at IS NULL
        OR excluded.last_action_at > customers.last_action_at
        THEN excluded.last_action_at ELSE customers.last_action_at END,
    ad_referral_at = CASE WHEN customers.ad_referral_at IS NULL
        OR excluded.ad_referral_at > customers.ad_referral_at
        THEN excluded.ad_referral_at ELSE customers.ad_referral_at END,
    opted_out_at = CASE ? WHEN 1 THEN coalesce(customers.opted_out_at, excluded.opted_out_at)
        WHEN 2 THEN NULL ELSE customers.opted_out_at END,
    handed_over_until = CASE WHEN customers.handed_over_until IS NULL
        OR excluded.handed_over_until > customers.handed_over_until
        THEN excluded.handed_over_until ELSE customers.handed_over_until END,
    unreachable_at = CASE WHEN excluded.last_action_at IS NULL THEN customers.unreachable_at END"""


@dataclass
class _Customer:
    """What one commit learns of a customer, over what the row said before it."""

    opted_out: bool  # as the events so far leave it
    handed_over_until: int | None
    last_action_at: int | None = None
    ad_referral_at: int | None = None
    opt: int = _KEEP
    opted_out_at: int | None = None
    changed: bool = False  # the row is to be written
    stored: tuple | None = None  # the row's last_action_at, ad_referral_at, unreachable_at; None: no row

    def worth_writing(self) -> bool:
        """Whether the row must be written: it is new, or something but a moment more of the window changed
        (an opt-out or opt-in, a takeover, an ad, a customer reachable again), or the window moved on by
        ACTION_GRAIN_US at least."""
        if not self.changed:
            return False
        if self.stored is None or self.opt != _KEEP:
            return True
        last_action_at, ad_referral_at, unreachable_at = self.stored
        return (
            unreachable_at is not None
            or (self.handed_over_until is not None and self.handed_over_until != self.stored_handover)
            or (
                self.ad_referral_at is not None
                and (ad_referral_at is None or self.ad_referral_at > ad_referral_at)
            )
            or last_action_at is None
            or (self.last_action_at is not None and self.last_action_at >= last_action_at + ACTION_GRAIN_US)
        )

    stored_handover: int | None = None


@dataclass(frozen=True, slots=True)
class _Standing:
    """Where a commit leaves its customers: opt-outs and opt-ins that changed nothing (their events are left
    out), and who is owed no promotion (opted out, or taken over by staff)."""

    unchanged: frozenset[str]
    quiet: frozenset[tuple[str, str]]

    def owes(self, reply: Reply) -> bool:
        """Whether `reply` goes to the outbox: not when it answers an event left out, nor a promotion to a
        customer who is quiet; a confirmation of an opt-out or opt-in is always sent."""
        if reply.answers.event_id in self.unchanged:
            return False
        return not (reply.is_promotion and (reply.answers.page_id, reply.answers.customer_id) in self.quiet)


def _keep_customers(cursor: Any, events: Sequence[Event], now: int) -> _Standing:
    """Bring the `customers` rows of these new events' customers up to date, one upsert per customer: the
    latest own action and ADS referral (the platform's times), opt-outs, takeovers until `now` (the bot's
    clock, µs) plus the pause the event names, and `unreachable_at` cleared by an own action."""
    keys = sorted({(e.page_id, e.customer_id) for e in events if e.event not in _RECEIPTS})
    if not keys:
        return _Standing(frozenset(), frozenset())
    known = {}
    for page_id, customer_ids in itertools.groupby(keys, key=lambda key: key[0]):
        ids = [customer_id for _, customer_id in customer_ids]
        for start in range(0, len(ids), _ROWS_PER_STATEMENT):
            chunk = ids[start : start + _ROWS_PER_STATEMENT]
            cursor.execute(_READ_CUSTOMERS.format(marks=", ".join(["?"] * len(chunk))), (page_id, *chunk))
            known.update(((page_id, row[0]), row[1:]) for row in cursor.fetchall())
    customers = {
        key: _Customer(
            known[key][0] is not None, known[key][1], stored=known[key][2:], stored_handover=known[key][1]
        )
        if key in known
        else _Customer(False, None)
        for key in keys
    }
    unchanged = set()
    for event in events:
        customer = customers.get((event.page_id, event.customer_id))
        if customer is None or (event.source or "").startswith(BROADCAST_SOURCE):
            continue
        ts = _micros(event.ts)
        if event.event is EventName.HANDED_OVER:
            until = now + handover_span(event) // _US
            if customer.handed_over_until is None or until > customer.handed_over_until:
                customer.handed_over_until = until
            customer.changed = True
            continue
        if event.event not in OWN_ACTIONS:
            continue
        customer.changed = True
        if customer.last_action_at is None or ts > customer.last_action_at:
            customer.last_action_at = ts
        if event.event is EventName.CONVERSATION_STARTED and _from_an_ad(event):
            customer.ad_referral_at = max(ts, customer.ad_referral_at or ts)
        if event.event is EventName.OPTED_OUT:
            if customer.opted_out:
                unchanged.add(event.event_id)
            else:
                customer.opted_out, customer.opt, customer.opted_out_at = True, _OPT_OUT, ts
        elif event.event is EventName.OPTED_IN:
            if customer.opted_out:
                customer.opted_out, customer.opt, customer.opted_out_at = False, _OPT_IN, None
            else:
                unchanged.add(event.event_id)
    rows = [
        (*key, c.last_action_at, c.ad_referral_at, c.opted_out_at, c.handed_over_until, c.opt)
        for key, c in customers.items()
        if c.worth_writing()
    ]
    if rows:
        cursor.executemany(_UPSERT_CUSTOMER, rows)
    quiet = frozenset(
        key
        for key, c in customers.items()
        if c.opted_out or (c.handed_over_until is not None and c.handed_over_until > now)
    )
    return _Standing(frozenset(unchanged), quiet)


def _from_an_ad(event: Event) -> bool:
    """Whether a conversation_started came from a Click-to-Messenger ad (its referral's source is ADS)."""
    if not event.detail or "ADS" not in event.detail:
        return False
    return json.loads(event.detail).get("source") == "ADS"


_INSERT_DELETION_REQUEST = (
    "INSERT INTO deletion_requests (code, reason, customer_id, status, requested_at) VALUES (?, ?, ?, ?, ?)"
)
CUSTOMER_REASON = "customer"  # a request the customer made in the conversation (bot.privacy.Reason)


def deletion_code() -> str:
    """A deletion request's confirmation code: 16 letters and digits, unguessable (a status page is found by
    its code only)."""
    return base64.b32encode(secrets.token_bytes(10)).decode()


_Waiting = tuple[Sequence[Event], Sequence[Reply], asyncio.Future]  # a webhook for the next commit


@dataclass(frozen=True, slots=True)
class CustomerRows:
    """A table that names customers, and the column that does: `forget_customer` deletes their rows.
    `id_prefix`: the column holds ids that begin with the customer's id and a dot (inbound event ids)."""

    table: str
    column: str = "customer_id"
    id_prefix: bool = False

    def where(self, customer_id: str) -> tuple[str, tuple[str]]:
        """The WHERE clause of the customer's rows, and its parameter."""
        if not self.id_prefix:
            return f"{self.column} = ?", (customer_id,)
        escaped = customer_id.replace("!", "!!").replace("%", "!%").replace("_", "!_")
        return f"{self.column} LIKE ? ESCAPE '!'", (f"{escaped}.%",)


# Every table whose rows name a customer: a table added by a later step that does joins this list, one line.
# (The single-use codes a customer was handed are kept, see `forget_customer`.)
CUSTOMER_ROWS: tuple[CustomerRows, ...] = (
    CustomerRows("events"),  # the buffer the flusher has not written yet
    CustomerRows("outbox"),  # replies owed to them
    CustomerRows("customers"),  # their window, opt-out, takeover, reachability
    CustomerRows("seen", "event_id", id_prefix=True),  # bot.messenger.Inbound.event_id starts with theirs
    CustomerRows("broadcast_recipients"),  # the broadcasts that took them in their audience
)
FORGOTTEN_PREFIX = "forgotten-"  # a handed-out code's customer, once forgotten: this and random letters


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What `forget_customer` did: rows deleted per table (codes: handed-out codes that no longer name
    them), and the flush batches that held their buffered events (their files may be being written)."""

    rows: dict[str, int]
    batches: tuple[int, ...]


class RequestStatus(StrEnum):
    """Where a deletion request stands."""

    PENDING = "pending"  # recorded; its customer's rows not all deleted yet
    DONE = "done"  # their rows are deleted
    NOT_FOUND = "not_found"  # done, and nothing was kept under the id it named


@dataclass(frozen=True, slots=True)
class DeletionRequest:
    """A request to delete a customer's data, as its status page shows it (never whose it is)."""

    code: str
    reason: str
    status: RequestStatus
    requested_at: datetime
    done_at: datetime | None
    removed: str | None  # JSON: counts of what was deleted


class Database:
    """The transactional store. Open with `Database.open`; blocking methods are safe from any thread (each
    thread has its own connection); `record` is for the event loop."""

    def __init__(self, engine: _Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock
        self.commits = 0  # transactions `record` has committed, for metrics
        self.store_id = ""
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, "promobot-database")  # runs `record`'s commits, one at a time
        self._waiting: list[_Waiting] = []
        self._committer: asyncio.Task | None = None
        self._closed = False
        # Campaigns with single-use codes, and when a code handed out at a reveal's time stops being valid.
        self._expiry: dict[str, Callable[[datetime], datetime | None]] = {}

    @classmethod
    def open(
        cls,
        url: str | None,
        data_dir: Path,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        clock: Callable[[], datetime] = utc_now,
    ) -> Database:
        """Open the store and bring its schema up to date.

        Parameters: `url` a `postgresql://` (or `postgres://`) or `sqlite:///path` URL, or None for the
        SQLite file in `data_dir`; `migrations` the schema's steps; `clock` the bot's clock (aware, UTC).
        Raises: DatabaseError (unreachable, unknown URL scheme), MigrationError (a newer schema).
        """
        if url is None or url.startswith("sqlite:///"):
            path = data_dir / SQLITE_FILE if url is None else Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = _sqlite(path)
        elif url.startswith(("postgresql://", "postgres://")):
            engine = _postgresql(url)
        else:
            scheme = url.split(":", 1)[0]
            raise DatabaseError(
                f"database URL scheme {scheme!r} is not supported: use postgresql:// or sqlite:///"
            )
        database = cls(engine, clock)
        try:
            migrate(database._connection(), engine.name, migrations)
            with database._transaction() as cursor:
                cursor.execute(
                    "INSERT INTO store_identity (one, store_id) VALUES (1, ?) ON CONFLICT DO NOTHING",
                    (secrets.token_hex(6),),
                )
                cursor.execute("SELECT store_id FROM store_identity")
                (database.store_id,) = cursor.fetchone()
        except engine.error as exc:
            database.close()
            raise DatabaseError(f"{engine.where} could not be opened: {exc}") from exc
        except BaseException:
            database.close()
            raise
        return database

    def close(self) -> None:
        """Close every connection; call once `record`'s callers have their answers."""
        self._closed = True
        self._writer.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def check(self) -> None:
        """Raise DatabaseError unless the database takes a write transaction (for health checks)."""
        with self._transaction() as cursor:
            cursor.execute("SELECT 1 FROM schema_migrations LIMIT 1")

    def health_figures(self) -> HealthFigures:
        """The newest seen mark, the outbox's size and earliest due time, the events buffer's size and the
        recording time of its oldest event (reads only: no write lock). Blocking."""
        ((last_seen,),) = self._query("SELECT max(seen_at) FROM seen")
        ((owed, oldest_due),) = self._query("SELECT count(*), min(due_at) FROM outbox")
        ((buffered,),) = self._query("SELECT count(*) FROM events")
        # Events carry no time of recording: an inbound event's is its seen mark (the bot's clock); the bot's
        # own (sends) carry its clock in `ts`. A redemption read from a till's export carries the till's time,
        # which can make the buffer look older than it is until the next flush.
        oldest = self._query(
            "SELECT coalesce(seen.seen_at, events.ts) FROM events"
            " LEFT JOIN seen ON seen.event_id = events.event_id ORDER BY events.seq LIMIT 1"
        )
        return HealthFigures(
            last_seen=None if last_seen is None else _moment(last_seen),
            outbox_rows=owed,
            oldest_due=None if oldest_due is None else _moment(oldest_due),
            buffered_events=buffered,
            oldest_buffered=_moment(oldest[0][0]) if oldest else None,
        )

    # -- connections and transactions ---------------------------------------------------------------------

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._closed:
                raise DatabaseError(f"{self.engine.where} is closed")
            try:
                connection = self.engine.connect()
            except self.engine.error as exc:
                raise DatabaseError(f"{self.engine.where} is unreachable: {exc}") from exc
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _forget(self, connection: Any) -> None:
        """Drop a connection that failed: the next transaction of this thread opens a new one."""
        self._local.connection = None
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)
        with contextlib.suppress(Exception):
            connection.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor inside a transaction, committed when the block ends; engine errors as DatabaseError."""
        connection = self._connection()
        try:
            with contextlib.closing(connection.cursor()) as cursor:
                cursor.execute(self.engine.begin)
                try:
                    yield cursor
                except BaseException:
                    cursor.execute("ROLLBACK")
                    raise
                cursor.execute("COMMIT")
        except self.engine.error as exc:
            self._forget(connection)
            raise DatabaseError(f"{self.engine.where} failed: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read (its own snapshot: no explicit transaction, no write lock)."""
        connection = self._connection()
        try:
            return connection.execute(sql, params).fetchall()
        except self.engine.error as exc:
            self._forget(connection)
            raise DatabaseError(f"{self.engine.where} failed: {exc}") from exc

    # -- recording webhooks --------------------------------------------------------------------------------

    async def record(self, events: Sequence[Event], replies: Sequence[Reply]) -> list[Event]:
        """Record a webhook's events and the replies they call for, once committed.

        Events whose id was recorded before (a redelivery, by this process or another) are left out, and so
        are their replies. Callers that arrive while a commit runs share the next transaction.
        Returns: the events that were new, in order. Raises: DatabaseError (nothing of it was recorded).
        """
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((events, replies, future))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_waiting())
        return await future

    async def _commit_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    news = await loop.run_in_executor(self._writer, self._commit, group)
                except Exception as exc:
                    for _, _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.commits += 1
                for (_, _, future), new in zip(group, news, strict=True):
                    if not future.done():  # its caller may have been cancelled meanwhile
                        future.set_result(new)
        finally:
            self._committer = None

    def _commit(self, group: list[_Waiting]) -> list[list[Event]]:
        """One transaction for every webhook of `group`; the new events of each.

        The customers of the new events have their row of `customers` brought up to date (one upsert each);
        an opt-out or opt-in that changes nothing (a second "stop") is left out with its confirmation; and
        replies to customers who opted out or whom staff took over are not owed (confirmations excepted).
        """
        now = _micros(self.clock())
        with self._transaction() as cursor:
            # Sorted: two transactions inserting the same ids take their locks in one order (no deadlock).
            ids = sorted({event.event_id for events, _, _ in group for event in events})
            fresh: set[str] = set()
            for start in range(0, len(ids), _ROWS_PER_STATEMENT):
                chunk = ids[start : start + _ROWS_PER_STATEMENT]
                values = ", ".join(["(?, ?)"] * len(chunk))
                cursor.execute(
                    f"INSERT INTO seen (event_id, seen_at) VALUES {values}"
                    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                    [value for event_id in chunk for value in (event_id, now)],
                )
                fresh.update(event_id for (event_id,) in cursor.fetchall())
            news = []
            for events, _, _ in group:
                new = []
                for event in events:
                    if event.event_id in fresh:
                        fresh.discard(event.event_id)  # the first caller with an id has it
                        new.append(event)
                news.append(new)
            standing = _keep_customers(cursor, [event for new in news for event in new], now)
            event_rows, reply_rows = {}, []
            for (_, replies, _), new in zip(group, news, strict=True):
                new[:] = [event for event in new if event.event_id not in standing.unchanged]
                new_ids = set()
                for event in new:
                    new_ids.add(event.event_id)
                    event_rows[event.event_id] = _event_values(event)
                ordinals: dict[str, int] = {}
                owed = [r for r in replies if r.answers.event_id in new_ids and standing.owes(r)]
                for reply in self._hand_out_codes(cursor, owed, now, new, event_rows):
                    ordinals[reply.answers.event_id] = ordinal = ordinals.get(reply.answers.event_id, -1) + 1
                    reply_rows.append(_reply_values(reply, ordinal, now))
            if event_rows:
                cursor.executemany(_INSERT_EVENT, event_rows.values())
            if reply_rows:
                cursor.executemany(_INSERT_REPLY, reply_rows)
            for event in (e for new in news for e in new if e.event is EventName.DELETION_REQUESTED):
                # Carried out by bot.privacy.process_pending once the answer has had time to go out.
                cursor.execute(_INSERT_DELETION_REQUEST, self._deletion_request(event.customer_id, now))
        return news

    def _hand_out_codes(
        self, cursor: Any, replies: list[Reply], now: int, new: list[Event], event_rows: dict
    ) -> list[Reply]:
        """`replies` with a code for each code reply of a campaign with single-use codes; where none is left,
        the `all_gone` reply instead, and a `coupon_pool_empty` event added to `new` and `event_rows`."""
        pooled = sorted(
            (reply.answers.campaign_id, reply.answers.customer_id, index)
            for index, reply in enumerate(replies)
            if reply.kind is ReplyKind.CODE and reply.answers.campaign_id in self._expiry
        )  # in one order in every transaction: two handing out codes to the same customers never deadlock
        for campaign_id, customer_id, index in pooled:
            reply = replies[index]
            expiry = self._expiry[campaign_id](reply.answers.ts)
            issued = pool.issue(
                cursor,
                campaign_id,
                customer_id,
                page_id=reply.answers.page_id,
                variant=reply.answers.variant,
                now_us=now,
                expires_us=None if expiry is None else _micros(expiry),
                skip_locked=self.engine.skip_locked,
                conflict=self.engine.conflict,
            )
            if issued is not None:
                code = _issued(*issued)
                replies[index] = Reply(ReplyKind.CODE, reply.answers, code)
                replies.append(Reply(ReplyKind.CODE_QR, reply.answers, code))  # after the code: ordinal 1
                continue
            replies[index] = Reply(ReplyKind.ALL_GONE, reply.answers)
            empty = dataclasses.replace(
                reply.answers,
                event_id=f"{reply.answers.event_id}.e",
                event=EventName.COUPON_POOL_EMPTY,
                button=None,
            )
            new.append(empty)
            event_rows[empty.event_id] = _event_values(empty)
        return replies

    def add_codes(
        self, campaign_id: str, codes: Sequence[str], expiry: Callable[[datetime], datetime | None]
    ) -> pool.PoolStatus:
        """Give the campaign single-use codes: add those of `codes` its pool lacks, and from now on hand one
        out with each code reply (`expiry` of the reveal's time: when it stops being valid). Returns the
        pool's size and how many are free. Blocking."""
        with self._transaction() as cursor:
            pool.add_codes(cursor, campaign_id, codes)
            status = pool.status(cursor, campaign_id)
        self._expiry[campaign_id] = expiry
        return status

    def pool_status(self, campaign_id: str) -> pool.PoolStatus:
        """The pool's size and how many codes are free (a read: no write lock). Blocking."""
        ((total, free),) = self._query(pool.STATUS, (campaign_id,))
        return pool.PoolStatus(total, free)

    def find_code(
        self, *, token: str | None = None, campaign_id: str = "", code: str = ""
    ) -> pool.CodeState | None:
        """The pool's code with this till token, or this code of the campaign (a read: no write lock).
        Blocking."""
        rows = self._query(*pool.find_query(token=token, campaign_id=campaign_id, code=code))
        return pool.CodeState(*rows[0]) if rows else None

    def redeem(self, token: str, *, thank: bool = False) -> pool.CodeState | None:
        """Mark the code with this till token used now and buffer its `coupon_redeemed` event (and, with
        `thank`, owe the customer the campaign's thanks), in one transaction; None, changing nothing, when it
        is unknown, used or expired. Blocking."""
        now = self.clock()
        with self._transaction() as cursor:
            state = pool.redeem(cursor, token, _micros(now))
            if state is not None:
                self._redeemed(cursor, state, now, thank)
            return state

    def _redeemed(self, cursor: Any, state: pool.CodeState, at: datetime, thank: bool) -> None:
        event = redeemed_event(state, at)
        cursor.execute(_INSERT_EVENT, _event_values(event))
        if thank:
            cursor.execute(
                _INSERT_REPLY, _reply_values(Reply(ReplyKind.REDEEMED, event), 0, _micros(self.clock()))
            )

    def redeem_codes(
        self, campaign_id: str, used: Sequence[tuple[str, datetime]], *, thank: bool = False
    ) -> dict[str, int]:
        """Mark codes used as a till's export lists them, (code, when), in one transaction, each new one with
        its `coupon_redeemed` event (and the thanks, as `redeem`); returns how many were new, already used and
        unknown. Blocking."""
        counts = {"new": 0, "already": 0, "unknown": 0}
        with self._transaction() as cursor:
            for code, at in used:
                outcome, state = pool.redeem_code(cursor, campaign_id, code, _micros(at))
                counts[outcome] += 1
                if state is not None:
                    self._redeemed(cursor, state, at, thank)
        return counts

    def prune_seen(self, retention: timedelta = SEEN_RETENTION) -> int:
        """Forget seen marks older than `retention`; returns how many. Blocking."""
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM seen WHERE seen_at < ?", (_micros(self.clock() - retention),))
            return cursor.rowcount

    # -- forgetting a customer ------------------------------------------------------------------------------

    def forget_customer(self, customer_id: str, tables: Sequence[CustomerRows] = CUSTOMER_ROWS) -> Forgotten:
        """Delete the customer's rows from every table of `tables`, and take their name off the single-use
        codes they were handed, in one transaction. Running it again finds nothing more to do. Blocking.

        A handed-out code stays handed out (never back in the pool: it may still be shown at the till);
        its customer becomes a random `forgotten-…` value: one per code, so that nothing links the codes of
        one person, and unique, as a campaign's handed-out codes must be.
        """
        rows: dict[str, int] = {}
        with self._transaction() as cursor:
            cursor.execute(
                "SELECT DISTINCT batch FROM events WHERE customer_id = ? AND batch IS NOT NULL",
                (customer_id,),
            )
            batches = tuple(sorted(number for (number,) in cursor.fetchall()))
            for rows_of in tables:
                where, params = rows_of.where(customer_id)
                cursor.execute(f"DELETE FROM {rows_of.table} WHERE {where}", params)
                rows[rows_of.table] = cursor.rowcount
            cursor.execute("SELECT campaign_id, code FROM codes WHERE customer_id = ?", (customer_id,))
            handed = cursor.fetchall()
            for campaign_id, code in handed:
                cursor.execute(
                    "UPDATE codes SET customer_id = ? WHERE campaign_id = ? AND code = ?",
                    (FORGOTTEN_PREFIX + secrets.token_hex(8), campaign_id, code),
                )
            rows["codes"] = len(handed)
        return Forgotten(rows, batches)

    def unflushed(self, batches: Sequence[int]) -> list[int]:
        """Those of `batches` not yet flushed (a read). Blocking."""
        if not batches:
            return []
        marks = ", ".join("?" * len(batches))
        rows = self._query(f"SELECT batch FROM batches WHERE batch IN ({marks}) ORDER BY batch", batches)
        return [number for (number,) in rows]

    def add_deletion_request(self, code: str, reason: str, customer_id: str) -> None:
        """Record a pending request to delete the customer's data under its confirmation `code`. Blocking."""
        with self._transaction() as cursor:
            cursor.execute(
                _INSERT_DELETION_REQUEST,
                (code, reason, customer_id, str(RequestStatus.PENDING), _micros(self.clock())),
            )

    @staticmethod
    def _deletion_request(customer_id: str, now: int) -> tuple:
        """The row of a customer's own request (they wrote a delete word), under a new code."""
        return (deletion_code(), CUSTOMER_REASON, customer_id, str(RequestStatus.PENDING), now)

    def pending_deletion_requests(self, before: datetime | None = None) -> list[tuple[str, str]]:
        """(code, customer id) of every pending deletion request (made before `before`, if given), oldest
        first (a read). Blocking."""
        rows = self._query(
            "SELECT code, customer_id FROM deletion_requests WHERE status = ? AND requested_at < ?"
            " ORDER BY requested_at, code",
            (str(RequestStatus.PENDING), _micros(before) if before is not None else 2**62),
        )
        return [(code, customer_id) for code, customer_id in rows]

    def finish_deletion_request(self, code: str, status: RequestStatus, removed: str) -> None:
        """Mark a request done (`removed`: JSON counts) and forget whose it was. Blocking."""
        with self._transaction() as cursor:
            cursor.execute(
                "UPDATE deletion_requests SET status = ?, done_at = ?, removed = ?, customer_id = NULL"
                " WHERE code = ?",
                (str(status), _micros(self.clock()), removed, code),
            )

    def deletion_request(self, code: str) -> DeletionRequest | None:
        """The request with this confirmation code, None when there is none (a read). Blocking."""
        rows = self._query(
            "SELECT code, reason, status, requested_at, done_at, removed FROM deletion_requests"
            " WHERE code = ?",
            (code,),
        )
        if not rows:
            return None
        code, reason, status, requested_at, done_at, removed = rows[0]
        done = None if done_at is None else _moment(done_at)
        return DeletionRequest(code, reason, RequestStatus(status), _moment(requested_at), done, removed)

    # -- the outbox -----------------------------------------------------------------------------------------

    def claim(self, limit: int, lease: timedelta) -> list[Reply]:
        """Lease up to `limit` replies that are due, oldest first, for `lease`; no other claim gets them
        until the lease runs out (`complete` or `retry` ends it sooner). Blocking."""
        now = self.clock()
        with self._transaction() as cursor:
            cursor.execute(
                _CLAIM.format(skip_locked=self.engine.skip_locked),
                (_micros(now + lease), _micros(now), limit),
            )
            rows = cursor.fetchall()
        replies = [
            Reply(ReplyKind(kind), _event(event), _issued(code, token, expires_at))
            for kind, code, token, expires_at, *event in rows
        ]
        return sorted(replies, key=lambda reply: (reply.answers.ts, reply.sent_id))

    def due(self) -> bool:
        """Whether a reply is due now (a read: no write transaction). Blocking."""
        return bool(self._query("SELECT 1 FROM outbox WHERE due_at <= ? LIMIT 1", (_micros(self.clock()),)))

    def owed(self) -> int:
        """How many replies the outbox holds, claimed or not. Blocking."""
        return self._query("SELECT count(*) FROM outbox")[0][0]

    def release_leases(self) -> int:
        """Make every leased reply due now; returns how many. For a store only this process uses (SQLite):
        after a crash, its replies are owed at once instead of when their leases run out. Blocking."""
        now = _micros(self.clock())
        with self._transaction() as cursor:
            cursor.execute("UPDATE outbox SET due_at = ? WHERE due_at > ?", (now, now))
            return cursor.rowcount

    def complete_many(
        self, outcomes: Sequence[tuple[str, Event]], retries: Sequence[tuple[str, datetime]] = ()
    ) -> int:
        """`complete` for each (reply id, outcome) and `retry` for each (reply id, when), in one transaction;
        returns how many outcomes were still owed. Blocking."""
        completed = 0
        with self._transaction() as cursor:
            if retries:
                cursor.executemany(
                    "UPDATE outbox SET due_at = ? WHERE reply_id = ?",
                    [(_micros(at), rid) for rid, at in retries],
                )
            for reply_id, outcome in outcomes:
                cursor.execute("DELETE FROM outbox WHERE reply_id = ?", (reply_id,))
                if cursor.rowcount:
                    cursor.execute(_INSERT_EVENT, _event_values(outcome))
                    completed += 1
                    if outcome.event is EventName.SEND_FAILED:
                        self._mark_unreachable(cursor, outcome)
                    broadcast_id = audience.broadcast_of(reply_id, outcome)
                    if broadcast_id is not None:
                        self._broadcast_outcome(cursor, broadcast_id, outcome)
        return completed

    def _mark_unreachable(self, cursor: Any, failed: Event) -> None:
        """A send the platform refused because the customer cannot be messaged (code 551: not available,
        subcode 1545041: blocked the page): no promotion goes to them until they write again."""
        detail = json.loads(failed.detail or "{}")
        if detail.get("code") == UNAVAILABLE_CODE or detail.get("subcode") == BLOCKED_SUBCODE:
            cursor.execute(
                "UPDATE customers SET unreachable_at = ? WHERE page_id = ? AND customer_id = ?",
                (_micros(self.clock()), failed.page_id, failed.customer_id),
            )

    def _broadcast_outcome(self, cursor: Any, broadcast_id: int, outcome: Event) -> None:
        """The broadcast's record of a welcome's outcome: the recipient sent (`broadcast_sent`) or skipped
        (`broadcast_skipped`: unreachable, or send_failed), whichever process sent it."""
        reason = None
        if outcome.event is EventName.SEND_FAILED:
            detail = json.loads(outcome.detail or "{}")
            unreachable = detail.get("code") == UNAVAILABLE_CODE or detail.get("subcode") == BLOCKED_SUBCODE
            reason = str(Reason.UNREACHABLE) if unreachable else audience.SEND_FAILED
        state = RecipientState.SENT if reason is None else RecipientState.SKIPPED
        cursor.execute(
            "UPDATE broadcast_recipients SET state = ?, reason = ?, updated_at = ?"
            " WHERE broadcast = ? AND page_id = ? AND customer_id = ? AND state = ?",
            (
                str(state),
                reason,
                _micros(self.clock()),
                broadcast_id,
                outcome.page_id,
                outcome.customer_id,
                str(RecipientState.SENDING),
            ),
        )
        if cursor.rowcount:
            event = (
                audience.sent_event(broadcast_id, outcome)
                if reason is None
                else audience.skipped_event(
                    broadcast_id,
                    outcome.page_id,
                    outcome.customer_id,
                    outcome.campaign_id,
                    outcome.variant,
                    reason,
                    outcome.ts,
                )
            )
            cursor.execute(_INSERT_EVENT, _event_values(event))

    def complete(self, reply_id: str, outcome: Event) -> bool:
        """End a reply: delete it from the outbox and buffer its outcome event (`*_sent`, `send_failed`) in
        the same transaction. Returns False, recording nothing, when it was not owed any more (another
        sender completed it after this one's lease ran out). Blocking."""
        return self.complete_many([(reply_id, outcome)]) == 1

    def retry(self, reply_id: str, at: datetime) -> None:
        """Release a claimed reply, to be claimed again from `at`. Blocking."""
        self.complete_many((), [(reply_id, at)])

    # -- audience and broadcasts ----------------------------------------------------------------------------

    def audience_customers(self, campaign_id: str) -> list[Customer]:
        """Every customer the store knows, with what decides whether the campaign may be sent to them now
        (a read: no write lock). Blocking."""
        return [_customer(row) for row in self._query(_CUSTOMERS, _already_sent_params(campaign_id))]

    def create_broadcast(self, campaign_id: str, rate_per_minute: int) -> int:
        """A new broadcast of the campaign, its recipients every customer known now, all pending; returns
        its number. Blocking."""
        now = _micros(self.clock())
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT INTO broadcasts (campaign_id, rate_per_minute, state, started_at) VALUES (?, ?, ?, ?)"
                " RETURNING broadcast",
                (campaign_id, rate_per_minute, str(BroadcastState.RUNNING), now),
            )
            (number,) = cursor.fetchone()
            cursor.execute(
                "INSERT INTO broadcast_recipients (broadcast, page_id, customer_id, state, updated_at)"
                " SELECT ?, page_id, customer_id, ?, ? FROM customers",
                (number, str(RecipientState.PENDING), now),
            )
        return number

    def unfinished_broadcast(self, campaign_id: str) -> tuple[int, int] | None:
        """The campaign's latest broadcast that is not finished (stopped, or its process died): its number
        and rate; None when there is none. Blocking."""
        rows = self._query(
            "SELECT broadcast, rate_per_minute FROM broadcasts WHERE campaign_id = ? AND state <> ?"
            " ORDER BY broadcast DESC LIMIT 1",
            (campaign_id, str(BroadcastState.FINISHED)),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def set_broadcast_state(
        self, broadcast_id: int, state: BroadcastState, rate_per_minute: int | None = None
    ) -> None:
        """Move a broadcast to `state` (and its rate, if given); finishing stamps `finished_at`. Blocking."""
        now = _micros(self.clock()) if state is BroadcastState.FINISHED else None
        with self._transaction() as cursor:
            cursor.execute(
                "UPDATE broadcasts SET state = ?, finished_at = ?,"
                " rate_per_minute = coalesce(?, rate_per_minute) WHERE broadcast = ?",
                (str(state), now, rate_per_minute, broadcast_id),
            )

    def pending_recipients(self, broadcast_id: int) -> list[tuple[str, str]]:
        """(page, customer) of the broadcast's recipients not decided yet, in a stable order. Blocking."""
        rows = self._query(
            "SELECT page_id, customer_id FROM broadcast_recipients WHERE broadcast = ? AND state = ?"
            " ORDER BY page_id, customer_id",
            (broadcast_id, str(RecipientState.PENDING)),
        )
        return [(page_id, customer_id) for page_id, customer_id in rows]

    def take_recipient(
        self,
        broadcast_id: int,
        page_id: str,
        customer_id: str,
        *,
        campaign_id: str,
        variant: str | None,
        lease: timedelta,
    ) -> Reply | Reason | None:
        """Decide, now, for one pending recipient, in one transaction: when the campaign may be sent to them,
        owe them its welcome in the outbox, leased for `lease` by the caller, and return that reply; else
        record them skipped (`broadcast_skipped`) and return the reason. None: not pending any more (another
        process took them). Blocking."""
        now = self.clock()
        lock = " FOR UPDATE OF c" if self.engine.name == "postgresql" else ""  # against a concurrent opt-out
        with self._transaction() as cursor:
            cursor.execute(
                f"{_CUSTOMERS} WHERE c.page_id = ? AND c.customer_id = ?{lock}",
                (*_already_sent_params(campaign_id), page_id, customer_id),
            )
            row = cursor.fetchone()
            # A customer whose row is gone (their data deleted) has no window the store knows of.
            customer = _customer(row) if row else Customer(page_id, customer_id)
            reason = audience.skip_reason(customer, now)
            state = RecipientState.SENDING if reason is None else RecipientState.SKIPPED
            cursor.execute(
                "UPDATE broadcast_recipients SET state = ?, reason = ?, updated_at = ?"
                " WHERE broadcast = ? AND page_id = ? AND customer_id = ? AND state = ?",
                (
                    str(state),
                    None if reason is None else str(reason),
                    _micros(now),
                    broadcast_id,
                    page_id,
                    customer_id,
                    str(RecipientState.PENDING),
                ),
            )
            if not cursor.rowcount:
                return None
            if reason is not None:
                skipped = audience.skipped_event(
                    broadcast_id, page_id, customer_id, campaign_id, variant, str(reason), now
                )
                cursor.execute(_INSERT_EVENT, _event_values(skipped))
                return reason
            reply = audience.welcome_reply(broadcast_id, customer, campaign_id, variant, now)
            # Owed already leased: no sender claims it unless this one dies and its lease runs out.
            cursor.execute(_INSERT_REPLY, _reply_values(reply, 0, _micros(now + lease)))
            return reply

    def release_recipient(self, broadcast_id: int, reply: Reply) -> bool:
        """Take back a broadcast's welcome that was not sent (the platform asked to slow down; the broadcast
        stops): out of the outbox, the recipient pending again. False: it was not owed any more. Blocking."""
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM outbox WHERE reply_id = ?", (reply.sent_id,))
            if not cursor.rowcount:
                return False
            cursor.execute(
                "UPDATE broadcast_recipients SET state = ?, updated_at = ?"
                " WHERE broadcast = ? AND page_id = ? AND customer_id = ?",
                (
                    str(RecipientState.PENDING),
                    _micros(self.clock()),
                    broadcast_id,
                    reply.answers.page_id,
                    reply.customer_id,
                ),
            )
            return True

    def reclaim_stranded(self, broadcast_id: int) -> int:
        """Recipients a dead broadcast process left with a welcome in the outbox: those whose lease ran out
        (no sender holds them) become pending again, to be checked and sent afresh. Returns how many are still
        leased (by a sender that may be sending them now: their outcome will come). Blocking."""
        now = _micros(self.clock())
        rows = self._query(
            "SELECT customer_id FROM broadcast_recipients WHERE broadcast = ? AND state = ?",
            (broadcast_id, str(RecipientState.SENDING)),
        )
        held = 0
        for (customer_id,) in rows:
            reply_id = f"{audience.BROADCAST_ID_PREFIX}{broadcast_id}.{customer_id}.w"
            with self._transaction() as cursor:
                cursor.execute("DELETE FROM outbox WHERE reply_id = ? AND due_at <= ?", (reply_id, now))
                if not cursor.rowcount:
                    held += 1
                    continue
                cursor.execute(
                    "UPDATE broadcast_recipients SET state = ?, updated_at = ?"
                    " WHERE broadcast = ? AND customer_id = ? AND state = ?",
                    (
                        str(RecipientState.PENDING),
                        now,
                        broadcast_id,
                        customer_id,
                        str(RecipientState.SENDING),
                    ),
                )
        return held

    def broadcast_results(self, campaign_id: str | None = None) -> list[BroadcastResult]:
        """Every broadcast (of `campaign_id`, or of all campaigns), newest first: recipients sent, skipped by
        reason, not done yet (a read: no write lock). Blocking."""
        rows = self._query(
            "SELECT b.broadcast, b.campaign_id, b.rate_per_minute, b.state, b.started_at, b.finished_at,"
            " r.state, r.reason, count(r.customer_id)"
            " FROM broadcasts AS b LEFT JOIN broadcast_recipients AS r ON r.broadcast = b.broadcast"
            " WHERE CAST(? AS TEXT) IS NULL OR b.campaign_id = ?"
            " GROUP BY b.broadcast, b.campaign_id, b.rate_per_minute, b.state, b.started_at, b.finished_at,"
            " r.state, r.reason ORDER BY b.broadcast DESC",
            (campaign_id, campaign_id),
        )
        results: dict[int, BroadcastResult] = {}
        for number, campaign, rate, state, started, finished, recipient_state, reason, count in rows:
            result = results.get(number) or BroadcastResult(
                number,
                campaign,
                rate,
                BroadcastState(state),
                _moment(started),
                None if finished is None else _moment(finished),
            )
            if recipient_state == RecipientState.SENT:
                result = dataclasses.replace(result, sent=result.sent + count)
            elif recipient_state == RecipientState.SKIPPED:
                result.skipped[reason] = result.skipped.get(reason, 0) + count
            elif recipient_state is not None:
                result = dataclasses.replace(result, pending=result.pending + count)
            results[number] = result
        return list(results.values())

    # -- flush batches --------------------------------------------------------------------------------------

    def next_batch(self, limit: int) -> Batch | None:
        """Number the oldest `limit` events not in a batch, commit that, then return them (None: no events).

        Until `flushed(number)`, the batch comes back from `pending_batches` with the same rows: after a
        crash, the flusher writes the same file again. Blocking."""
        if not self._query("SELECT seq FROM events WHERE batch IS NULL LIMIT 1"):
            return None  # without a write transaction: the flusher asks often
        with self._transaction() as cursor:
            cursor.execute(
                "INSERT INTO batches (created_at) VALUES (?) RETURNING batch", (_micros(self.clock()),)
            )
            (number,) = cursor.fetchone()
            cursor.execute(_TAKE_BATCH.format(skip_locked=self.engine.skip_locked), (number, limit))
            if cursor.rowcount == 0:  # another flusher took them meanwhile
                cursor.execute("DELETE FROM batches WHERE batch = ?", (number,))
                return None
        rows = self._query(f"SELECT {_EVENT_COLUMNS} FROM events WHERE batch = ? ORDER BY seq", (number,))
        return Batch(number, tuple(_event(row) for row in rows))

    def pending_batches(self) -> list[Batch]:
        """Batches numbered and not yet flushed, oldest first. Blocking."""
        rows = self._query(
            f"SELECT batch, {_EVENT_COLUMNS} FROM events WHERE batch IS NOT NULL ORDER BY batch, seq"
        )
        batches: dict[int, list[Event]] = {}
        for row in rows:
            batches.setdefault(row[0], []).append(_event(row[1:]))
        return [Batch(number, tuple(events)) for number, events in batches.items()]

    def flushed(self, number: int) -> None:
        """Forget a batch whose file is written. Blocking."""
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM events WHERE batch = ?", (number,))
            cursor.execute("DELETE FROM batches WHERE batch = ?", (number,))
