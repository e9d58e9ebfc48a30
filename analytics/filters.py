"""Which journeys a question is about: the one parameter object every metric accepts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.facts import SEND_ALLOWANCE

DEFAULT_WINDOW = timedelta(days=7)

_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Bounds for an open date range, in µs since the epoch: 9,000 years away, and room to spare in an int64
# for the definitions' arithmetic.
_NO_START = -(2**58)
_NO_END = 2**58


class AnalyticsError(ValueError):
    """A question the metrics cannot answer as asked (an unknown period, a bad time zone, …)."""


@dataclass(frozen=True, slots=True)
class Filters:
    """The journeys a metric counts.

    Parameters:
        campaign: one campaign's id, or None for every campaign (customers then count once).
        start, end: inclusive days in `tz` on which a journey's entry (its first welcome) falls; None: open.
        window: how long after its entry a journey's steps count.
        tz: the IANA time zone of days (`start`, `end`, timeline days, cohorts).
        source: only journeys whose entry welcome came from this source (`till`, `ad:<ad_id>`, `direct`,
            `unknown` for events written before sources were recorded, …); None: every source.
        variant: only journeys whose entry welcome was of this variant; None: every variant.

    Raises:
        AnalyticsError: a non-positive window, a date that is not a date, start after end, an unknown zone.
    """

    campaign: str | None = None
    start: date | None = None
    end: date | None = None
    window: timedelta = DEFAULT_WINDOW
    tz: str = "UTC"
    source: str | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.window, timedelta) or self.window <= timedelta(0):
            raise AnalyticsError(f"window must be a positive timedelta, not {self.window!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, date) or isinstance(value, datetime)):
                raise AnalyticsError(f"{name} must be a date (inclusive), not {value!r}")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise AnalyticsError(f"start {self.start} is after end {self.end}")
        for name in ("campaign", "source", "variant"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise AnalyticsError(f"{name} must be a string or None, not {value!r}")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise AnalyticsError(f"unknown time zone {self.tz!r}") from None

    @classmethod
    def of(cls, filters: Filters | None = None, **keywords: Any) -> Filters:
        """`filters`, or the Filters the keywords name (None values fall back to the defaults)."""
        given = {name: value for name, value in keywords.items() if value is not None}
        if filters is not None:
            if given:
                raise AnalyticsError("pass either a Filters object or keywords, not both")
            return filters
        unknown = set(given) - set(cls.__dataclass_fields__)
        if unknown:
            raise AnalyticsError(f"unknown filter {sorted(unknown)[0]!r}")
        return cls(**given)

    def params(self) -> dict[str, Any]:
        """The SQL parameters of the metric definitions (analytics.definitions)."""
        zone = ZoneInfo(self.tz)

        def micros(day: date) -> int:
            return (
                datetime.combine(day, time(0), zone) - datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC"))
            ) // _US

        return {
            "campaign": self.campaign,
            "start_us": _NO_START if self.start is None else micros(self.start),
            "end_us": _NO_END if self.end is None else micros(self.end + timedelta(days=1)),
            "window_us": self.window // _US,
            "allowance_us": SEND_ALLOWANCE // _US,
            "end_of_time": _NO_END,
            "tz": self.tz,
            "source": self.source,
            "variant": self.variant,
        }

    @property
    def labelled(self) -> bool:
        """Whether the question picks journeys by the source or variant of their entry."""
        return self.source is not None or self.variant is not None
