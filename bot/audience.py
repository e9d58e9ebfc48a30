"""Who may be sent a campaign's promotion now, and why the others may not: pure functions, no I/O.

A page may message a customer only inside their messaging window (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from bot.events import Event, detail_json
from bot.facts import EventName
from bot.flow import Reply, ReplyKind
from bot.words import count

WINDOW = timedelta(hours=24)  # after a customer's own action
AD_WINDOW = timedelta(days=7)  # after the referral of a Click-to-Messenger (`ADS`) ad


class Reason(StrEnum):
    """Why a customer is not sent a campaign; each counts under the first that applies, in this order."""

    WINDOW_CLOSED = "window_closed"
    OPTED_OUT = "opted_out"
    UNREACHABLE = "unreachable"
    ALREADY_SENT = "already_sent"
    HANDED_OVER = "handed_over"


REASONS: tuple[Reason, ...] = tuple(Reason)
SEND_FAILED = "send_failed"  # a broadcast's reason for a welcome the Send API refused (not the audience's)

# What each reason means and what the business can do, for `python -m bot audience` and the dashboard.
REASON_HELP = {
    Reason.WINDOW_CLOSED: (
        "no own action in the last 24 hours (7 days after an ad)",
        "they are reached again once they write or click; an ad or a QR code at the till brings them back",
    ),
    Reason.OPTED_OUT: (
        "wrote a stop word or chose the menu's opt-out",
        "nothing: they may write the start word",
    ),
    Reason.UNREACHABLE: (
        "the Send API said they cannot be messaged (error 551: blocked the page or left Messenger)",
        "nothing: they count again once they write to the page",
    ),
    Reason.ALREADY_SENT: ("a broadcast of this campaign sent them its welcome", "nothing: once is enough"),
    Reason.HANDED_OVER: (
        "staff are answering them by hand from the page's inbox",
        "wait until the conversation is over (PROMOBOT_HANDOVER_MINUTES after staff's last message)",
    ),
}


@dataclass(frozen=True, slots=True)
class Customer:
    """What the store knows of a customer, for a campaign: a row of `customers` (None: never happened), and
    whether a broadcast of the campaign sent (or is sending) them its welcome."""

    page_id: str
    customer_id: str
    last_action_at: datetime | None = None
    ad_referral_at: datetime | None = None
    opted_out_at: datetime | None = None
    handed_over_until: datetime | None = None
    unreachable_at: datetime | None = None
    already_sent: bool = False


def window_end(customer: Customer) -> datetime | None:
    """When the customer's messaging window closes (None: it never opened)."""
    ends = [
        moment + length
        for moment, length in ((customer.last_action_at, WINDOW), (customer.ad_referral_at, AD_WINDOW))
        if moment is not None
    ]
    return max(ends, default=None)


def skip_reason(customer: Customer, now: datetime) -> Reason | None:
    """The first reason the customer may not be sent the campaign at `now` (the bot's clock), or None."""
    end = window_end(customer)
    if end is None or now >= end:
        return Reason.WINDOW_CLOSED
    if customer.opted_out_at is not None:
        return Reason.OPTED_OUT
    if customer.unreachable_at is not None:
        return Reason.UNREACHABLE
    if customer.already_sent:
        return Reason.ALREADY_SENT
    if customer.handed_over_until is not None and now < customer.handed_over_until:
        return Reason.HANDED_OVER
    return None


@dataclass(frozen=True, slots=True)
class AudienceCounts:
    """How many customers may be sent the campaign now, and how many may not, by reason."""

    eligible: int
    skipped: dict[Reason, int]

    def as_dict(self) -> dict[str, object]:
        """`{"eligible": N, "skipped": {"window_closed": N, …}}`, the reasons in their order."""
        return {"eligible": self.eligible, "skipped": {str(r): self.skipped.get(r, 0) for r in REASONS}}


def count_audience(customers: Iterable[Customer], now: datetime) -> AudienceCounts:
    """The customers eligible at `now`, and the others under the first reason that applies."""
    eligible, skipped = 0, dict.fromkeys(REASONS, 0)
    for customer in customers:
        reason = skip_reason(customer, now)
        if reason is None:
            eligible += 1
        else:
            skipped[reason] += 1
    return AudienceCounts(eligible, skipped)


def describe_audience(campaign_id: str, counts: AudienceCounts) -> str:
    """The audience as `python -m bot audience` prints it: the counts, what each reason means, what to do."""
    lines = [f"Campaign {campaign_id!r}: {count(counts.eligible, 'customer')} can be sent the welcome now."]
    for reason in REASONS:
        meaning, action = REASON_HELP[reason]
        lines.append(f"  {counts.skipped.get(reason, 0):>6} {reason}: {meaning}; {action}.")
    return "\n".join(lines)


# -- what a broadcast records ------------------------------------------------------------------------------

BROADCAST_ID_PREFIX = "broadcast."  # the events of broadcast N to customer C: `broadcast.N.C[.suffix]`


class BroadcastState(StrEnum):
    """A broadcast's lifecycle."""

    RUNNING = "running"  # being sent, or its process died (kill -9): the next run resumes it
    STOPPED = "stopped"  # stopped by Ctrl-C or SIGTERM: the next run resumes it
    FINISHED = "finished"  # every recipient sent or skipped


class RecipientState(StrEnum):
    """Where a broadcast is with one customer of its audience."""

    PENDING = "pending"  # not decided yet: checked again at the moment of sending
    SENDING = "sending"  # the welcome is in the outbox, leased by the broadcast (or a sender, after a crash)
    SENT = "sent"  # the Send API accepted the welcome
    SKIPPED = "skipped"  # not sent: a Reason, or SEND_FAILED / unreachable when the Send API refused it


def broadcast_source(broadcast_id: int) -> str:
    """The `source` of a broadcast's welcome and events: analytics filter the funnel by it."""
    return f"broadcast:{broadcast_id}"


def welcome_reply(
    broadcast_id: int, customer: Customer, campaign_id: str, variant: str | None, at: datetime
) -> Reply:
    """The campaign's welcome owed to `customer` by a broadcast: it answers the broadcast's `broadcast_sent`
    event, so the `welcome_sent` it yields carries the broadcast's source."""
    sent = Event(
        event_id=f"{BROADCAST_ID_PREFIX}{broadcast_id}.{customer.customer_id}",
        ts=at,
        page_id=customer.page_id,
        customer_id=customer.customer_id,
        campaign_id=campaign_id,
        variant=variant,
        event=EventName.BROADCAST_SENT,
        detail=detail_json(broadcast=broadcast_id),
        source=broadcast_source(broadcast_id),
    )
    return Reply(ReplyKind.WELCOME, sent)


def broadcast_of(reply_id: str, outcome: Event) -> int | None:
    """The broadcast a reply's outcome belongs to (None: an ordinary reply)."""
    if not reply_id.startswith(BROADCAST_ID_PREFIX) or outcome.source is None:
        return None
    number = reply_id.removeprefix(BROADCAST_ID_PREFIX).split(".", 1)[0]
    return int(number) if number.isdigit() and outcome.source == broadcast_source(int(number)) else None


def sent_event(broadcast_id: int, outcome: Event) -> Event:
    """`broadcast_sent` for a welcome the Send API accepted (`outcome` its `welcome_sent`)."""
    return Event(
        event_id=f"{BROADCAST_ID_PREFIX}{broadcast_id}.{outcome.customer_id}",
        ts=outcome.ts,
        page_id=outcome.page_id,
        customer_id=outcome.customer_id,
        campaign_id=outcome.campaign_id,
        variant=outcome.variant,
        event=EventName.BROADCAST_SENT,
        detail=detail_json(broadcast=broadcast_id),
        source=broadcast_source(broadcast_id),
    )


def skipped_event(
    broadcast_id: int,
    page_id: str,
    customer_id: str,
    campaign_id: str,
    variant: str | None,
    reason: str,
    at: datetime,
) -> Event:
    """`broadcast_skipped`: the broadcast did not send the customer its welcome, and why."""
    return Event(
        event_id=f"{BROADCAST_ID_PREFIX}{broadcast_id}.{customer_id}.s",
        ts=at,
        page_id=page_id,
        customer_id=customer_id,
        campaign_id=campaign_id,
        variant=variant,
        event=EventName.BROADCAST_SKIPPED,
        detail=detail_json(broadcast=broadcast_id, reason=reason),
        source=broadcast_source(broadcast_id),
    )


@dataclass(frozen=True, slots=True)
class BroadcastResult:
    """How a broadcast went: its recipients sent, skipped by reason (audience reasons, `unreachable` and
    `send_failed` for welcomes the Send API refused), and not done yet; times on the bot's clock."""

    broadcast_id: int
    campaign_id: str
    rate_per_minute: int
    state: BroadcastState
    started_at: datetime
    finished_at: datetime | None
    sent: int = 0
    pending: int = 0  # pending or being sent
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def recipients(self) -> int:
        return self.sent + self.pending + sum(self.skipped.values())
