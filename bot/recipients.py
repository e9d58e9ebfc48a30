"""Broadcasts and their recipients in the transactional store: created, taken one by one, reported.

Functions taking a bot.database.Database; each is one read or one transaction. Blocking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from bot import audience
from bot.audience import (
    AudienceCounts,
    BroadcastResult,
    BroadcastState,
    Customer,
    Reason,
    RecipientState,
    count_audience,
)
from bot.database import Database
from bot.flow import Reply
from bot.rows import INSERT_EVENT, INSERT_REPLY, event_values, micros, moment, reply_values

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
    last_action, ad_referral, opted_out, handed_over, unreachable = (
        None if t is None else moment(t) for t in times
    )
    moments = (last_action, ad_referral, opted_out, handed_over, unreachable)
    return Customer(page_id, customer_id, *moments, already_sent=bool(already_sent))


def audience_customers(database: Database, campaign_id: str) -> list[Customer]:
    """Every customer the store knows, with what decides whether the campaign may be sent to them now
    (a read: no write lock). Blocking."""
    return [_customer(row) for row in database.query(_CUSTOMERS, _already_sent_params(campaign_id))]


def audience_now(database: Database, campaign_id: str, now: datetime | None = None) -> AudienceCounts:
    """How many customers the campaign may be sent to now, and the others by reason. Blocking."""
    return count_audience(audience_customers(database, campaign_id), now or database.clock())


def create_broadcast(database: Database, campaign_id: str, rate_per_minute: int) -> int:
    """A new broadcast of the campaign, its recipients every customer known now, all pending; returns
    its number. Blocking."""
    now = micros(database.clock())
    with database.transaction() as cursor:
        cursor.execute(
            "INSERT INTO broadcasts (campaign_id, rate_per_minute, state, started_at) VALUES (?, ?, ?, ?)"
            " RETURNING broadcast",
            (campaign_id, rate_per_minute, str(BroadcastState.RUNNING), now),
        )
        number: int
        (number,) = cursor.fetchone()
        cursor.execute(
            "INSERT INTO broadcast_recipients (broadcast, page_id, customer_id, state, updated_at)"
            " SELECT ?, page_id, customer_id, ?, ? FROM customers",
            (number, str(RecipientState.PENDING), now),
        )
    return number


def unfinished_broadcast(database: Database, campaign_id: str) -> tuple[int, int] | None:
    """The campaign's latest broadcast that is not finished (stopped, or its process died): its number
    and rate; None when there is none. Blocking."""
    rows = database.query(
        "SELECT broadcast, rate_per_minute FROM broadcasts WHERE campaign_id = ? AND state <> ?"
        " ORDER BY broadcast DESC LIMIT 1",
        (campaign_id, str(BroadcastState.FINISHED)),
    )
    return (rows[0][0], rows[0][1]) if rows else None


def set_broadcast_state(
    database: Database, broadcast_id: int, state: BroadcastState, rate_per_minute: int | None = None
) -> None:
    """Move a broadcast to `state` (and its rate, if given); finishing stamps `finished_at`. Blocking."""
    now = micros(database.clock()) if state is BroadcastState.FINISHED else None
    with database.transaction() as cursor:
        cursor.execute(
            "UPDATE broadcasts SET state = ?, finished_at = ?,"
            " rate_per_minute = coalesce(?, rate_per_minute) WHERE broadcast = ?",
            (str(state), now, rate_per_minute, broadcast_id),
        )


def pending_recipients(database: Database, broadcast_id: int) -> list[tuple[str, str]]:
    """(page, customer) of the broadcast's recipients not decided yet, in a stable order. Blocking."""
    rows = database.query(
        "SELECT page_id, customer_id FROM broadcast_recipients WHERE broadcast = ? AND state = ?"
        " ORDER BY page_id, customer_id",
        (broadcast_id, str(RecipientState.PENDING)),
    )
    return [(page_id, customer_id) for page_id, customer_id in rows]


def take_recipient(
    database: Database,
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
    now = database.clock()
    lock = " FOR UPDATE OF c" if database.engine.name == "postgresql" else ""  # against a concurrent opt-out
    with database.transaction() as cursor:
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
                micros(now),
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
            cursor.execute(INSERT_EVENT, event_values(skipped))
            return reason
        reply = audience.welcome_reply(broadcast_id, customer, campaign_id, variant, now)
        # Owed already leased: no sender claims it unless this one dies and its lease runs out.
        cursor.execute(INSERT_REPLY, reply_values(reply, 0, micros(now + lease)))
        return reply


def release_recipient(database: Database, broadcast_id: int, reply: Reply) -> bool:
    """Take back a broadcast's welcome that was not sent (the platform asked to slow down; the broadcast
    stops): out of the outbox, the recipient pending again. False: it was not owed any more. Blocking."""
    with database.transaction() as cursor:
        cursor.execute("DELETE FROM outbox WHERE reply_id = ?", (reply.sent_id,))
        if not cursor.rowcount:
            return False
        cursor.execute(
            "UPDATE broadcast_recipients SET state = ?, updated_at = ?"
            " WHERE broadcast = ? AND page_id = ? AND customer_id = ?",
            (
                str(RecipientState.PENDING),
                micros(database.clock()),
                broadcast_id,
                reply.answers.page_id,
                reply.customer_id,
            ),
        )
        return True


def reclaim_stranded(database: Database, broadcast_id: int) -> int:
    """Recipients a dead broadcast process left with a welcome in the outbox: those whose lease ran out
    (no sender holds them) become pending again, to be checked and sent afresh. Returns how many are still
    leased (by a sender that may be sending them now: their outcome will come). Blocking."""
    now = micros(database.clock())
    rows = database.query(
        "SELECT customer_id FROM broadcast_recipients WHERE broadcast = ? AND state = ?",
        (broadcast_id, str(RecipientState.SENDING)),
    )
    held = 0
    for (customer_id,) in rows:
        reply_id = f"{audience.BROADCAST_ID_PREFIX}{broadcast_id}.{customer_id}.w"
        with database.transaction() as cursor:
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


def broadcast_results(database: Database, campaign_id: str | None = None) -> list[BroadcastResult]:
    """Every broadcast (of `campaign_id`, or of all campaigns), newest first: recipients sent, skipped by
    reason, not done yet (a read: no write lock). Blocking."""
    rows = database.query(
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
            moment(started),
            None if finished is None else moment(finished),
        )
        if recipient_state == RecipientState.SENT:
            result = dataclasses.replace(result, sent=result.sent + count)
        elif recipient_state == RecipientState.SKIPPED:
            result.skipped[reason] = result.skipped.get(reason, 0) + count
        elif recipient_state is not None:
            result = dataclasses.replace(result, pending=result.pending + count)
        results[number] = result
    return list(results.values())
