"""Realistic sample journeys, written through the bot's own event writer: for demos, tests and benchmarks.

Some customers answer at once, some late, some never; some phones send no read receipts; a few come back
for a second journey; two campaigns overlap; referrals come from a QR code, a flyer or an ad.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tqdm import tqdm

from bot.events import Event, detail_json
from bot.store import EventLog

PAGE = "100000000000001"
CAMPAIGNS = (("spring-sale", 0.7), ("summer-sale", 0.3))
REFS = (("till-qr", 0.45), ("flyer", 0.2), ("ad-spring", 0.15), (None, 0.2))


def _choose(rng: random.Random, options: tuple) -> object:
    (value,) = rng.choices([o for o, _ in options], weights=[w for _, w in options])
    return value


def journey(rng: random.Random, customer: str, start: datetime, campaign: str) -> Iterator[Event]:
    """One conversation as the bot records it."""
    t = start

    def event(name: str, suffix: str, **columns) -> Event:
        ms = int(t.timestamp() * 1000)
        return Event(
            event_id=f"{customer}.{ms}.{suffix}",
            ts=t,
            page_id=PAGE,
            customer_id=customer,
            campaign_id=campaign,
            event=name,
            **columns,
        )

    def later(seconds: float) -> None:
        nonlocal t
        t += timedelta(seconds=seconds)

    payload = f"{campaign}||"
    ref = _choose(rng, REFS)
    yield event(
        "conversation_started",
        "p",
        button="GET_STARTED",
        detail=detail_json(trigger="postback", ref=ref, source="SHORTLINK" if ref else None),
    )
    receipts = rng.random() < 0.85  # some phones never report reads
    later(rng.uniform(0.3, 1.5))
    yield event("welcome_sent", "p.w", message_id=f"m_{customer}_{int(t.timestamp())}_w")
    later(rng.uniform(0.5, 3))
    yield event("message_delivered", "d", detail=detail_json(watermark=int(t.timestamp() * 1000)))
    if receipts:
        later(rng.expovariate(1 / 20))
        yield event("message_read", "rd", detail=detail_json(watermark=int(t.timestamp() * 1000)))

    if rng.random() < 0.22:
        return  # never answers
    # Most answer within minutes, some hours or days later (a few after the 7-day window).
    later(rng.lognormvariate(4.5, 2.2))
    if rng.random() < 0.3:
        yield event("declined", "p", button=payload + "no")
        later(rng.uniform(0.3, 1.2))
        yield event("thanks_sent", "p.t", message_id=f"m_{customer}_{int(t.timestamp())}_t")
        yield event(
            "thanks_sent",
            "p.i",
            message_id=f"m_{customer}_{int(t.timestamp())}_i",
            detail=detail_json(part="image"),
        )
        return
    yield event("coupon_requested", "p", button=payload + "yes")
    later(rng.uniform(0.3, 1.2))
    coupon_ms = int(t.timestamp() * 1000)
    yield event("coupon_sent", "p.c", message_id=f"m_{customer}_{coupon_ms}_c")
    later(rng.uniform(0.5, 3))
    yield event("message_delivered", "d", detail=detail_json(watermark=int(t.timestamp() * 1000)))
    if receipts:
        later(rng.expovariate(1 / 15))
        yield event("message_read", "rd", detail=detail_json(watermark=int(t.timestamp() * 1000)))
    if rng.random() < 0.62:
        later(rng.lognormvariate(3.5, 1.5))
        yield event("coupon_revealed", "p", button=payload + "reveal")
        later(rng.uniform(0.3, 1.0))
        yield event("code_sent", "p.k", message_id=f"m_{customer}_{int(t.timestamp())}_k")


def generate(customers: int, days: int, *, seed: int = 7, end: datetime | None = None) -> Iterator[Event]:
    """Events of `customers` customers whose first contact falls in the `days` days before `end` (now)."""
    rng = random.Random(seed)
    end = end or datetime.now(UTC)
    first = end - timedelta(days=days)
    for index in range(customers):
        customer = str(6_000_000_000_000_000 + index)
        # More customers on weekends and in the evening, as a shop sees them.
        begin = first + timedelta(days=rng.uniform(0, days))
        if begin.weekday() < 5 and rng.random() < 0.25:
            begin += timedelta(days=5 - begin.weekday())
        begin = begin.replace(hour=int(min(22, max(8, rng.gauss(15, 3.5)))), minute=rng.randrange(60))
        if begin > end:
            begin = end - timedelta(minutes=rng.uniform(5, 600))
        campaign = str(_choose(rng, CAMPAIGNS))
        yield from (e for e in journey(rng, customer, begin, campaign) if e.ts <= end)
        if rng.random() < 0.06:  # comes back for another go
            again = begin + timedelta(days=rng.uniform(1, 10))
            if again < end:
                yield from (e for e in journey(rng, customer, again, campaign) if e.ts <= end)


def write_sample(out: Path, customers: int, days: int, *, seed: int = 7, progress: bool = True) -> int:
    """Write sample events into the store at `out` with the bot's event log; returns how many."""
    written = 0
    batch: list[Event] = []
    # A write-ahead log of its own: the sample is a writer apart from any bot sharing the store, so no bot
    # takes the sample's conversations for its own (and answers them).
    wal = Path(tempfile.mkdtemp(prefix="promobot-sample-wal-"))
    with EventLog.open(str(out), wal, flush_age_s=3600, flush_bytes=64 * 1024 * 1024) as log:
        bar = tqdm(total=customers, unit="customer", disable=not progress or customers < 5000)
        last_customer = None
        for event in generate(customers, days, seed=seed):
            batch.append(event)
            if event.customer_id != last_customer:
                last_customer = event.customer_id
                bar.update(1)
            if len(batch) >= 20_000:
                log.append_blocking(batch)
                written += len(batch)
                batch = []
        if batch:
            log.append_blocking(batch)
            written += len(batch)
        bar.close()
    shutil.rmtree(wal, ignore_errors=True)
    return written
