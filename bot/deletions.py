"""A customer's rows in the transactional store deleted, and the deletion requests kept there.

Functions taking a bot.database.Database; each is one read or one transaction. Blocking.
"""

# The SQL is assembled from constant table and column names; every value is a bound parameter.
# ruff: noqa: S608

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from bot.database import Database
from bot.rows import INSERT_DELETION_REQUEST, RequestStatus, micros, moment


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


@dataclass(frozen=True, slots=True)
class DeletionRequest:
    """A request to delete a customer's data, as its status page shows it (never whose it is)."""

    code: str
    reason: str
    status: RequestStatus
    requested_at: datetime
    done_at: datetime | None
    removed: str | None  # JSON: counts of what was deleted


def forget_customer(
    database: Database, customer_id: str, tables: Sequence[CustomerRows] = CUSTOMER_ROWS
) -> Forgotten:
    """Delete the customer's rows from every table of `tables`, and take their name off the single-use
    codes they were handed, in one transaction. Running it again finds nothing more to do. Blocking.

    A handed-out code stays handed out, its customer a random `forgotten-…` value (docs/design.md).
    """
    rows: dict[str, int] = {}
    with database.transaction() as cursor:
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


def add_deletion_request(database: Database, code: str, reason: str, customer_id: str) -> None:
    """Record a pending request to delete the customer's data under its confirmation `code`. Blocking."""
    with database.transaction() as cursor:
        cursor.execute(
            INSERT_DELETION_REQUEST,
            (code, reason, customer_id, str(RequestStatus.PENDING), micros(database.clock())),
        )


def pending_deletion_requests(database: Database, before: datetime | None = None) -> list[tuple[str, str]]:
    """(code, customer id) of every pending deletion request (made before `before`, if given), oldest
    first (a read). Blocking."""
    rows = database.query(
        "SELECT code, customer_id FROM deletion_requests WHERE status = ? AND requested_at < ?"
        " ORDER BY requested_at, code",
        (str(RequestStatus.PENDING), micros(before) if before is not None else 2**62),
    )
    return [(code, customer_id) for code, customer_id in rows]


def finish_deletion_request(database: Database, code: str, status: RequestStatus, removed: str) -> None:
    """Mark a request done (`removed`: JSON counts) and forget whose it was. Blocking."""
    with database.transaction() as cursor:
        cursor.execute(
            "UPDATE deletion_requests SET status = ?, done_at = ?, removed = ?, customer_id = NULL"
            " WHERE code = ?",
            (str(status), micros(database.clock()), removed, code),
        )


def deletion_request(database: Database, code: str) -> DeletionRequest | None:
    """The request with this confirmation code, None when there is none (a read). Blocking."""
    rows = database.query(
        "SELECT code, reason, status, requested_at, done_at, removed FROM deletion_requests WHERE code = ?",
        (code,),
    )
    if not rows:
        return None
    code, reason, status, requested_at, done_at, removed = rows[0]
    done = None if done_at is None else moment(done_at)
    return DeletionRequest(code, reason, RequestStatus(status), moment(requested_at), done, removed)
