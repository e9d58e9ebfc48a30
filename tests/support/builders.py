"""Events and clocks as tests build them: customers' actions on the platform's clock; the bot's, by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.events import Event
from bot.facts import EventName

PAGE = "100000000000001"
CAMPAIGN = "spring-sale"
# The platform's time of the customers' actions; the bot's clock starts a little later.
PLATFORM_T0 = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
BOT_T0 = PLATFORM_T0 + timedelta(seconds=2)


def customer_event(
    customer: str,
    n: int,
    name: EventName = EventName.CONVERSATION_STARTED,
    *,
    start: datetime,
    campaign: str = CAMPAIGN,
    **columns: object,
) -> Event:
    """A customer's action, on the platform's clock, `n` seconds after `start`; its id is the platform's."""
    return Event(
        event_id=f"m_{customer}_{n}",
        ts=start + timedelta(seconds=n),
        page_id=PAGE,
        customer_id=customer,
        campaign_id=campaign,
        event=name,
        **columns,  # type: ignore[arg-type]
    )


def numbered_event(n: int, start: datetime, *, customers: int = 7, **columns: object) -> Event:
    """Event number `n` of a run: id `e{n}`, `n` seconds after `start`, of customer `c{n % customers}`; a
    `welcome_sent` of spring-sale on page "page" unless `columns` say otherwise."""
    values: dict[str, object] = {
        "event_id": f"e{n}",
        "ts": start + timedelta(seconds=n),
        "page_id": "page",
        "customer_id": f"c{n % customers}",
        "campaign_id": CAMPAIGN,
        "event": EventName.WELCOME_SENT,
    }
    return Event(**{**values, **columns})  # type: ignore[arg-type]


class Clock:
    """The bot's clock, moved on by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta
