"""The transactional store's schema, as numbered steps applied in order when the database is opened.

A step is never edited once released: a change is a new step (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# The type of a column that numbers rows, never reusing a number (batch numbers name files).
_AUTO_ID = {
    "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgresql": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}
# The key of the PostgreSQL advisory lock that migrations hold ("promobot" in ASCII).
MIGRATION_LOCK = 0x70726F6D6F626F74


class MigrationError(RuntimeError):
    """A database this version of promobot cannot use."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of the schema: its number, what it does, its statements (`{auto_id}`: see _AUTO_ID)."""

    version: int
    name: str
    statements: tuple[str, ...]


# The columns of an event, in the order of bot.events.Event's fields; times are µs since the epoch (UTC), as
# BIGINT on both engines, so that a value means the same whichever engine stores it.
_EVENT_COLUMNS = """
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    page_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    event TEXT NOT NULL,
    variant TEXT,
    button TEXT,
    message_digest BIGINT,
    detail TEXT,
    watermark BIGINT"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "seen marks, events buffer, batches, outbox",
        (
            # Which inbound events were recorded, when (the bot's clock): a redelivery is recorded once.
            "CREATE TABLE seen (event_id TEXT PRIMARY KEY, seen_at BIGINT NOT NULL)",
            "CREATE INDEX seen_by_time ON seen (seen_at)",
            # A batch of events on its way to a Parquet file; its number names the file.
            "CREATE TABLE batches (batch {auto_id}, created_at BIGINT NOT NULL)",
            # Events waiting for the flusher; `batch` is set once they are given to one.
            f"CREATE TABLE events (seq {{auto_id}}, batch BIGINT, {_EVENT_COLUMNS})",
            "CREATE INDEX events_by_batch ON events (batch)",
            # Replies owed: the event each answers, in `ordinal` order among that event's replies. A claimed
            # reply's `due_at` is the end of its lease.
            "CREATE TABLE outbox (reply_id TEXT PRIMARY KEY, kind TEXT NOT NULL, ordinal INTEGER NOT NULL,"
            f" due_at BIGINT NOT NULL, claims INTEGER NOT NULL DEFAULT 0, {_EVENT_COLUMNS})",
            "CREATE INDEX outbox_by_due ON outbox (due_at)",
            "CREATE INDEX outbox_by_event ON outbox (event_id, ordinal)",
            # One row: this database's name for its files, the same whichever instance writes them.
            "CREATE TABLE store_identity (one INTEGER PRIMARY KEY CHECK (one = 1), store_id TEXT NOT NULL)",
        ),
    ),
    Migration(
        2,
        "single-use coupon codes",
        (
            # A campaign's pool of codes, in the order of its file (`seq`). A code handed out names its
            # customer (one code per customer and campaign), its till link's token, when it stops being valid.
            "CREATE TABLE codes (campaign_id TEXT NOT NULL, code TEXT NOT NULL, seq BIGINT NOT NULL,"
            " customer_id TEXT, page_id TEXT, variant TEXT, token TEXT UNIQUE, assigned_at BIGINT,"
            " expires_at BIGINT, redeemed_at BIGINT, PRIMARY KEY (campaign_id, code))",
            "CREATE UNIQUE INDEX codes_by_customer ON codes (campaign_id, customer_id)"
            " WHERE customer_id IS NOT NULL",
            "CREATE INDEX codes_free ON codes (campaign_id, seq) WHERE customer_id IS NULL",
            # The code a reply shows, copied when the reply is owed: the sender needs no other table.
            "ALTER TABLE outbox ADD COLUMN code TEXT",
            "ALTER TABLE outbox ADD COLUMN token TEXT",
            "ALTER TABLE outbox ADD COLUMN expires_at BIGINT",
        ),
    ),
    Migration(
        3,
        "where a journey came from",
        (
            # bot.events.Event.source: an entry link's placement, an ad, or direct.
            "ALTER TABLE events ADD COLUMN source TEXT",
            "ALTER TABLE outbox ADD COLUMN source TEXT",
        ),
    ),
    Migration(
        4,
        "what the bot knows of each customer: messaging window, opt-out, takeover, reachability",
        (
            # One row per customer of a page, kept up to date by each webhook's transaction. Times are µs:
            # `last_action_at` and `ad_referral_at` on the platform's clock (the customer's own actions),
            # the others on the bot's.
            "CREATE TABLE customers (page_id TEXT NOT NULL, customer_id TEXT NOT NULL,"
            " last_action_at BIGINT, ad_referral_at BIGINT, opted_out_at BIGINT, handed_over_until BIGINT,"
            " unreachable_at BIGINT, PRIMARY KEY (page_id, customer_id))",
        ),
    ),
    Migration(
        5,
        "broadcasts of a campaign's welcome and their recipients",
        (
            # `python -m bot broadcast`: one row per broadcast, its pace and lifecycle (bot.broadcast's
            # BroadcastState); times on the bot's clock.
            "CREATE TABLE broadcasts (broadcast {auto_id}, campaign_id TEXT NOT NULL,"
            " rate_per_minute INTEGER NOT NULL, state TEXT NOT NULL, started_at BIGINT NOT NULL,"
            " finished_at BIGINT)",
            # The audience a broadcast took at its start, each customer's state (bot.broadcast's
            # RecipientState) and, once skipped or failed, why.
            "CREATE TABLE broadcast_recipients (broadcast BIGINT NOT NULL, page_id TEXT NOT NULL,"
            " customer_id TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, updated_at BIGINT NOT NULL,"
            " PRIMARY KEY (broadcast, page_id, customer_id))",
            "CREATE INDEX broadcast_recipients_by_customer ON broadcast_recipients (page_id, customer_id)",
        ),
    ),
    Migration(
        6,
        "requests to delete a customer's data",
        (
            # One row per request (Meta's data deletion callback, the customer's own words, the command
            # line), named by the confirmation code its requester is given. `customer_id` is kept only until
            # the request is done; `removed` then tells what was deleted (counts as JSON, never an id). Times
            # are µs on the bot's clock.
            "CREATE TABLE deletion_requests (code TEXT PRIMARY KEY, reason TEXT NOT NULL, customer_id TEXT,"
            " status TEXT NOT NULL, requested_at BIGINT NOT NULL, done_at BIGINT, removed TEXT)",
            "CREATE INDEX deletion_requests_pending ON deletion_requests (requested_at)"
            " WHERE status = 'pending'",
        ),
    ),
)


def migrate(connection: Any, engine: str, steps: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the `steps` this database has not had, in order, in one locked transaction.

    Parameters: `connection` a DB-API connection in autocommit mode taking `?` placeholders; `engine`
    "sqlite" or "postgresql"; `steps` ordered by version.
    Returns: the versions applied now (empty when the schema was current).
    Raises: MigrationError when the database has a step this code does not know (a newer promobot's).
    """
    cursor = connection.cursor()
    try:
        if engine == "sqlite":
            cursor.execute("BEGIN IMMEDIATE")  # the write lock, before the version is read
        else:
            cursor.execute("BEGIN")
            cursor.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        try:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            cursor.execute("SELECT version FROM schema_migrations")
            had = {version for (version,) in cursor.fetchall()}
            unknown = had - {step.version for step in steps}
            if unknown:
                raise MigrationError(
                    f"the database has schema version {max(unknown)}, which this promobot does not know "
                    f"(it knows up to {max(step.version for step in steps)}): run a newer promobot"
                )
            applied = []
            for step in sorted(steps, key=lambda step: step.version):
                if step.version in had:
                    continue
                for statement in step.statements:
                    cursor.execute(statement.format(auto_id=_AUTO_ID[engine]))
                cursor.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (step.version, step.name, datetime.now(UTC).isoformat()),
                )
                applied.append(step.version)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")
        return applied
    finally:
        cursor.close()
