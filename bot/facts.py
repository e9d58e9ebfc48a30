"""The names every part of promobot shares: events, buttons and their payloads, funnel steps, KPIs.

The bot records events under these names, the analytics SQL and charts read them, the dashboard and the
report label them, and tests/test_docs.py keeps docs/metrics.md and the README in step with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum


class EventName(StrEnum):
    """What an event row records; the `event` column."""

    CONVERSATION_STARTED = "conversation_started"
    WELCOME_SENT = "welcome_sent"
    COUPON_REQUESTED = "coupon_requested"  # clicked "Yes! Show me coupon"
    DECLINED = "declined"  # clicked "No, thanks"
    COUPON_SENT = "coupon_sent"
    COUPON_REVEALED = "coupon_revealed"  # clicked "Reveal the coupon"
    CODE_SENT = "code_sent"  # the code shown in answer to the reveal
    COUPON_POOL_EMPTY = "coupon_pool_empty"  # a reveal found every single-use code handed out
    ALL_GONE_SENT = "all_gone_sent"  # the message saying so
    COUPON_REDEEMED = "coupon_redeemed"  # a single-use code used at the till
    THANKS_SENT = "thanks_sent"
    MESSAGE_DELIVERED = "message_delivered"
    MESSAGE_READ = "message_read"
    TEXT_RECEIVED = "text_received"
    SEND_FAILED = "send_failed"
    REACTION_RECEIVED = "reaction_received"  # a customer reacted to a message: nothing to answer
    OPTED_OUT = "opted_out"  # wrote a stop word or chose the menu's item: no promotion is sent to them again
    OPTED_IN = "opted_in"  # wrote a start word after opting out
    HANDED_OVER = "handed_over"  # staff wrote from the page's inbox: the bot keeps quiet for a while
    BROADCAST_SENT = "broadcast_sent"  # the campaign's welcome sent by `python -m bot broadcast`
    BROADCAST_SKIPPED = "broadcast_skipped"  # not sent by a broadcast; `detail` says why
    DELETION_REQUESTED = "deletion_requested"  # wrote a delete word: their data goes (bot.privacy)
    REPLY_WITHDRAWN = "reply_withdrawn"  # a promotion owed, not sent: they opted out or staff took over since


class ButtonStep(StrEnum):
    """The step a button of the conversation stands for; the last part of its payload."""

    YES = "yes"
    NO = "no"
    REVEAL = "reveal"


# The event a click on each button is recorded as.
CLICK_EVENTS = {
    ButtonStep.YES: EventName.COUPON_REQUESTED,
    ButtonStep.NO: EventName.DECLINED,
    ButtonStep.REVEAL: EventName.COUPON_REVEALED,
}

PAYLOAD_SEPARATOR = "|"


@dataclass(frozen=True, slots=True)
class Button:
    """What a button's postback payload says: `campaign|variant|step`."""

    campaign_id: str
    variant: str | None
    step: ButtonStep

    @property
    def payload(self) -> str:
        return PAYLOAD_SEPARATOR.join((self.campaign_id, self.variant or "", self.step))


def parse_payload(payload: str) -> Button | None:
    """The button a payload names, or None for anything else (Get Started, a menu item, foreign payloads)."""
    parts = payload.split(PAYLOAD_SEPARATOR)
    if len(parts) != 3 or parts[2] not in ButtonStep._value2member_map_:
        return None
    return Button(parts[0], parts[1] or None, ButtonStep(parts[2]))


class FunnelStep(StrEnum):
    """The funnel's steps, in order (`declined` branches off `responded`). Defined in docs/metrics.md."""

    REACHED = "reached"
    RESPONDED = "responded"
    COUPON_REQUESTED = "coupon_requested"
    COUPON_SEEN = "coupon_seen"
    COUPON_REVEALED = "coupon_revealed"
    REDEEMED = "redeemed"  # the single-use code used at the till
    DECLINED = "declined"


STEPS: tuple[FunnelStep, ...] = tuple(FunnelStep)

# The step each step's `pct_of_previous` is a share of.
PREVIOUS_STEP = {
    FunnelStep.RESPONDED: FunnelStep.REACHED,
    FunnelStep.COUPON_REQUESTED: FunnelStep.RESPONDED,
    FunnelStep.COUPON_SEEN: FunnelStep.COUPON_REQUESTED,
    FunnelStep.COUPON_REVEALED: FunnelStep.COUPON_SEEN,
    FunnelStep.REDEEMED: FunnelStep.COUPON_REVEALED,
    FunnelStep.DECLINED: FunnelStep.RESPONDED,
}

STEP_LABELS = {
    FunnelStep.REACHED: "Reached",
    FunnelStep.RESPONDED: "Responded",
    FunnelStep.COUPON_REQUESTED: "Asked for the coupon",
    FunnelStep.COUPON_SEEN: "Saw the coupon",
    FunnelStep.COUPON_REVEALED: "Revealed the code",
    FunnelStep.REDEEMED: "Used at the till",
    FunnelStep.DECLINED: "Declined",
}


@dataclass(frozen=True, slots=True)
class Kpi:
    """A headline figure: `reached` as a count, every other one as a share in % of the customers at
    `share_of` (`reached` unless said otherwise)."""

    key: str
    label: str
    step: FunnelStep
    share_of: FunnelStep = FunnelStep.REACHED


KPIS = (
    Kpi("reached", "Customers reached", FunnelStep.REACHED),
    Kpi("responded", "Responded", FunnelStep.RESPONDED),
    Kpi("saw", "Saw the coupon", FunnelStep.COUPON_SEEN),
    Kpi("revealed", "Revealed the code", FunnelStep.COUPON_REVEALED),
    # Only single-use codes are redeemed at the till: a share of the reveals, not of everyone reached.
    Kpi("redeemed", "Used at the till", FunnelStep.REDEEMED, share_of=FunnelStep.COUPON_REVEALED),
    Kpi("declined", "Declined", FunnelStep.DECLINED),
)

# How much later than the platform's time of a message the bot's own stamp of sending it may be: the Send
# API's round trip, retries included (the Graph client gives up after 4 × PROMOBOT_GRAPH_TIMEOUT, 20 s by
# default), plus clock skew. A customer's tap on a button (the platform's clock) counts for a welcome
# stamped (the bot's clock) up to this long after it.
SEND_ALLOWANCE = timedelta(seconds=30)
