"""Realistic sample journeys, written as the bot's own event files: for demos, tests and benchmarks.

write_sample(Path("data/sample"), customers=1000, days=28)   # what `python -m analytics sample` does

What the journeys hold and how their clocks run: docs/design.md, "Analytics: sample journeys".
"""

from __future__ import annotations

import functools
import multiprocessing
import random
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TypedDict, TypeVar, Unpack

from tqdm import tqdm

from bot.campaign import assign_variant
from bot.events import Event, detail_json, message_digest
from bot.facts import EventName
from bot.flow import SHARE_DECIMALS
from bot.store import FileStore, write_events

PAGE = "100000000000001"
CAMPAIGNS = (("spring-sale", 0.55), ("summer-sale", 0.3), ("loyalty", 0.15))
# Where customers come from: an entry link's placement, the ad, or nothing (direct).
AD = "ad"
PLACEMENTS = (("till", 0.4), ("flyer", 0.17), ("instagram", 0.1), (AD, 0.13), (None, 0.2))
AD_ID, AD_TITLE = "120210987654321", "Spring sale: 20% off everything"
DIRECT = "direct"
# The experiment: its campaign, its variants and their weights (the first is the reference), and how likely
# a customer who asked for the coupon is to reveal it in each; other campaigns: REVEALS.
EXPERIMENT = "spring-sale"
VARIANTS = (("A", 1), ("B", 1))
REVEALS = 0.62
VARIANT_REVEALS: dict[str | None, float] = {"A": 0.55, "B": 0.55 * 1.3}
FORCED_SHARE = 0.03  # of the experiment's customers who came by a placement's link: it named a variant
PARALLEL_FROM = 20_000  # customers; fewer are written by this process alone
REDEEMED_SHARE = 0.42  # of the codes handed out
CODES_GONE_DAYS = {"loyalty": 2}  # campaigns whose pool is empty for their last days

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = 1_000_000  # journeys keep time in microseconds: integer arithmetic is what makes 1M events quick
_MS = 1000
_HASHED = {EventName.MESSAGE_DELIVERED, EventName.MESSAGE_READ, EventName.TEXT_RECEIVED}
_PLANNED = [(name, weight / sum(w for _, w in VARIANTS)) for name, weight in VARIANTS]
_SHARES = [[name, round(share, SHARE_DECIMALS)] for name, share in _PLANNED]  # as the bot records them
_IMAGE = detail_json(part="image")
_SEND_FAILED = detail_json(code=-1, reason="transient", reply="welcome", subcode=None)


_T = TypeVar("_T")


class _Columns(TypedDict, total=False):
    """The optional columns of an event (bot.events.Event)."""

    variant: str | None
    button: str | None
    message_digest: int | None
    detail: str | None
    watermark: int | None
    source: str | None


class _Progress(Protocol):
    """A count shared with the parent process (multiprocessing's Value)."""

    value: int


def _choose(rng: random.Random, options: Sequence[tuple[_T, float]]) -> _T:
    (value,) = rng.choices([o for o, _ in options], weights=[w for _, w in options])
    return value


def assigned_variant(campaign: str, customer: str) -> str:
    """The experiment's variant a customer is assigned, as the bot assigns it."""
    return assign_variant(campaign, customer, _PLANNED)


@functools.lru_cache(maxsize=256)
def _started(trigger: str, campaign: str, placement: str | None, forced: str | None) -> tuple[str, str]:
    """The detail and source of a conversation's start, as the bot records them."""
    fields: dict[str, object] = {"trigger": trigger}
    if placement == AD:
        fields.update(source="ADS", type="OPEN_THREAD", ad_id=AD_ID, ad_title=AD_TITLE)
        source = f"ad:{AD_ID}"
    elif placement is not None:
        ref = f"{campaign}.{placement}" + (f".{forced}" if forced else "")
        fields.update(ref=ref, source="SHORTLINK", type="OPEN_THREAD")
        source = placement
    else:
        source = DIRECT
    if campaign == EXPERIMENT:
        fields["variants"] = _SHARES
        if forced:
            fields["variant_forced"] = True
    return detail_json(**fields), source


@dataclass(frozen=True, slots=True)
class Journey:
    """One conversation's events, and the platform's time (ms) of each page message, by the digest of its
    message id: what the platform knows and the bot never records."""

    events: list[Event]
    platform_ms: dict[int, int]


class _Journey:
    """One conversation as it happens: `now` is the customer's side of it on the platform's clock (µs,
    actions land on whole milliseconds); `bot_free` is when the bot's last Send API call answered."""

    def __init__(
        self, rng: random.Random, customer: str, campaign: str, start_us: int, variant: str | None = None
    ) -> None:
        self.rng, self.customer, self.campaign = rng, customer, campaign
        # The journey's variant (on its start, welcome, clicks and the bot's answers) and the hash's (receipts
        # and texts, which name none): they differ when a link forced one.
        self.variant = variant
        self.hashed = assigned_variant(campaign, customer) if variant is not None else None
        self.now = start_us
        self.bot_free = 0
        self.events: list[Event] = []
        self.platform_ms: dict[int, int] = {}

    def wait(self, seconds: float) -> None:
        self.now += int(seconds * _SECOND)

    def record(self, event_id: str, name: EventName, at_us: int, **columns: Unpack[_Columns]) -> Event:
        if "variant" not in columns:
            columns["variant"] = self.hashed if name in _HASHED else self.variant
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

    def inbound(self, name: EventName, kind: str, **columns: Unpack[_Columns]) -> Event:
        ms = self.now // _MS
        return self.record(f"{self.customer}.{ms}.{kind}", name, ms * _MS, **columns)

    def receipt(self, name: EventName, kind: str, watermark_ms: int, digest: int | None = None) -> None:
        # The bot derives a receipt's id from its watermark, as a redelivered receipt must be one event.
        ms = self.now // _MS
        self.record(
            f"{self.customer}.{watermark_ms}.{kind}",
            name,
            ms * _MS,
            message_digest=digest,
            watermark=watermark_ms,
        )

    def _call(self) -> tuple[int, int]:
        """A Send API call made in answer to what happened at `now`: when it starts and its round trip (µs).
        The bot sends one customer's replies one after the other."""
        rng = self.rng
        start = max(self.now, self.bot_free) + int(rng.uniform(0.02, 0.3) * _SECOND)
        rtt = rng.uniform(0.1, 1.5) if rng.random() < 0.97 else rng.uniform(2, 8)
        return start, int(rtt * _SECOND)

    def send(
        self, answers: Event, name: EventName, suffix: str, **columns: Unpack[_Columns]
    ) -> tuple[int, int]:
        """A page message: the platform's time falls inside the call, the bot stamps it when the call has
        answered; the customer's side goes on from the platform's time. Returns (platform ms, its digest)."""
        start, rtt = self._call()
        platform_ms = (start + int(rtt * self.rng.uniform(0.2, 0.8))) // _MS
        digest = message_digest(f"m_{self.customer}{platform_ms:x}{suffix}")
        self.bot_free = start + rtt
        columns["message_digest"] = digest
        self.record(f"{answers.event_id}.{suffix}", name, self.bot_free, **columns)
        self.platform_ms[digest] = platform_ms
        self.now = platform_ms * _MS
        return platform_ms, digest

    def redeem_later(self) -> None:
        """Staff redeem the code at the till: the bot's clock, minutes to days after the code arrived (a
        week's validity), once per customer and campaign."""
        rng = self.rng
        # Some show the code at the till there and then (a QR code by the till); most come back another day.
        minutes = rng.uniform(3, 60) if rng.random() < 0.3 else rng.uniform(2, 7 * 24) * 60
        at = max(self.now, self.bot_free) + int(minutes * 60 * _SECOND)
        self.record(f"{self.customer}.{self.campaign}.redeemed", EventName.COUPON_REDEEMED, at)

    def send_failed(self, answers: Event) -> None:
        start, rtt = self._call()
        self.bot_free = start + rtt
        self.record(
            f"{answers.event_id}.w.f",
            EventName.SEND_FAILED,
            self.bot_free,
            detail=_SEND_FAILED,
            source=answers.source,
        )

    def delivered(self, platform_ms: int, digest: int) -> None:
        """The phone reports the message delivered; the watermark is the message's platform time."""
        self.wait(self.rng.uniform(0.3, 3))
        self.receipt(EventName.MESSAGE_DELIVERED, "d", platform_ms, digest)

    def read(self, platform_ms: int) -> None:
        """The customer opens the thread; the watermark is the platform time of the last message there."""
        self.wait(self.rng.expovariate(1 / 15))
        self.receipt(EventName.MESSAGE_READ, "rd", platform_ms)


def journey(
    rng: random.Random,
    customer: str,
    start_us: int,
    campaign: str,
    codes_gone_us: int | None = None,
    *,
    forced: str | None = None,
) -> Journey:
    """One customer's conversation, from how it started to where they stopped; a reveal from `codes_gone_us`
    on finds the campaign's single-use codes all handed out. In the experiment's campaign, `forced`: the
    variant the entry link names (else the hash's, or now and then a link's)."""
    how, placement = rng.random(), _choose(rng, PLACEMENTS)
    variant = None
    if campaign == EXPERIMENT:
        if forced is None and placement not in (None, AD) and rng.random() < FORCED_SHARE:
            forced = str(_choose(rng, VARIANTS))
        if placement in (None, AD):
            forced = None  # only an entry link names a variant
        variant = forced or assigned_variant(campaign, customer)
    j = _Journey(rng, customer, campaign, start_us, variant)
    if how < 0.75:
        detail, source = _started("postback", campaign, placement, forced)
        started = j.inbound(
            EventName.CONVERSATION_STARTED, "p", button="GET_STARTED", detail=detail, source=source
        )
    elif how < 0.9 and placement is not None:
        # A link opened in a thread the customer already has: a `messaging_referrals` event.
        detail, source = _started("referral", campaign, placement, forced)
        started = j.inbound(EventName.CONVERSATION_STARTED, "r", detail=detail, source=source)
    else:
        if campaign == EXPERIMENT:
            j.variant = j.hashed  # a typed message names no variant
        detail, source = _started("text", campaign, None, None)
        text = j.inbound(EventName.TEXT_RECEIVED, "m")
        started = j.record(
            f"{text.event_id}.s",
            EventName.CONVERSATION_STARTED,
            j.now // _MS * _MS,
            detail=detail,
            source=source,
        )
    if rng.random() < 0.01:
        j.send_failed(started)
        return Journey(j.events, j.platform_ms)
    welcome_ms, welcome_id = j.send(started, EventName.WELCOME_SENT, "w", source=source)
    welcome_stamp = j.bot_free
    receipts = rng.random() < 0.85  # some phones never report reads
    answers = rng.random() >= 0.22
    # A few tap a button as soon as the welcome shows, before the Send API has answered the bot.
    quick = answers and rng.random() < 0.04
    # Some report reading the welcome only after the coupon went out (a second device catching up).
    late_read = receipts and rng.random() < (0.5 if quick else 0.05)
    if quick:
        tap_us = j.now + int((welcome_stamp - j.now) * rng.uniform(0.5, 0.95))
        j.now += (tap_us - j.now) // 4
        j.receipt(EventName.MESSAGE_DELIVERED, "d", welcome_ms, welcome_id)
        if receipts and not late_read:
            j.now += (tap_us - j.now) // 2
            j.receipt(EventName.MESSAGE_READ, "rd", welcome_ms)
        j.now = tap_us
    else:
        j.delivered(welcome_ms, welcome_id)
        if receipts and not late_read:
            j.read(welcome_ms)
        if not answers:
            return Journey(j.events, j.platform_ms)
        # Most answer within minutes, some hours or days later (a few after the 7-day window).
        j.wait(rng.lognormvariate(4.5, 2.2))

    payload = f"{campaign}|{j.variant or ''}|"
    if rng.random() < 0.3:
        no = j.inbound(EventName.DECLINED, "p", button=payload + "no")
        j.send(no, EventName.THANKS_SENT, "t")
        thanks_ms, thanks_id = j.send(no, EventName.THANKS_SENT, "i", detail=_IMAGE)
        if late_read:
            j.wait(rng.uniform(0.2, 2))
            j.receipt(EventName.MESSAGE_READ, "rd", welcome_ms)
        j.delivered(thanks_ms, thanks_id)
        if receipts:
            j.read(thanks_ms)
        return Journey(j.events, j.platform_ms)
    yes = j.inbound(EventName.COUPON_REQUESTED, "p", button=payload + "yes")
    coupon_ms, coupon_id = j.send(yes, EventName.COUPON_SENT, "c")
    reveals = rng.random() < VARIANT_REVEALS.get(j.variant, REVEALS)
    j.delivered(coupon_ms, coupon_id)
    if late_read:
        # Reported after the bot's stamp of the coupon, yet it covers the welcome only.
        j.now = max(j.now, j.bot_free) + int(rng.uniform(0.2, 90) * _SECOND)
        j.receipt(EventName.MESSAGE_READ, "rd", welcome_ms)
    # Some read the coupon and stop there; a few never open it.
    if receipts and (reveals or rng.random() < 0.85):
        j.read(coupon_ms)
    if reveals:
        j.wait(rng.lognormvariate(3.5, 1.5))
        reveal = j.inbound(EventName.COUPON_REVEALED, "p", button=payload + "reveal")
        if codes_gone_us is not None and j.now >= codes_gone_us:
            # The bot records it as of the reveal it answers.
            j.record(f"{reveal.event_id}.e", EventName.COUPON_POOL_EMPTY, j.now // _MS * _MS)
            j.send(reveal, EventName.ALL_GONE_SENT, "g")
            return Journey(j.events, j.platform_ms)
        code_ms, code_id = j.send(reveal, EventName.CODE_SENT, "k")
        j.delivered(code_ms, code_id)
        if receipts:
            j.read(code_ms)
        if rng.random() < REDEEMED_SHARE:
            j.redeem_later()
    return Journey(j.events, j.platform_ms)


def generate(
    customers: range, days: int, *, seed: int = 7, end: datetime | None = None
) -> Iterator[list[Event]]:
    """Each customer's events (one or two journeys), first contacts spread over the `days` before `end`."""
    rng = random.Random(seed)
    cutoff = end or datetime.now(UTC)
    end_us = (cutoff - _EPOCH) // timedelta(microseconds=1)
    first_day = end_us // (86400 * _SECOND) - days
    codes_gone = {c: end_us - d * 86400 * _SECOND for c, d in CODES_GONE_DAYS.items()}
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
        gone_us = codes_gone.get(campaign)
        events = journey(rng, customer, begin, campaign, gone_us).events
        if rng.random() < 0.06:  # comes back for another go: the same code, redeemed once at most
            again = begin + int(rng.uniform(1, 10) * 86400 * _SECOND)
            used = any(e.event == EventName.COUPON_REDEEMED for e in events)
            has_code = any(e.event == EventName.CODE_SENT for e in events)  # a second reveal: that code again
            # Some come back through a link that names the other variant: they saw both.
            seen = events[0].variant
            other = None
            if seen is not None and rng.random() < 0.3:
                other = next(v for v, _ in VARIANTS if v != seen)
            second = journey(rng, customer, again, campaign, None if has_code else gone_us, forced=other)
            events += [e for e in second.events if not (used and e.event == EventName.COUPON_REDEEMED)]
        yield [e for e in events if e.ts <= cutoff]


def _write_part(
    out: Path, customers: range, days: int, seed: int, end: datetime, counter: _Progress | None = None
) -> int:
    """One writer's share of the customers, as one file per day; returns how many events."""
    written = 0

    def events() -> Iterator[Event]:
        nonlocal written
        for done, customer_events in enumerate(generate(customers, days, seed=seed, end=end), start=1):
            written += len(customer_events)
            yield from customer_events
            if counter is not None and done % 1000 == 0:
                counter.value = done

    # A name of its own: parts written at once, and samples written into the same store again, never collide
    # with each other or with a bot's files.
    write_events(FileStore(str(out)), events(), f"sample-{uuid.uuid4().hex[:12]}")
    return written


_counter: _Progress | None = None  # a worker process's progress counter, shared with the parent


def _share_counter(counter: _Progress) -> None:
    global _counter
    _counter = counter


def _write_part_in_worker(out: Path, customers: range, days: int, seed: int, end: datetime) -> int:
    return _write_part(out, customers, days, seed, end, counter=_counter)


def write_sample(out: Path, customers: int, days: int, *, seed: int = 7, progress: bool = True) -> int:
    """Write sample events into the store at `out` (a directory or `s3://bucket/prefix`).

    From PARALLEL_FROM customers on, two processes write half each, as two writers of their own.

    Parameters:
        customers, days: how many customers, first reached over how many days up to now.
        seed: the same seed gives the same events.
        progress: show a progress bar.
    Returns:
        How many events were written.
    """
    end = datetime.now(UTC)
    if customers < PARALLEL_FROM:
        return _write_part(out, range(customers), days, seed, end)
    half = customers // 2
    parts = [(out, range(0, half), days, seed, end), (out, range(half, customers), days, seed + 1, end)]
    context = multiprocessing.get_context("spawn")  # the caller may hold threads (DuckDB's)
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
