"""The bot's health: checks and their outcomes, and the store's checks (last webhook, outbox, flush)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from bot.database import SEEN_RETENTION, Database, DatabaseError
from bot.rows import moment
from bot.words import count


@dataclass(frozen=True, slots=True)
class HealthFigures:
    """What the store tells of the bot's health; times on the bot's clock, None when there is none."""

    last_seen: datetime | None  # the newest seen mark: when the last webhook with a new event was recorded
    outbox_rows: int  # replies owed, claimed or not
    oldest_due: datetime | None  # the earliest `due_at` in the outbox (a claimed reply's is its lease's end)
    buffered_events: int  # events waiting for the flusher
    oldest_buffered: datetime | None  # when the oldest of them was recorded


def health_figures(database: Database) -> HealthFigures:
    """The newest seen mark, the outbox's size and earliest due time, the events buffer's size and the
    recording time of its oldest event (reads only: no write lock). Blocking."""
    ((last_seen,),) = database.query("SELECT max(seen_at) FROM seen")
    ((owed, oldest_due),) = database.query("SELECT count(*), min(due_at) FROM outbox")
    ((buffered,),) = database.query("SELECT count(*) FROM events")
    # Events carry no time of recording: an inbound event's is its seen mark (the bot's clock); the bot's
    # own (sends) carry its clock in `ts`. A redemption read from a till's export carries the till's time,
    # which can make the buffer look older than it is until the next flush.
    oldest = database.query(
        "SELECT coalesce(seen.seen_at, events.ts) FROM events"
        " LEFT JOIN seen ON seen.event_id = events.event_id ORDER BY events.seq LIMIT 1"
    )
    return HealthFigures(
        last_seen=None if last_seen is None else moment(last_seen),
        outbox_rows=owed,
        oldest_due=None if oldest_due is None else moment(oldest_due),
        buffered_events=buffered,
        oldest_buffered=moment(oldest[0][0]) if oldest else None,
    )


class Status(StrEnum):
    """How a check came out, from best to worst."""

    OK = "ok"
    WARN = "warn"  # works for now; look at it soon
    FAIL = "fail"  # customers are not being answered, or soon will not be


_RANK = {Status.OK: 0, Status.WARN: 1, Status.FAIL: 2}


class Name(StrEnum):
    """The checks, in the order the doctor runs them."""

    PAGE = "page token"  # GET /me with the page token
    WEBHOOKS = "webhooks"  # the app's subscription to the page's webhook fields
    APP_ID = "app id"  # PROMOBOT_APP_ID against the token's app: its echoes are the bot's own messages
    MENU = "persistent menu"  # the page's menu has the item that opts a customer out
    GRAPH_VERSION = "graph api version"  # PROMOBOT_GRAPH_VERSION against its end of life
    LAST_WEBHOOK = "last webhook"  # the newest seen mark
    OUTBOX = "outbox"  # replies owed, and how overdue the oldest is
    FLUSH = "flush"  # events waiting for the flusher, and for how long
    STORE = "store"  # the database itself, when it cannot be read


@dataclass(frozen=True)
class Check:
    """One check's outcome: a one-line message, and for a warning or a failure what to do."""

    name: str
    status: Status
    message: str
    fix: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def worst(checks: Iterable[Check]) -> Status:
    """The worst status of `checks` (OK when there are none)."""
    return max((check.status for check in checks), key=_RANK.__getitem__, default=Status.OK)


QUIET_PAGE = timedelta(hours=24)  # no new event for this long: a quiet page, or webhooks that stopped
OVERDUE_WARNING = timedelta(minutes=1)  # a sender claims a due reply within seconds
OVERDUE_FAILURE = timedelta(minutes=10)
FLUSH_FAILURE = timedelta(hours=1)  # the dashboard an hour behind


def _age(span: timedelta) -> str:
    """A duration as people say it: 45 s, 12 min, 3 h 5 min, 4 days."""
    seconds = max(0, int(span.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"


def store_checks(figures: HealthFigures, now: datetime, *, flush_seconds: float = 60.0) -> list[Check]:
    """The "last webhook", "outbox" and "flush" checks of the store's figures at `now` (the bot's clock).

    Parameters: `flush_seconds` the flusher's interval (PROMOBOT_FLUSH_SECONDS): events wait up to that long.
    """
    checks = []
    if figures.last_seen is None:
        checks.append(
            Check(
                Name.LAST_WEBHOOK,
                Status.WARN,
                f"no new event recorded in the last {SEEN_RETENTION.days} days",
                "send the page a message; if the bot does not answer, see whether the page's webhook is"
                " subscribed (`python -m bot doctor`'s page checks)",
            )
        )
    else:
        quiet = now - figures.last_seen
        status = Status.WARN if quiet > QUIET_PAGE else Status.OK
        fix = (
            "a quiet page, or webhooks no longer arrive: see whether the page's webhook is subscribed"
            " (`python -m bot doctor`'s page checks)"
        )
        checks.append(
            Check(Name.LAST_WEBHOOK, status, f"{_age(quiet)} ago", fix if status is Status.WARN else None)
        )

    overdue = now - figures.oldest_due if figures.oldest_due is not None else timedelta(0)
    owed = count(figures.outbox_rows, "reply", "replies") + " owed"
    if figures.outbox_rows == 0:
        checks.append(Check(Name.OUTBOX, Status.OK, "no reply owed"))
    elif overdue <= OVERDUE_WARNING:
        checks.append(Check(Name.OUTBOX, Status.OK, f"{owed}, none overdue"))
    else:
        status = Status.FAIL if overdue > OVERDUE_FAILURE else Status.WARN
        fix = "replies are not going out: check that the bot's sender runs and its log for errors"
        checks.append(Check(Name.OUTBOX, status, f"{owed}, the oldest due {_age(overdue)} ago", fix))

    if figures.oldest_buffered is None:
        checks.append(Check(Name.FLUSH, Status.OK, "no event waiting"))
    else:
        lag = now - figures.oldest_buffered
        waiting = f"{count(figures.buffered_events, 'event')} waiting, the oldest for {_age(lag)}"
        warn_after = timedelta(seconds=3 * flush_seconds)
        status = (
            Status.FAIL
            if lag > max(FLUSH_FAILURE, 2 * warn_after)
            else Status.WARN
            if lag > warn_after
            else Status.OK
        )
        fix = "events are not being written to Parquet: check the log for flush errors"
        checks.append(Check(Name.FLUSH, status, waiting, None if status is Status.OK else fix))
    return checks


def local_health(
    database: Database, now: datetime | None = None, *, flush_seconds: float = 60.0
) -> list[Check]:
    """The store's checks (last webhook, outbox, flush) without the Graph API: the dashboard's health strip.

    Parameters: `now` the bot's clock (default: the database's); `flush_seconds` PROMOBOT_FLUSH_SECONDS.
    Returns: three checks; one failing "store" check when the database cannot be read. Blocking.
    """
    try:
        figures = health_figures(database)
    except DatabaseError as exc:
        return [
            Check(Name.STORE, Status.FAIL, str(exc), "check the database (PROMOBOT_DATABASE_URL, the disk)")
        ]
    return store_checks(figures, now or database.clock(), flush_seconds=flush_seconds)
