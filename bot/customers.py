"""The `customers` table, kept by each webhook's transaction: window, opt-out, takeover, reachability.

Pure functions taking a cursor inside a transaction of bot.database; times are µs since the epoch.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from bot.audience import Reason
from bot.events import Event
from bot.facts import EventName
from bot.flow import Reply, handover_span
from bot.rows import ROWS_PER_STATEMENT, US, Cursor, micros

UNAVAILABLE_CODE = 551  # Send API: "this person isn't available right now"
BLOCKED_SUBCODE = 1545041  # Send API: the customer blocked the page (or left Messenger)

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
    stored: Sequence[int | None] | None = None  # the row's last_action_at, ad_referral_at, unreachable_at
    handover_raised: bool = False  # staff wrote: the pause lasts longer than the row says

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
            or self.handover_raised
            or (
                self.ad_referral_at is not None
                and (ad_referral_at is None or self.ad_referral_at > ad_referral_at)
            )
            or last_action_at is None
            or (self.last_action_at is not None and self.last_action_at >= last_action_at + ACTION_GRAIN_US)
        )


@dataclass(frozen=True, slots=True)
class Standing:
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


def keep(cursor: Cursor, events: Sequence[Event], now: int) -> Standing:
    """Bring the `customers` rows of these new events' customers up to date, one upsert per customer: the
    latest own action and ADS referral (the platform's times), opt-outs, takeovers until `now` (the bot's
    clock, µs) plus the pause the event names, and `unreachable_at` cleared by an own action."""
    keys = sorted({(e.page_id, e.customer_id) for e in events if e.event not in _RECEIPTS})
    if not keys:
        return Standing(frozenset(), frozenset())
    known = _read(cursor, keys)
    customers = {
        key: _Customer(known[key][0] is not None, known[key][1], stored=known[key][2:])
        if key in known
        else _Customer(False, None)
        for key in keys
    }
    unchanged = set()
    for event in events:
        customer = customers.get((event.page_id, event.customer_id))
        if customer is None or (event.source or "").startswith(BROADCAST_SOURCE):
            continue
        ts = micros(event.ts)
        if event.event is EventName.HANDED_OVER:
            until = now + handover_span(event) // US
            if customer.handed_over_until is None or until > customer.handed_over_until:
                customer.handed_over_until = until
                customer.handover_raised = True
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
    return Standing(frozenset(unchanged), quiet)


def _read(cursor: Cursor, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Sequence[int | None]]:
    """The stored rows of these (page_id, customer_id), sorted (one read per page and chunk): each row's
    columns after customer_id (_READ_CUSTOMERS), for the customers that have one."""
    known: dict[tuple[str, str], Sequence[int | None]] = {}
    for page_id, customer_ids in itertools.groupby(keys, key=lambda key: key[0]):
        ids = [customer_id for _, customer_id in customer_ids]
        for start in range(0, len(ids), ROWS_PER_STATEMENT):
            chunk = ids[start : start + ROWS_PER_STATEMENT]
            cursor.execute(_READ_CUSTOMERS.format(marks=", ".join(["?"] * len(chunk))), (page_id, *chunk))
            known.update(((page_id, row[0]), row[1:]) for row in cursor.fetchall())
    return known


def quiet(cursor: Cursor, keys: Sequence[tuple[str, str]], now: int) -> dict[tuple[str, str], Reason]:
    """Of these (page_id, customer_id), sorted, those owed no promotion at `now` (the bot's clock, µs), and
    why: opted out, else taken over by staff."""
    found: dict[tuple[str, str], Reason] = {}
    for key, (opted_out_at, handed_over_until, *_) in _read(cursor, keys).items():
        if opted_out_at is not None:
            found[key] = Reason.OPTED_OUT
        elif handed_over_until is not None and handed_over_until > now:
            found[key] = Reason.HANDED_OVER
    return found


def _from_an_ad(event: Event) -> bool:
    """Whether a conversation_started came from a Click-to-Messenger ad (its referral's source is ADS)."""
    if not event.detail or "ADS" not in event.detail:
        return False
    detail: dict[str, object] = json.loads(event.detail)
    return detail.get("source") == "ADS"


def unreachable(failed: Event) -> bool:
    """Whether a `send_failed` says the customer cannot be messaged (code 551: not available, subcode
    1545041: blocked the page)."""
    detail: dict[str, object] = json.loads(failed.detail or "{}")
    return detail.get("code") == UNAVAILABLE_CODE or detail.get("subcode") == BLOCKED_SUBCODE


def mark_unreachable(cursor: Cursor, failed: Event, now: int) -> None:
    """After a send the platform refused because the customer cannot be messaged, no promotion goes to them
    until they write again (`now`: the bot's clock, µs)."""
    if unreachable(failed):
        cursor.execute(
            "UPDATE customers SET unreachable_at = ? WHERE page_id = ? AND customer_id = ?",
            (now, failed.page_id, failed.customer_id),
        )
