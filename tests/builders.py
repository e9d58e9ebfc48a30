"""Events as tests build them: a customer's actions on the platform's clock."""

from __future__ import annotations

from datetime import datetime, timedelta

from bot.events import Event
from bot.facts import EventName

PAGE = "100000000000001"
CAMPAIGN = "spring-sale"


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
