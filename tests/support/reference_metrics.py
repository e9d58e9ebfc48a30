"""The metrics computed the straightforward way, in plain Python: what the DuckDB queries must agree with."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from bot.events import Event
from bot.facts import SEND_ALLOWANCE

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
STEPS = (
    "reached",
    "responded",
    "coupon_requested",
    "coupon_seen",
    "coupon_revealed",
    "redeemed",
    "declined",
)


def deduplicate(events: list[Event]) -> list[Event]:
    first: dict[str, Event] = {}
    for event in sorted(events, key=lambda e: e.ts):
        first.setdefault(event.event_id, event)
    return list(first.values())


def local_date(ts: datetime, tz: str) -> date:
    return ts.astimezone(ZoneInfo(tz)).date()


def _watermark(event: Event) -> int | None:
    if getattr(event, "watermark", None) is not None:
        return event.watermark
    return json.loads(event.detail)["watermark"] if event.detail else None


def _entry_label(mine: list[Event], entry: datetime) -> tuple[str, str | None]:
    """The source and variant of a journey's entry welcome ('unknown' when it has no source)."""
    welcomes = [e for e in mine if e.event == "welcome_sent" and e.ts == entry]
    sources = [e.source for e in welcomes if e.source is not None]
    variants = [e.variant for e in welcomes if e.variant is not None]
    return (min(sources) if sources else "unknown"), (min(variants) if variants else None)


def journeys(
    events,
    campaign=None,
    start=None,
    end=None,
    window=timedelta(days=7),
    tz="UTC",
    source=None,
    variant=None,
    labels=None,
) -> dict:
    """(campaign, customer) -> {step: ts}, as docs/metrics.md defines each step; only journeys whose entry
    welcome has `source` and `variant` (when given). `labels`, a dict, receives each journey's (source,
    variant)."""
    events = [e for e in deduplicate(events) if campaign is None or e.campaign_id == campaign]
    by_pair = defaultdict(list)
    for e in events:
        by_pair[(e.campaign_id, e.customer_id)].append(e)
    result = {}
    for pair, mine in by_pair.items():
        welcomes = [
            e.ts
            for e in mine
            if e.event == "welcome_sent"
            and (start is None or local_date(e.ts, tz) >= start)
            and (end is None or local_date(e.ts, tz) <= end)
        ]
        if not welcomes:
            continue
        entry = min(welcomes)
        label = _entry_label(mine, entry)
        if (source is not None and label[0] != source) or (variant is not None and label[1] != variant):
            continue
        if labels is not None:
            labels[pair] = label
        last = entry + window

        def first(name, lowest, where=lambda e: True, mine=mine, last=last):
            times = [e.ts for e in mine if e.event == name and lowest <= e.ts <= last and where(e)]
            return min(times) if times else None

        requested = first("coupon_requested", entry - SEND_ALLOWANCE)
        declined = first("declined", entry - SEND_ALLOWANCE)
        revealed = read = None
        if requested is not None:
            revealed = first("coupon_revealed", requested)
            requested_us = (requested - EPOCH) // timedelta(microseconds=1)
            coupon_sent = any(e.event == "coupon_sent" and e.ts >= requested for e in mine)
            covers = lambda e, us=requested_us: _watermark(e) * 1000 > us  # noqa: E731
            read = first("message_read", requested, covers) if coupon_sent else None
        # Used at the till: the redemption is stamped by the bot's clock, the reveal by the platform's.
        redeemed = None if revealed is None else first("coupon_redeemed", revealed - SEND_ALLOWANCE)
        seen = [t for t in (read, revealed) if t is not None]
        answered = [t for t in (requested, declined) if t is not None]
        result[pair] = {
            "reached": entry,
            "responded": min(answered) if answered else None,
            "coupon_requested": requested,
            "coupon_seen": min(seen) if seen else None,
            "coupon_revealed": revealed,
            "redeemed": redeemed,
            "declined": declined,
        }
    return result


def customers(events, **filters) -> dict:
    """customer -> {step: (earliest ts, shortest time from entry)}: a customer counts once at each step."""
    merged: dict = defaultdict(dict)
    for (_, customer), steps in journeys(events, **filters).items():
        entry = steps["reached"]
        for step, ts in steps.items():
            if ts is None:
                continue
            taken = max(ts - entry, timedelta(0))
            if step in merged[customer]:
                earliest, shortest = merged[customer][step]
                ts, taken = min(ts, earliest), min(taken, shortest)
            merged[customer][step] = (ts, taken)
    return merged


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def funnel(events, **filters) -> dict[str, dict]:
    everyone = customers(events, **filters).values()
    rows = {}
    for step in STEPS:
        seconds = [steps[step][1].total_seconds() for steps in everyone if step in steps]
        rows[step] = {
            "customers": len(seconds),
            "median_seconds": None if step == "reached" else quantile(seconds, 0.5),
            "p90_seconds": None if step == "reached" else quantile(seconds, 0.9),
        }
    return rows


def timeline(events, tz="UTC", **filters) -> dict[tuple[date, str], int]:
    counts: dict = defaultdict(int)
    for steps in customers(events, tz=tz, **filters).values():
        for step, (ts, _) in steps.items():
            counts[(local_date(ts, tz), step)] += 1
    return dict(counts)


def _truncate(day: date, period: str) -> date:
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


def _periods_between(a: date, b: date, period: str) -> int:
    if period == "month":
        return (b.year - a.year) * 12 + b.month - a.month
    return (b - a).days // (7 if period == "week" else 1)


def _add_periods(a: date, n: int, period: str) -> date:
    if period == "month":
        month = a.month - 1 + n
        return a.replace(year=a.year + month // 12, month=month % 12 + 1)
    return a + timedelta(days=n * (7 if period == "week" else 1))


def share(part: int, whole: int) -> float:
    """part / whole to 4 places, rounded half up on the exact ratio (as the metric definitions round)."""
    return ((20_000 * part + whole) // (2 * whole)) / 10_000


def cohorts(
    events, period="week", tz="UTC", step="coupon_revealed", **filters
) -> dict[tuple[date, int], dict]:
    """Customers by the period of their entry; who reached `step` (as the funnel counts it) in period k
    after."""
    everyone = customers(events, tz=tz, **filters)
    campaign = filters.get("campaign")
    stored = [e for e in deduplicate(events) if campaign is None or e.campaign_id == campaign]
    if not everyone or not stored:
        return {}
    zone = ZoneInfo(tz)
    last = max(e.ts for e in stored).astimezone(zone).replace(tzinfo=None)

    def period_of(ts: datetime) -> date:
        return _truncate(ts.astimezone(zone).date(), period)

    members = defaultdict(list)
    for steps in everyone.values():
        members[period_of(steps["reached"][0])].append(steps)
    out = {}
    for cohort, steps_of in members.items():
        for k in range(_periods_between(cohort, _truncate(last.date(), period), period) + 1):
            converted = [
                s
                for s in steps_of
                if step in s and _periods_between(cohort, period_of(s[step][0]), period) == k
            ]
            end_of_k = datetime.combine(_add_periods(cohort, k + 1, period), datetime.min.time())
            out[(cohort, k)] = {
                "customers": len(converted),
                "share": share(len(converted), len(steps_of)),
                "complete": end_of_k <= last,
            }
    return out


def buttons(events, campaign=None, start=None, end=None, tz="UTC") -> dict[tuple[str, str], dict]:
    """(button, the event the click was stored as) -> clicks, customers, share."""
    clicks = [
        e
        for e in deduplicate(events)
        if e.button is not None
        and (campaign is None or e.campaign_id == campaign)
        and (start is None or local_date(e.ts, tz) >= start)
        and (end is None or local_date(e.ts, tz) <= end)
    ]
    out = {}
    for key in {(e.button, str(e.event)) for e in clicks}:
        mine = [e for e in clicks if (e.button, str(e.event)) == key]
        out[key] = {
            "clicks": len(mine),
            "customers": len({e.customer_id for e in mine}),
            "share": share(len(mine), len(clicks)),
        }
    return out


def median(values):
    return statistics.median(values) if values else None


def sources(events, **filters) -> dict[str, dict]:
    """source -> {"title": …, step: customers}: each customer under the source of their earliest entry, at a
    step when any of their journeys is."""
    labels: dict = {}
    by_customer: dict = defaultdict(list)
    for (campaign, customer), steps in journeys(events, labels=labels, **filters).items():
        by_customer[customer].append((steps, labels[(campaign, customer)][0]))
    titles: dict = {}
    for e in sorted(deduplicate(events), key=lambda e: e.ts):
        if e.event == "conversation_started" and e.source and e.source.startswith("ad:") and e.detail:
            title = json.loads(e.detail).get("ad_title")
            if title is not None:
                titles[e.source] = title  # the latest
    out: dict = {}
    for journeys_of in by_customer.values():
        _, source = min(journeys_of, key=lambda pair: (pair[0]["reached"], pair[1]))  # a tie: the smallest
        row = out.setdefault(source, {"title": titles.get(source), **dict.fromkeys(STEPS, 0)})
        for step in STEPS:
            row[step] += any(steps[step] is not None for steps, _ in journeys_of)
    return out


def experiment(events, campaign, step="coupon_revealed", **filters) -> dict:
    """An experiment's counts: {"variants": {variant: {customers, conversions, declined, send_failed}},
    "excluded_mixed": n, "excluded_forced": n}, customers by the variant of their entry welcome."""
    window = filters.get("window", timedelta(days=7))
    stored = [e for e in deduplicate(events) if e.campaign_id == campaign]
    shown: dict = defaultdict(set)
    for e in stored:
        if e.event == "welcome_sent" and e.variant is not None:
            shown[e.customer_id].add(e.variant)
    forced = {
        e.customer_id
        for e in stored
        if e.event == "conversation_started"
        and e.detail
        and json.loads(e.detail).get("variant_forced") is True
    }
    labels: dict = {}
    variants: dict = {}
    mixed_count = forced_count = 0
    for (_, customer), steps in journeys(events, campaign=campaign, labels=labels, **filters).items():
        variant = labels[(campaign, customer)][1]
        if variant is None:
            continue
        mixed, was_forced = len(shown[customer]) > 1, customer in forced
        mixed_count += mixed
        forced_count += was_forced
        if mixed or was_forced:
            continue
        entry = steps["reached"]
        failed = any(
            e.event == "send_failed" and e.customer_id == customer and entry <= e.ts <= entry + window
            for e in stored
        )
        row = variants.setdefault(
            variant, {"customers": 0, "conversions": 0, "declined": 0, "send_failed": 0}
        )
        row["customers"] += 1
        row["conversions"] += steps[step] is not None
        row["declined"] += steps["declined"] is not None
        row["send_failed"] += failed
    return {"variants": variants, "excluded_mixed": mixed_count, "excluded_forced": forced_count}
