"""The metrics computed the straightforward way, in plain Python: what the DuckDB queries must agree with."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from bot.events import Event

STEPS = ("reached", "responded", "coupon_requested", "coupon_seen", "coupon_revealed", "declined")


def deduplicate(events: list[Event]) -> list[Event]:
    first: dict[str, Event] = {}
    for event in sorted(events, key=lambda e: e.ts):
        first.setdefault(event.event_id, event)
    return list(first.values())


def local_date(ts: datetime, tz: str) -> date:
    return ts.astimezone(ZoneInfo(tz)).date()


def journeys(events, campaign=None, start=None, end=None, window=timedelta(days=7), tz="UTC") -> dict:
    """(campaign, customer) -> {step: ts}"""
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
        after = [e for e in mine if entry <= e.ts <= entry + window]

        def first(names, after_ts=None, where=lambda e: True, events=tuple(after)):
            times = [
                e.ts
                for e in events
                if e.event in names and (after_ts is None or e.ts >= after_ts) and where(e)
            ]
            return min(times) if times else None

        steps = {"reached": entry, "responded": first({"coupon_requested", "declined"})}
        requested = first({"coupon_requested"})
        steps["coupon_requested"] = requested
        sent = first({"coupon_sent"}, requested) if requested else None
        read = None
        if sent is not None:
            sent_ms = int(sent.timestamp() * 1_000_000) // 1000
            covers = lambda e, ms=sent_ms: json.loads(e.detail)["watermark"] >= ms  # noqa: E731
            read = first({"message_read"}, where=covers)
        revealed = first({"coupon_revealed"}, requested) if requested else None
        seen = [t for t in (read, revealed) if t is not None]
        steps["coupon_seen"] = min(seen) if seen else None
        steps["coupon_revealed"] = revealed
        steps["declined"] = first({"declined"})
        result[pair] = steps
    return result


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def funnel(events, **filters) -> dict[str, dict]:
    rows = {}
    for step in STEPS:
        seconds = [
            (steps[step] - steps["reached"]).total_seconds()
            for steps in journeys(events, **filters).values()
            if steps[step] is not None
        ]
        rows[step] = {
            "customers": len(seconds),
            "median_seconds": None if step == "reached" else quantile(seconds, 0.5),
            "p90_seconds": None if step == "reached" else quantile(seconds, 0.9),
        }
    return rows


def timeline(events, tz="UTC", **filters) -> dict[tuple[date, str], int]:
    counts: dict = defaultdict(int)
    for steps in journeys(events, tz=tz, **filters).values():
        for step, ts in steps.items():
            if ts is not None:
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


def cohorts(events, period="week", campaign=None, tz="UTC") -> dict[tuple[date, int], dict]:
    events = [e for e in deduplicate(events) if campaign is None or e.campaign_id == campaign]
    if not events:
        return {}
    zone = ZoneInfo(tz)
    local = {e.event_id: e.ts.astimezone(zone).replace(tzinfo=None) for e in events}
    last = max(local.values())
    first_reach: dict[str, datetime] = {}
    for e in events:
        if e.event == "welcome_sent":
            t = local[e.event_id]
            first_reach[e.customer_id] = min(first_reach.get(e.customer_id, t), t)
    out = {}
    for cohort in {_truncate(t.date(), period) for t in first_reach.values()}:
        members = [c for c, t in first_reach.items() if _truncate(t.date(), period) == cohort]
        cohort_start = datetime.combine(cohort, datetime.min.time())
        for k in range(_periods_between(cohort, _truncate(last.date(), period), period) + 1):
            revealed = {
                e.customer_id
                for e in events
                if e.event == "coupon_revealed"
                and e.customer_id in members
                and local[e.event_id] >= cohort_start
                and _periods_between(cohort, _truncate(local[e.event_id].date(), period), period) == k
            }
            end_of_k = datetime.combine(_add_periods(cohort, k + 1, period), datetime.min.time())
            out[(cohort, k)] = {
                "customers": len(revealed),
                "share": round(len(revealed) / len(members), 4),
                "complete": end_of_k <= last,
            }
    return out


def buttons(events, campaign=None, start=None, end=None, tz="UTC") -> dict[str, dict]:
    clicks = [
        e
        for e in deduplicate(events)
        if e.button is not None
        and (campaign is None or e.campaign_id == campaign)
        and (start is None or local_date(e.ts, tz) >= start)
        and (end is None or local_date(e.ts, tz) <= end)
    ]
    out = {}
    for button in {e.button for e in clicks}:
        mine = [e for e in clicks if e.button == button]
        out[button] = {
            "clicks": len(mine),
            "customers": len({e.customer_id for e in mine}),
            "share": round(len(mine) / len(clicks), 4),
        }
    return out


def median(values):
    return statistics.median(values) if values else None
