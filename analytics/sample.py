"""Realistic sample journeys, written through the bot's own event writer: for demos, tests and benchmarks.

Customers arrive by Get Started (some through a QR code, a flyer or an ad), by a referral in an open thread,
or by writing a message. Some answer at once, some late (a few after the conversion window), some never;
some phones send no read receipts; a few sends fail; a few customers come back for a second journey; three
campaigns overlap. Event ids, payloads and details have the shapes the bot gives them.
"""

from __future__ import annotations

import multiprocessing
import random
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tqdm import tqdm

from bot.events import Event, EventName, detail_json
from bot.store import EventLog

PAGE = "100000000000001"
CAMPAIGNS = (("spring-sale", 0.55), ("summer-sale", 0.3), ("loyalty", 0.15))
REFS = (("till-qr", 0.45), ("flyer", 0.2), ("ad-spring", 0.15), (None, 0.2))
BATCH = 50_000
PARALLEL_FROM = 20_000  # customers; fewer are written by this process alone

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = 1_000_000  # journeys keep time in microseconds: integer arithmetic is what makes 1M events quick
_STARTED_BY_POSTBACK = {
    ref: detail_json(trigger="postback", **({"ref": ref, "source": "SHORTLINK"} if ref else {}))
    for ref, _ in REFS
}
_STARTED_BY_REFERRAL = {ref: detail_json(trigger="referral", ref=ref, source="SHORTLINK") for ref, _ in REFS}
_STARTED_BY_TEXT = detail_json(trigger="text")
_IMAGE = detail_json(part="image")
_SEND_FAILED = detail_json(code=-1, reason="transient", reply="welcome", subcode=None)


def _choose(rng: random.Random, options: tuple) -> object:
    (value,) = rng.choices([o for o, _ in options], weights=[w for _, w in options])
    return value


def _watermark(ms: int) -> str:
    return f'{{"watermark":{ms}}}'  # what detail_json(watermark=ms) gives, without json.dumps per event


class _Journey:
    """One conversation as the bot records it: inbound events with the platform's millisecond clock and
    ids, replies with the ids of the events they answer."""

    def __init__(self, rng: random.Random, customer: str, campaign: str, start_us: int) -> None:
        self.rng, self.customer, self.campaign = rng, customer, campaign
        self.now = start_us
        self.events: list[Event] = []

    def wait(self, seconds: float) -> None:
        self.now += int(seconds * _SECOND)

    def record(self, event_id: str, name: EventName, at_us: int, **columns: str | None) -> Event:
        event = Event(
            event_id=event_id,
            ts=_EPOCH + timedelta(microseconds=at_us),
            page_id=PAGE,
            customer_id=self.customer,
            campaign_id=self.campaign,
            event=name,
            **columns,
        )
        self.events.append(event)
        return event

    def inbound(self, name: EventName, kind: str, **columns: str | None) -> Event:
        ms = self.now // 1000
        return self.record(f"{self.customer}.{ms}.{kind}", name, ms * 1000, **columns)

    def receipt(self, name: EventName, kind: str) -> None:
        self.inbound(name, kind, detail=_watermark(self.now // 1000))

    def reply(self, answers: Event, name: EventName, suffix: str, **columns: str | None) -> None:
        self.wait(self.rng.uniform(0.3, 1.5))
        message_id = f"m_{self.customer}{self.now // 1000:x}{suffix}"
        self.record(f"{answers.event_id}.{suffix}", name, self.now, message_id=message_id, **columns)


def journey(rng: random.Random, customer: str, start_us: int, campaign: str) -> list[Event]:
    """One customer's conversation, from how it started to where they stopped."""
    j = _Journey(rng, customer, campaign, start_us)
    how, ref = rng.random(), _choose(rng, REFS)
    if how < 0.75:
        started = j.inbound(
            EventName.CONVERSATION_STARTED, "p", button="GET_STARTED", detail=_STARTED_BY_POSTBACK[ref]
        )
    elif how < 0.9 and ref is not None:
        started = j.inbound(EventName.CONVERSATION_STARTED, "r", detail=_STARTED_BY_REFERRAL[ref])
    else:
        text = j.inbound(EventName.TEXT_RECEIVED, "m", message_id=f"m_{customer}{j.now:x}t")
        started = j.record(
            f"{text.event_id}.s",
            EventName.CONVERSATION_STARTED,
            j.now // 1000 * 1000,
            detail=_STARTED_BY_TEXT,
        )
    if rng.random() < 0.01:
        j.reply(started, EventName.SEND_FAILED, "w.f", detail=_SEND_FAILED)
        return j.events
    j.reply(started, EventName.WELCOME_SENT, "w")
    receipts = rng.random() < 0.85  # some phones never report reads
    j.wait(rng.uniform(0.5, 3))
    j.receipt(EventName.MESSAGE_DELIVERED, "d")
    if receipts:
        j.wait(rng.expovariate(1 / 20))
        j.receipt(EventName.MESSAGE_READ, "rd")

    if rng.random() < 0.22:
        return j.events  # never answers
    # Most answer within minutes, some hours or days later (a few after the 7-day window).
    j.wait(rng.lognormvariate(4.5, 2.2))
    payload = f"{campaign}||"
    if rng.random() < 0.3:
        no = j.inbound(EventName.DECLINED, "p", button=payload + "no")
        j.reply(no, EventName.THANKS_SENT, "t")
        j.reply(no, EventName.THANKS_SENT, "i", detail=_IMAGE)
        return j.events
    yes = j.inbound(EventName.COUPON_REQUESTED, "p", button=payload + "yes")
    j.reply(yes, EventName.COUPON_SENT, "c")
    j.wait(rng.uniform(0.5, 3))
    j.receipt(EventName.MESSAGE_DELIVERED, "d")
    if receipts:
        j.wait(rng.expovariate(1 / 15))
        j.receipt(EventName.MESSAGE_READ, "rd")
    if rng.random() < 0.62:
        j.wait(rng.lognormvariate(3.5, 1.5))
        reveal = j.inbound(EventName.COUPON_REVEALED, "p", button=payload + "reveal")
        j.reply(reveal, EventName.CODE_SENT, "k")
    return j.events


def generate(
    customers: range, days: int, *, seed: int = 7, end: datetime | None = None
) -> Iterator[list[Event]]:
    """Each customer's events (one or two journeys), first contacts spread over the `days` before `end`."""
    rng = random.Random(seed)
    cutoff = end or datetime.now(UTC)
    end_us = (cutoff - _EPOCH) // timedelta(microseconds=1)
    first_day = end_us // (86400 * _SECOND) - days
    for index in customers:
        customer = str(6_000_000_000_000_000 + index)
        day = first_day + int(rng.uniform(0, days))
        # More customers on weekends (1970-01-01 was a Thursday) and in the afternoon, as a shop sees them.
        weekday = (day + 3) % 7
        if weekday < 5 and rng.random() < 0.25:
            day += 5 - weekday
        minute = int(min(22, max(8, rng.gauss(15, 3.5)))) * 60 + rng.randrange(60)
        begin = (day * 86400 + minute * 60) * _SECOND + rng.randrange(60 * _SECOND)
        if begin > end_us:
            begin = end_us - int(rng.uniform(5, 600) * 60 * _SECOND)
        campaign = str(_choose(rng, CAMPAIGNS))
        events = journey(rng, customer, begin, campaign)
        if rng.random() < 0.06:  # comes back for another go
            again = begin + int(rng.uniform(1, 10) * 86400 * _SECOND)
            events += journey(rng, customer, again, campaign)
        yield [e for e in events if e.ts <= cutoff]


def _write_part(out: Path, customers: range, days: int, seed: int, end: datetime, counter=None) -> int:
    """One writer's share of the customers, through an event log of its own; returns how many events."""
    written = 0
    batch: list[Event] = []
    # A write-ahead log of its own: the sample is a writer apart from any bot sharing the store, so no bot
    # takes the sample's conversations for its own (and answers them).
    wal = Path(tempfile.mkdtemp(prefix="promobot-sample-wal-"))
    # Segments of 32 MB: the log's flusher thread turns earlier ones into Parquet while later ones are
    # generated.
    with EventLog.open(str(out), wal, flush_age_s=3600, flush_bytes=32 * 1024 * 1024) as log:
        for done, events in enumerate(generate(customers, days, seed=seed, end=end), start=1):
            batch += events
            if len(batch) >= BATCH:
                log.append_blocking(batch)
                written += len(batch)
                batch = []
                if counter is not None:
                    with counter.get_lock():
                        counter.value = done
        log.append_blocking(batch)
        written += len(batch)
    # Everything is in Parquet once the log is closed; a log that could not flush stays for a rerun.
    shutil.rmtree(wal, ignore_errors=True)
    return written


_counter = None  # a worker process's progress counter, shared with the parent


def _share_counter(counter) -> None:
    global _counter
    _counter = counter


def _write_part_in_worker(*args) -> int:
    return _write_part(*args, counter=_counter)


def write_sample(out: Path, customers: int, days: int, *, seed: int = 7, progress: bool = True) -> int:
    """Write sample events into the store at `out` with the bot's event log; returns how many.

    Large samples are written by two processes, each a writer of its own (as two bot instances sharing a
    store are): building a million events and their Parquet files is CPU work for two cores. Customers are
    split by their number, so a seed gives the same events whatever the machine.
    """
    end = datetime.now(UTC)
    if customers < PARALLEL_FROM:
        return _write_part(out, range(customers), days, seed, end)
    half = customers // 2
    parts = [(out, range(0, half), days, seed, end), (out, range(half, customers), days, seed + 1, end)]
    context = multiprocessing.get_context("spawn")  # the caller may hold threads (DuckDB, the log's)
    counters = [context.Value("q", 0) for _ in parts]
    bar = tqdm(total=customers, unit="customer", disable=not progress)
    pools = [
        ProcessPoolExecutor(1, mp_context=context, initializer=_share_counter, initargs=(counter,))
        for counter in counters
    ]
    try:
        futures = [pool.submit(_write_part_in_worker, *part) for pool, part in zip(pools, parts, strict=True)]
        while wait(futures, timeout=0.25).not_done:
            bar.update(sum(c.value for c in counters) - bar.n)
        bar.update(customers - bar.n)
        return sum(f.result() for f in futures)
    finally:
        bar.close()
        for pool in pools:
            pool.shutdown()
