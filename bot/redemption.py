"""Single-use codes at the till: a code looked up, marked used, and its `coupon_redeemed` event recorded.

Each function runs one transaction (or one read) of the store; all are blocking.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from bot import pool
from bot.database import Database
from bot.events import Event
from bot.facts import EventName
from bot.flow import Reply, ReplyKind
from bot.rows import INSERT_EVENT, INSERT_REPLY, US, Cursor, event_values, micros, moment, reply_values


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


def pool_status(database: Database, campaign_id: str) -> pool.PoolStatus:
    """The pool's size and how many codes are free (a read: no write lock)."""
    ((total, free),) = database.query(pool.STATUS, (campaign_id,))
    return pool.PoolStatus(total, free)


def find_code(
    database: Database, *, token: str | None = None, campaign_id: str = "", code: str = ""
) -> pool.CodeState | None:
    """The pool's code with this till token, or this code of the campaign (a read: no write lock)."""
    rows = database.query(*pool.find_query(token=token, campaign_id=campaign_id, code=code))
    return pool.CodeState(*rows[0]) if rows else None


def redeem(database: Database, token: str, *, thank: bool = False) -> pool.CodeState | None:
    """Mark the code with this till token used now and record its `coupon_redeemed` event (and, with
    `thank`, owe the customer the campaign's thanks), in one transaction.

    Returns: the code's state; None, changing nothing, when it is unknown, used or expired.
    """
    now = database.clock()
    with database.transaction() as cursor:
        state = pool.redeem(cursor, token, micros(now))
        if state is not None:
            _redeemed(cursor, state, now, thank, database.clock())
        return state


# How far a till's clock may be from the bot's. More is a time zone taken wrongly (a till writing local times
# without saying so): every zone is at least an hour from UTC, or none.
TILL_CLOCK_SKEW = timedelta(minutes=15)


class RedemptionError(ValueError):
    """A till's export whose times cannot be right; nothing of it was recorded."""


def redeem_codes(
    database: Database, campaign_id: str, used: Sequence[tuple[str, datetime]], *, thank: bool = False
) -> dict[str, int]:
    """Mark codes used as a till's export lists them, (code, when), in one transaction, each new one with its
    `coupon_redeemed` event (and the thanks, as `redeem`).

    Returns: how many were `new`, `already` used and `unknown`.
    Raises: RedemptionError, recording nothing, when a time is later than now or earlier than its code's
        hand-out by more than TILL_CLOCK_SKEW (stored, it would never count as used at the till).
    """
    counts = {"new": 0, "already": 0, "unknown": 0}
    late, wrong = database.clock() + TILL_CLOCK_SKEW, []
    with database.transaction() as cursor:
        for code, at in used:
            if at > late:
                wrong.append(f"{code} at {at.isoformat()} (later than now)")
                continue
            outcome, state = pool.redeem_code(cursor, campaign_id, code, micros(at), TILL_CLOCK_SKEW // US)
            if outcome == "early":
                wrong.append(f"{code} at {at.isoformat()} (before the code was handed out)")
            else:
                counts[outcome] += 1
            if state is not None and state.redeemed_at is not None:
                _redeemed(cursor, state, moment(state.redeemed_at), thank, database.clock())
        if wrong:
            raise RedemptionError(
                f"{len(wrong)} time(s) cannot be right, nothing recorded: {'; '.join(wrong[:3])}"
                f"{' …' if len(wrong) > 3 else ''}. If the till writes local times without a zone, give it"
                " with --tz (e.g. --tz America/Chicago)"
            )
    return counts


def _redeemed(cursor: Cursor, state: pool.CodeState, at: datetime, thank: bool, now: datetime) -> None:
    event = redeemed_event(state, at)
    cursor.execute(INSERT_EVENT, event_values(event))
    if thank:
        cursor.execute(INSERT_REPLY, reply_values(Reply(ReplyKind.REDEEMED, event), 0, micros(now)))
