"""The bot's exact, shared state in SQLite or PostgreSQL: seen marks, events, the outbox, flush batches.

- `record` writes a webhook's new events, their seen marks and the replies they call for in one transaction;
  concurrent callers share transactions (group commit).
- `claim` / `complete` / `retry`: senders lease replies from the outbox (a claim first withdraws the
  promotions owed to customers who opted out or were taken over since).
- `next_batch` / `pending_batches` / `flushed`: the flusher moves events out in numbered batches.

Times are µs since the epoch (UTC), from the bot's clock except for the events' own `ts`.
"""

# The SQL is assembled from constant column lists and placeholders; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot import audience, customers, engines, pool
from bot.audience import Reason, RecipientState
from bot.config import SQLITE_FILE
from bot.engines import Engine
from bot.events import Event
from bot.facts import EventName
from bot.flow import Reply, ReplyKind
from bot.migrations import MIGRATIONS, Migration, migrate
from bot.rows import (
    CUSTOMER_REASON,
    EVENT_COLUMNS,
    INSERT_DELETION_REQUEST,
    INSERT_EVENT,
    INSERT_REPLY,
    ROWS_PER_STATEMENT,
    Cursor,
    RequestStatus,
    deletion_code,
    event_values,
    issued_code,
    micros,
    reply_values,
    row_event,
)

SEEN_RETENTION = timedelta(days=7)  # Messenger redelivers an unacknowledged webhook for at most a day
# Messenger gives a webhook 5 s: a store that has not answered by then (a server frozen, a network that drops
# packets) gets the webhook a 503 it can act on, instead of an answer the platform no longer waits for.
RECORD_TIMEOUT_S = 4.0
CHECK_TIMEOUT_S = 2.0  # a health check's answer within a load balancer's patience
# A full disk refuses a webhook's commit while the small write of a health check still fits in pages the
# file already has: after a commit refused for want of room, the store reads as failing until one succeeds,
# or for this long. Any other failure (a server restarting) is the health check's own transaction's to tell.
WRITE_FAILURE_HOLD_S = 60.0
DISK_FULL_SQLSTATE = "53100"  # PostgreSQL's disk_full


class DatabaseError(RuntimeError):
    """The database could not do what was asked (unreachable, locked too long, full, closed)."""


def out_of_room(error: DatabaseError) -> bool:
    """Whether `error` was the engine's refusal for want of room: SQLite's SQLITE_FULL ("database or disk is
    full"), PostgreSQL's disk_full."""
    cause = error.__cause__
    if isinstance(cause, sqlite3.Error):
        return getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return getattr(cause, "sqlstate", None) == DISK_FULL_SQLSTATE


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Batch:
    """Events given to the flusher under one number: the same rows whenever the batch is read again."""

    number: int
    events: tuple[Event, ...]


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
RETURNING kind, code, token, expires_at, {EVENT_COLUMNS}"""
_TAKE_BATCH = """
UPDATE events SET batch = ?
WHERE seq IN (SELECT seq FROM events WHERE batch IS NULL ORDER BY seq LIMIT ? {skip_locked})"""

# A webhook for the next commit: its events, their replies, and the future that gets the new events.
_Waiting = tuple[Sequence[Event], Sequence[Reply], asyncio.Future[list[Event]]]


class Database:
    """The transactional store. Open with `Database.open`; blocking methods are safe from any thread (each
    thread has its own connection); `record` is for the event loop."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self.engine = engine
        self.clock = clock
        self.commits = 0  # transactions `record` has committed, for metrics
        self.store_id = ""
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(1, "promobot-database")  # runs `record`'s commits, one at a time
        self._checker = ThreadPoolExecutor(1, "promobot-health")  # `check`: a frozen server holds it alone
        self._write_failure: tuple[float, DatabaseError] | None = None  # (monotonic time, error) of a commit
        self._waiting: list[_Waiting] = []
        self._committer: asyncio.Task[None] | None = None
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
            engine = engines.sqlite(path)
        elif url.startswith(("postgresql://", "postgres://")):
            engine = engines.postgresql(url)
        else:
            scheme = url.split(":", 1)[0]
            raise DatabaseError(
                f"database URL scheme {scheme!r} is not supported: use postgresql:// or sqlite:///"
            )
        database = cls(engine, clock)
        try:
            migrate(database._connection(), engine.name, migrations)
            with database.transaction() as cursor:
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
        self._checker.shutdown(wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def check(self, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        """Raise DatabaseError unless the database takes a write transaction within `timeout_s` and the
        latest commit of webhooks was not refused for want of room (a full disk) in the last
        WRITE_FAILURE_HOLD_S (for health checks)."""
        failure = self._write_failure
        if failure is not None and time.monotonic() - failure[0] < WRITE_FAILURE_HOLD_S:
            raise DatabaseError(f"the latest webhooks could not be recorded: {failure[1]}")
        try:
            self._checker.submit(self._take_write_transaction).result(timeout_s)
        except FutureTimeout:
            raise DatabaseError(f"{self.engine.where} did not answer within {timeout_s:g} s") from None

    def _take_write_transaction(self) -> None:
        with self.transaction() as cursor:
            cursor.execute("SELECT 1 FROM schema_migrations LIMIT 1")

    # -- connections and transactions ---------------------------------------------------------------------

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self._closed:
                raise DatabaseError(f"{self.engine.where} is closed")
            try:
                connection = self.engine.connect()
            except self.engine.error as exc:
                raise DatabaseError(f"{self.engine.where}: could not connect: {exc}") from exc
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
    def transaction(self, pipelined: bool = False) -> Iterator[Cursor]:
        """A cursor inside a transaction, committed when the block ends; engine errors as DatabaseError.

        `pipelined` (PostgreSQL): each statement is sent without waiting for its answer, until a result is
        fetched or the block ends, which saves round trips; for blocks that read no `rowcount`, which is
        unknown until then. An error surfaces at the next fetch, or at the end (the commit's)."""
        connection = self._connection()
        pipeline = self.engine.pipeline(connection) if pipelined else contextlib.nullcontext()
        try:
            with pipeline, contextlib.closing(connection.cursor()) as cursor:
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

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read (its own snapshot: no explicit transaction, no write lock)."""
        connection = self._connection()
        try:
            rows: list[Any] = connection.execute(sql, params).fetchall()
            return rows
        except self.engine.error as exc:
            self._forget(connection)
            raise DatabaseError(f"{self.engine.where} failed: {exc}") from exc

    # -- recording webhooks --------------------------------------------------------------------------------

    async def record(
        self, events: Sequence[Event], replies: Sequence[Reply], *, timeout_s: float = RECORD_TIMEOUT_S
    ) -> list[Event]:
        """Record a webhook's events and the replies they call for, once committed.

        Events whose id was recorded before (a redelivery, by this process or another) are left out, and so
        are their replies. Callers that arrive while a commit runs share the next transaction.
        Returns: the events that were new, in order. Raises: DatabaseError, when the commit failed (nothing
        of it was recorded) or did not end within `timeout_s` (a commit under way may still record it: the
        platform's redelivery then finds it seen, and its replies owed once).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Event]] = loop.create_future()
        waiting = (events, replies, future)
        self._waiting.append(waiting)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_waiting())
        # A timer handle, not asyncio.timeout with a shield: this is every webhook's path (6 µs against 1).
        expiry = loop.call_later(timeout_s, self._expire, waiting, timeout_s)
        try:
            return await future
        finally:
            expiry.cancel()

    def _expire(self, waiting: _Waiting, timeout_s: float) -> None:
        """`record`'s caller waited `timeout_s`: answer it with an error. A commit under way that holds its
        webhook ends later, and its outcome is no one's (`_commit_waiting` leaves a done future alone)."""
        future = waiting[2]
        if future.done():
            return
        self._waiting = [entry for entry in self._waiting if entry is not waiting]  # not in a commit yet
        future.set_exception(DatabaseError(f"{self.engine.where} did not answer within {timeout_s:g} s"))

    async def _commit_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    news = await loop.run_in_executor(self._writer, self._commit, group)
                except Exception as exc:
                    if isinstance(exc, DatabaseError) and out_of_room(exc):
                        self._write_failure = (time.monotonic(), exc)
                    for _, _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._write_failure = None
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
        now = micros(self.clock())
        # Pipelined: with PostgreSQL, the statements whose results it does not read (the upserts, the
        # inserts, the commit) take no round trip of their own.
        with self.transaction(pipelined=True) as cursor:
            # Sorted: two transactions inserting the same ids take their locks in one order (no deadlock).
            ids = sorted({event.event_id for events, _, _ in group for event in events})
            fresh: set[str] = set()
            for start in range(0, len(ids), ROWS_PER_STATEMENT):
                chunk = ids[start : start + ROWS_PER_STATEMENT]
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
            standing = customers.keep(cursor, [event for new in news for event in new], now)
            event_rows, reply_rows = {}, []
            for (_, replies, _), new in zip(group, news, strict=True):
                new[:] = [event for event in new if event.event_id not in standing.unchanged]
                new_ids = set()
                for event in new:
                    new_ids.add(event.event_id)
                    event_rows[event.event_id] = event_values(event)
                ordinals: dict[str, int] = {}
                owed = [r for r in replies if r.answers.event_id in new_ids and standing.owes(r)]
                for reply in self._hand_out_codes(cursor, owed, now, new, event_rows):
                    ordinals[reply.answers.event_id] = ordinal = ordinals.get(reply.answers.event_id, -1) + 1
                    reply_rows.append(reply_values(reply, ordinal, now))
            if event_rows:
                cursor.executemany(INSERT_EVENT, event_rows.values())
            if reply_rows:
                cursor.executemany(INSERT_REPLY, reply_rows)
            for event in (e for new in news for e in new if e.event is EventName.DELETION_REQUESTED):
                # Carried out by bot.privacy.process_pending once the answer has had time to go out.
                cursor.execute(INSERT_DELETION_REQUEST, self._deletion_request(event.customer_id, now))
        return news

    def _hand_out_codes(
        self,
        cursor: Cursor,
        replies: list[Reply],
        now: int,
        new: list[Event],
        event_rows: dict[str, tuple[object, ...]],
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
                expires_us=None if expiry is None else micros(expiry),
                engine=self.engine,
            )
            if issued is not None:
                code = issued_code(*issued)
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
            event_rows[empty.event_id] = event_values(empty)
        return replies

    def add_codes(
        self, campaign_id: str, codes: Sequence[str], expiry: Callable[[datetime], datetime | None]
    ) -> pool.PoolStatus:
        """Give the campaign single-use codes: add those of `codes` its pool lacks, and from now on hand one
        out with each code reply (`expiry` of the reveal's time: when it stops being valid). Returns the
        pool's size and how many are free. Blocking."""
        with self.transaction() as cursor:
            pool.add_codes(cursor, campaign_id, codes)
            status = pool.status(cursor, campaign_id)
        self._expiry[campaign_id] = expiry
        return status

    def prune_seen(self, retention: timedelta = SEEN_RETENTION) -> int:
        """Forget seen marks older than `retention`; returns how many. Blocking."""
        with self.transaction() as cursor:
            cursor.execute("DELETE FROM seen WHERE seen_at < ?", (micros(self.clock() - retention),))
            pruned: int = cursor.rowcount
            return pruned

    def unflushed(self, batches: Sequence[int]) -> list[int]:
        """Those of `batches` not yet flushed (a read). Blocking."""
        if not batches:
            return []
        marks = ", ".join("?" * len(batches))
        rows = self.query(f"SELECT batch FROM batches WHERE batch IN ({marks}) ORDER BY batch", batches)
        return [number for (number,) in rows]

    @staticmethod
    def _deletion_request(customer_id: str, now: int) -> tuple[str, str, str, str, int]:
        """The row of a customer's own request (they wrote a delete word), under a new code."""
        return (deletion_code(), CUSTOMER_REASON, customer_id, str(RequestStatus.PENDING), now)

    # -- the outbox -----------------------------------------------------------------------------------------

    def claim(self, limit: int, lease: timedelta) -> list[Reply]:
        """Lease up to `limit` replies that are due, oldest first, for `lease`; no other claim gets them
        until the lease runs out (`complete` or `retry` ends it sooner).

        A promotion claimed for a customer who opted out or whom staff took over since it was owed is
        withdrawn instead, in the same transaction: deleted, with a `reply_withdrawn` event (a broadcast's
        welcome: its recipient skipped). Blocking."""
        now = self.clock()
        with self.transaction() as cursor:
            while True:
                cursor.execute(
                    _CLAIM.format(skip_locked=self.engine.skip_locked),
                    (micros(now + lease), micros(now), limit),
                )
                claimed = [
                    Reply(ReplyKind(kind), row_event(event), issued_code(code, token, expires_at))
                    for kind, code, token, expires_at, *event in cursor.fetchall()
                ]
                replies = self._withdraw_from_quiet(cursor, claimed, now)
                if replies or not claimed:  # all withdrawn: more may be due
                    break
        return sorted(replies, key=lambda reply: (reply.answers.ts, reply.sent_id))

    def _withdraw_from_quiet(self, cursor: Cursor, claimed: list[Reply], now: datetime) -> list[Reply]:
        """The claimed replies still owed; the promotions to customers now quiet are deleted, each recorded
        as `reply_withdrawn`. Only what a claim leased is looked at: a reply in flight is never recalled.

        A withdrawn single-use code stays handed out to its customer: no code is ever given to two, and the
        customer gets the same one should they reveal again after opting back in."""
        promotions = {(r.answers.page_id, r.customer_id) for r in claimed if r.is_promotion}
        quiet = customers.quiet(cursor, sorted(promotions), micros(now)) if promotions else {}
        if not quiet:
            return claimed
        owed = []
        for reply in claimed:
            reason = quiet.get((reply.answers.page_id, reply.customer_id)) if reply.is_promotion else None
            if reason is None:
                owed.append(reply)
                continue
            self._store_outcome(cursor, reply.sent_id, reply.withdrawn(now, str(reason)))
        return owed

    def due(self) -> bool:
        """Whether a reply is due now (a read: no write transaction). Blocking."""
        return bool(self.query("SELECT 1 FROM outbox WHERE due_at <= ? LIMIT 1", (micros(self.clock()),)))

    def owed(self) -> int:
        """How many replies the outbox holds, claimed or not. Blocking."""
        owed: int = self.query("SELECT count(*) FROM outbox")[0][0]
        return owed

    def release_leases(self) -> int:
        """Make every leased reply due now; returns how many. For a store only this process uses (SQLite):
        after a crash, its replies are owed at once instead of when their leases run out. Blocking."""
        now = micros(self.clock())
        with self.transaction() as cursor:
            cursor.execute("UPDATE outbox SET due_at = ? WHERE due_at > ?", (now, now))
            released: int = cursor.rowcount
            return released

    def complete_many(
        self, outcomes: Sequence[tuple[str, Event]], retries: Sequence[tuple[str, datetime]] = ()
    ) -> int:
        """`complete` for each (reply id, outcome) and `retry` for each (reply id, when), in one transaction;
        returns how many outcomes were still owed. Blocking."""
        completed = 0
        with self.transaction() as cursor:
            if retries:
                cursor.executemany(
                    "UPDATE outbox SET due_at = ? WHERE reply_id = ?",
                    [(micros(at), rid) for rid, at in retries],
                )
            for reply_id, outcome in outcomes:
                completed += self._store_outcome(cursor, reply_id, outcome)
        return completed

    def _store_outcome(self, cursor: Cursor, reply_id: str, outcome: Event) -> bool:
        """Take a reply out of the outbox and store its outcome (sent, failed or withdrawn), with what it
        means for the customer and the broadcast it belongs to; False when it was no longer owed."""
        cursor.execute("DELETE FROM outbox WHERE reply_id = ?", (reply_id,))
        if not cursor.rowcount:
            return False
        cursor.execute(INSERT_EVENT, event_values(outcome))
        if outcome.event is EventName.SEND_FAILED:
            customers.mark_unreachable(cursor, outcome, micros(self.clock()))
        broadcast_id = audience.broadcast_of(reply_id, outcome)
        if broadcast_id is not None:
            self._broadcast_outcome(cursor, broadcast_id, outcome)
        return True

    def _broadcast_outcome(self, cursor: Cursor, broadcast_id: int, outcome: Event) -> None:
        """The broadcast's record of a welcome's outcome: the recipient sent (`broadcast_sent`) or skipped
        (`broadcast_skipped`: unreachable, or send_failed; or the withdrawal's reason), whichever process
        sent or withdrew it."""
        reason = None
        if outcome.event is EventName.SEND_FAILED:
            reason = str(Reason.UNREACHABLE) if customers.unreachable(outcome) else audience.SEND_FAILED
        elif outcome.event is EventName.REPLY_WITHDRAWN:
            reason = str(json.loads(outcome.detail or "{}")["reason"])
        state = RecipientState.SENT if reason is None else RecipientState.SKIPPED
        cursor.execute(
            "UPDATE broadcast_recipients SET state = ?, reason = ?, updated_at = ?"
            " WHERE broadcast = ? AND page_id = ? AND customer_id = ? AND state = ?",
            (
                str(state),
                reason,
                micros(self.clock()),
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
            cursor.execute(INSERT_EVENT, event_values(event))

    def complete(self, reply_id: str, outcome: Event) -> bool:
        """End a reply: delete it from the outbox and buffer its outcome event (`*_sent`, `send_failed`) in
        the same transaction. Returns False, recording nothing, when it was not owed any more (another
        sender completed it after this one's lease ran out). Blocking."""
        return self.complete_many([(reply_id, outcome)]) == 1

    def retry(self, reply_id: str, at: datetime) -> None:
        """Release a claimed reply, to be claimed again from `at`. Blocking."""
        self.complete_many((), [(reply_id, at)])

    # -- flush batches --------------------------------------------------------------------------------------

    def next_batch(self, limit: int) -> Batch | None:
        """Number the oldest `limit` events not in a batch, commit that, then return them (None: no events).

        Until `flushed(number)`, the batch comes back from `pending_batches` with the same rows: after a
        crash, the flusher writes the same file again. Blocking."""
        if not self.query("SELECT seq FROM events WHERE batch IS NULL LIMIT 1"):
            return None  # without a write transaction: the flusher asks often
        with self.transaction() as cursor:
            cursor.execute(
                "INSERT INTO batches (created_at) VALUES (?) RETURNING batch", (micros(self.clock()),)
            )
            (number,) = cursor.fetchone()
            cursor.execute(_TAKE_BATCH.format(skip_locked=self.engine.skip_locked), (number, limit))
            if cursor.rowcount == 0:  # another flusher took them meanwhile
                cursor.execute("DELETE FROM batches WHERE batch = ?", (number,))
                return None
        rows = self.query(f"SELECT {EVENT_COLUMNS} FROM events WHERE batch = ? ORDER BY seq", (number,))
        return Batch(number, tuple(row_event(row) for row in rows))

    def pending_batches(self) -> list[Batch]:
        """Batches numbered and not yet flushed, oldest first. Blocking."""
        rows = self.query(
            f"SELECT batch, {EVENT_COLUMNS} FROM events WHERE batch IS NOT NULL ORDER BY batch, seq"
        )
        batches: dict[int, list[Event]] = {}
        for row in rows:
            batches.setdefault(row[0], []).append(row_event(row[1:]))
        return [Batch(number, tuple(events)) for number, events in batches.items()]

    def flushed(self, number: int) -> None:
        """Forget a batch whose file is written. Blocking."""
        with self.transaction() as cursor:
            cursor.execute("DELETE FROM events WHERE batch = ?", (number,))
            cursor.execute("DELETE FROM batches WHERE batch = ?", (number,))
