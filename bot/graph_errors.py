"""How a Graph API call fails: the platform's error codes, the error classes, the usage its answers report,
and the retry policy."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

# The Graph API's "slow down" codes: 4 / 17 / 32 / 613, and 80001 / 80006 (the Pages and Messenger business
# use case limits, which page tokens count against).
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80001, 80006})
# Worth retrying: those; 1 unknown, 2 service unavailable, 1200 the Send API's "temporary send message
# failure".
TRANSIENT_CODES = RATE_LIMIT_CODES | {1, 2, 1200}
TOKEN_INVALID = 190

# The platform's usage headers: the share of each rate limit used so far (percent), and once throttled, the
# minutes until calls are accepted again. X-App-Usage and X-Page-Usage hold one such object, X-Business-Use-
# Case-Usage (the limits page tokens count against) a list of them per business object id. X-Ad-Account-Usage
# is the Marketing API's, which the bot does not call.
USAGE_HEADERS = ("x-app-usage", "x-page-usage", "x-business-use-case-usage")
USAGE_METRICS = ("call_count", "total_cputime", "total_time")
# The longest usage window is a day (the Pages and Messenger limits): an estimate beyond it is not believed.
LONGEST_STATED_HOLD_S = 24 * 3600.0


class SendError(Exception):
    """A Graph API call that did not succeed; `code`/`subcode` are the platform's when it gave them."""

    def __init__(self, reason: str, *, code: int | None = None, subcode: int | None = None, transient: bool):
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.subcode = subcode
        self.transient = transient

    def gave_up(self, attempts: int) -> SendError:
        """The same failure, its reason saying after how many attempts the call was given up."""
        kind = TransientSendError if self.transient else PermanentSendError
        error = kind(
            f"{self.reason} (gave up after {attempts} attempts)", code=self.code, subcode=self.subcode
        )
        error.__cause__ = self.__cause__
        return error


class PermanentSendError(SendError):
    def __init__(self, reason: str, *, code: int | None = None, subcode: int | None = None):
        super().__init__(reason, code=code, subcode=subcode, transient=False)


class TransientSendError(SendError):
    def __init__(self, reason: str, *, code: int | None = None, subcode: int | None = None):
        super().__init__(reason, code=code, subcode=subcode, transient=True)


@dataclass(frozen=True, slots=True)
class Usage:
    """What an answer's usage headers report: the highest share of any limit used (percent; None when no
    header said), and the seconds until a throttled app's calls are accepted again (0: not throttled)."""

    percent: float | None
    regain_s: float


def usage_of(headers: Mapping[str, str]) -> Usage | None:
    """The usage reported by an answer's `headers` (looked up in lower case, as `httpx.Headers` allows).

    Returns: None when no usage header can be read. A malformed header or value counts as absent (never
    raises: what the platform sends must not stop the sender).
    """
    percents: list[float] = []
    regains: list[float] = []
    for name in USAGE_HEADERS:
        value = headers.get(name)
        if not value:
            continue
        try:
            report = json.loads(value)
        except (ValueError, RecursionError):
            continue
        if not isinstance(report, dict):
            continue
        # One object (app, page), or per business object id a list of them (one per business use case).
        entries = [report, *(e for v in report.values() if isinstance(v, list) for e in v)]
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            shares = (_share(entry.get(metric)) for metric in USAGE_METRICS)
            percents += [share for share in shares if share is not None]
            minutes = _share(entry.get("estimated_time_to_regain_access"))
            if minutes is not None:
                regains.append(min(minutes * 60, LONGEST_STATED_HOLD_S))
    if not percents and not regains:
        return None
    return Usage(max(percents, default=None), max(regains, default=0.0))


def _share(value: object) -> float | None:
    """A finite number, at least 0; else None (JSON's true, NaN, 1e400, a string, a negative number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


@dataclass(frozen=True)
class RetryPolicy:
    deadline_s: float = 20.0  # give up on a message after this long, all attempts together
    first_backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    request_timeout_s: float = 5.0  # one attempt, connect to last byte
    # The platform asked to slow down: no call of the client goes out for this long, doubling while it keeps
    # asking (its advice: pause until the usage drops), back to the first once a call gets through.
    first_hold_s: float = 1.0
    max_hold_s: float = 60.0  # not for a hold the platform states: that one is kept (up to a day)
    # From this share of any rate limit (percent, as the answers' usage headers report it), the client sends
    # one request at a time, each `first_hold_s` after the last answer, until an answer reports less. The
    # platform throttles at 100, and a reading arrives while up to `max_connections` requests of up to 50
    # calls each may be under way (16 * 50 calls: a tenth of the daily Messenger quota of a page with 40
    # engaged customers); the slower pace costs little this close to a refusal.
    slow_at_usage_pct: float = 90.0
