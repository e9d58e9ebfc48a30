"""Event store benchmark: webhooks recorded per second by the transactional store, bytes per event on disk,
flush time.

    python benchmarks/store.py [--webhooks N] [--events N] [--rounds 3] [--engines sqlite postgresql]

`Database.record` commits a webhook's events, their seen marks and the replies they call for in one
transaction; callers that arrive while a commit runs share the next one (group commit). It is measured with
one lone caller and with 100 concurrent callers on one event loop (the server's webhook requests), on SQLite
(a file on this disk, synchronous=FULL) and on PostgreSQL (a server started for the run, fsync on). The
baseline, run in the same process against a fresh database of the same schema and settings, is a plain
transaction per group: the driver's `executemany` INSERT of the same rows (seen marks, events, replies owed,
and an upsert of each customer's row), one transaction per group of the size `record`'s transactions had in
the run it is compared with (1 for the lone caller). Each is run `--rounds` times, alternately, and the
medians are shown.

Bytes per event are given column by column, against the file the previous version wrote of the same events
(the platform's message ids themselves where this one keeps their digests). Flush time is `flush_once`
writing 100,000 recorded events to visible Parquet files.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.campaign import Campaign
from bot.config import SQLITE_FILE
from bot.database import Database
from bot.events import FILE_SCHEMA, Event
from bot.facts import ButtonStep
from bot.flow import Reply, button_payload, plan_replies, record
from bot.flusher import flush_once
from bot.messenger import Delivery, Inbound, Postback, Read, Referral
from bot.store import SORT_KEYS, FileStore, event_row, parquet_bytes, rows_to_table
from tests.support.postgres import PostgresServer

PAGE = "111899832631525"
CAMPAIGNS = [
    Campaign(
        id=name,
        welcome_text="Hi {first_name}! We have a little gift for you. Want to see it?",
        yes="Yes! Show me coupon",
        no="No, thanks",
        coupon_text="20% off anything in store until Sunday.",
        reveal="Reveal the coupon",
        code="SPRING20",
        thanks_text="No problem, thanks for stopping by!",
        thanks_image="https://example.com/thanks.jpg",
        variant="A",
    )
    for name in ("spring-sale", "summer-sale")
]


def message_id(rng: random.Random) -> str:
    # The platform's message ids, as the Send API answers them: "m_" and 86 characters of URL-safe base64.
    return "m_" + base64.urlsafe_b64encode(rng.randbytes(64)).decode().rstrip("=")


def journey(
    rng: random.Random, customer: str, start: datetime, campaign: Campaign, platform_ids: dict[str, str]
) -> list[Event]:
    """One customer's events as the bot records them: the platform's actions through `bot.flow.record`, the
    replies' outcomes through `Reply.sent`, with the platform's ids and both clocks. The platform's ids of the
    messages sent and delivered go to `platform_ids` (by event id), for the previous version's file."""
    events: list[Event] = []
    ms = int(start.timestamp() * 1000)  # the platform's clock

    def act(inbound: Inbound) -> Event:
        events.extend(record(campaign, inbound))
        return events[-1]

    def click(step: ButtonStep | str, after: float) -> Event:
        nonlocal ms
        ms += int(rng.expovariate(1 / after) * 1000) + 1
        payload = step if step == "GET_STARTED" else button_payload(campaign, step)
        referral = Referral("till-qr", "SHORTLINK", "OPEN_THREAD") if step == "GET_STARTED" else None
        return act(Postback(PAGE, customer, ms, payload, mid=message_id(rng), referral=referral))

    def answer(event: Event) -> int:
        """Sends the replies `event` calls for; the platform's time of the last one."""
        nonlocal ms
        for reply in plan_replies(event):
            ms += rng.randint(150, 600)  # the platform's time of the message sent
            # The bot stamps its send on its own clock once the Send API has answered: a little later.
            sent_at = datetime.fromtimestamp(ms / 1000, UTC) + timedelta(
                microseconds=rng.randint(2000, 90000)
            )
            mid = message_id(rng)
            events.append(reply.sent(mid, sent_at))
            platform_ids[events[-1].event_id] = mid
        return ms

    def delivered(platform_ms: int) -> None:
        nonlocal ms
        ms += rng.randint(300, 3000)
        mid = platform_ids[events[-1].event_id]  # the send just before
        platform_ids[act(Delivery(PAGE, customer, ms, watermark=platform_ms, mids=(mid,))).event_id] = mid

    def read(platform_ms: int, after: float) -> None:
        nonlocal ms
        ms += int(rng.expovariate(1 / after) * 1000) + 1
        act(Read(PAGE, customer, ms, watermark=platform_ms))

    welcome = answer(click("GET_STARTED", 1))
    delivered(welcome)
    if rng.random() < 0.2:
        return events  # never answers
    if rng.random() < 0.25:
        delivered(answer(click(ButtonStep.NO, 60)))
        return events
    coupon = answer(click(ButtonStep.YES, 60))
    delivered(coupon)
    read(coupon, 3)
    if rng.random() < 0.6:
        delivered(answer(click(ButtonStep.REVEAL, 20)))
    return events


def realistic_events(n: int, seed: int = 1, platform_ids: dict[str, str] | None = None) -> list[Event]:
    """A day of `n` events of customers' journeys, in the order they happened."""
    rng = random.Random(seed)
    start = datetime(2026, 3, 1, 9, tzinfo=UTC)
    platform_ids = {} if platform_ids is None else platform_ids
    events: list[Event] = []
    while len(events) < n:
        customer = str(rng.randrange(10**15, 10**16))
        begin = start + timedelta(seconds=rng.uniform(0, 12 * 3600))
        events.extend(journey(rng, customer, begin, rng.choice(CAMPAIGNS), platform_ids))
    return sorted(events[:n], key=lambda e: e.ts)


def previous_version_parquet(events: list[Event], platform_ids: dict[str, str]) -> bytes:
    """The file the previous version wrote of the same events: the platform's message id itself (a string,
    delta-coded) where this version keeps its digest."""
    schema = pa.schema(
        [pa.field("message_id", pa.string()) if f.name == "message_digest" else f for f in FILE_SCHEMA]
    )
    rows = []
    for event in events:
        row = event.to_dict()
        del row["message_digest"]
        row["message_id"] = platform_ids.get(event.event_id)
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=schema).sort_by(SORT_KEYS)
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=9,
        use_dictionary=["page_id", "campaign_id", "variant", "event", "button", "detail"],
        column_encoding={name: "DELTA_BYTE_ARRAY" for name in ("event_id", "customer_id", "message_id")},
        coerce_timestamps="us",
        write_statistics=True,
    )
    return sink.getvalue()


Webhook = tuple[list[Event], list[Reply]]
CALLERS = 100
FLUSHED = 100_000


def webhooks(events: list[Event]) -> list[Webhook]:
    """One webhook per event, with the replies it calls for, as the server records them."""
    return [([event], plan_replies(event)) for event in events]


# -- the two engines -----------------------------------------------------------------------------------------


@dataclass
class Engine:
    """Where fresh databases come from: `fresh()` gives `Database.open`'s (url, data directory) of an empty
    one; `connect(url, directory)` a plain DB-API connection to it in autocommit mode, for the baseline."""

    name: str
    fresh: Callable[[], tuple[str | None, Path]]
    connect: Callable[[str | None, Path], Any]
    begin: str
    placeholder: str


@contextmanager
def sqlite_engine(workdir: Path) -> Iterator[Engine]:
    count = iter(range(1_000_000))

    def fresh() -> tuple[str | None, Path]:
        return None, workdir / f"sqlite-{next(count)}"

    def connect(_url: str | None, directory: Path) -> sqlite3.Connection:
        # The settings `Database` uses: a commit survives a crash of the machine.
        connection = sqlite3.connect(directory / SQLITE_FILE, isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    yield Engine("SQLite", fresh, connect, "BEGIN IMMEDIATE", "?")


@contextmanager
def postgresql_engine(workdir: Path) -> Iterator[Engine]:
    import psycopg

    count = iter(range(1_000_000))
    with PostgresServer() as server:

        def fresh() -> tuple[str | None, Path]:
            return server.create_database(f"bench_{next(count)}"), workdir

        def connect(url: str | None, _directory: Path) -> Any:
            return psycopg.connect(url, autocommit=True)

        yield Engine("PostgreSQL", fresh, connect, "BEGIN", "%s")


ENGINES = {"sqlite": sqlite_engine, "postgresql": postgresql_engine}


# -- recording webhooks --------------------------------------------------------------------------------------


def record_rate(engine: Engine, hooks: list[Webhook], callers: int) -> tuple[float, float]:
    """Webhooks per second through `Database.record` from `callers` at once, and webhooks per transaction."""

    async def run(database: Database) -> float:
        async def caller(index: int) -> None:
            for events, replies in hooks[index::callers]:
                await database.record(events, replies)

        started = time.perf_counter()
        await asyncio.gather(*(caller(index) for index in range(callers)))
        return time.perf_counter() - started

    database = Database.open(*engine.fresh())
    try:
        elapsed = asyncio.run(run(database))
        return len(hooks) / elapsed, len(hooks) / database.commits
    finally:
        database.close()


# The database's events and outbox tables name their columns as the files do.
EVENT_COLUMNS = ", ".join(FILE_SCHEMA.names)


def baseline_rate(engine: Engine, hooks: list[Webhook], group: int) -> float:
    """Webhooks per second written by hand: one transaction per `group` webhooks, an `executemany` INSERT
    per table of the rows `Database.record` writes for them."""
    url, directory = engine.fresh()
    Database.open(url, directory).close()  # the schema
    connection = engine.connect(url, directory)
    marks = ", ".join([engine.placeholder] * 2)
    values = ", ".join([engine.placeholder] * len(FILE_SCHEMA.names))
    insert_seen = f"INSERT INTO seen (event_id, seen_at) VALUES ({marks})"
    insert_event = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({values})"
    customer_marks = ", ".join([engine.placeholder] * 3)
    # Each customer's row (their latest action: the messaging window), once per transaction, as `record` does.
    upsert_customer = (
        f"INSERT INTO customers (page_id, customer_id, last_action_at) VALUES ({customer_marks})"
        " ON CONFLICT (page_id, customer_id) DO UPDATE SET last_action_at = excluded.last_action_at"
    )
    reply_marks = ", ".join([engine.placeholder] * 4)
    insert_reply = (
        f"INSERT INTO outbox (reply_id, kind, ordinal, due_at, {EVENT_COLUMNS})"
        f" VALUES ({reply_marks}, {values})"
    )
    try:
        cursor = connection.cursor()
        started = time.perf_counter()
        for start in range(0, len(hooks), group):
            now = time.time_ns() // 1000
            chunk = hooks[start : start + group]
            events = [event for found, _ in chunk for event in found]
            replies = [
                (reply.sent_id, str(reply.kind), ordinal, now, *event_row(reply.answers))
                for _, owed in chunk
                for ordinal, reply in enumerate(owed)
            ]
            cursor.execute(engine.begin)
            cursor.executemany(insert_seen, [(event.event_id, now) for event in events])
            cursor.executemany(insert_event, [event_row(event) for event in events])
            latest = {(event.page_id, event.customer_id): event_row(event)[1] for event in events}
            cursor.executemany(upsert_customer, [(*customer, at) for customer, at in latest.items()])
            if replies:
                cursor.executemany(insert_reply, replies)
            cursor.execute("COMMIT")
        return len(hooks) / (time.perf_counter() - started)
    finally:
        connection.close()


def compare_record(engine: Engine, hooks: list[Webhook], callers: int, rounds: int) -> None:
    """`record` and its baseline, alternately, `rounds` times each; prints the medians."""
    ours, theirs, groups = [], [], []
    for _ in range(rounds):
        rate, group = record_rate(engine, hooks, callers)
        ours.append(rate)
        groups.append(group)
        theirs.append(baseline_rate(engine, hooks, max(1, round(group))))
    rate, base, group = (statistics.median(values) for values in (ours, theirs, groups))
    who = f"{callers} concurrent callers" if callers > 1 else "1 lone caller"
    print(
        f"{engine.name + ',':<12}{who + ':':<22}{rate:>9,.0f} webhooks/s   "
        f"baseline {base:>9,.0f}/s ({rate / base:.2f}x)   {group:>6.1f} webhooks per transaction"
    )


def flush_ms(engine: Engine, events: list[Event], workdir: Path, rounds: int) -> float:
    """Median time of `flush_once` writing `events`, recorded beforehand, to Parquet files."""
    timings = []
    for run in range(rounds):
        database = Database.open(*engine.fresh())
        try:
            asyncio.run(database.record(events, []))
            files = FileStore(str(workdir / f"flushed-{engine.name}-{run}"))
            started = time.perf_counter()
            assert flush_once(database, files) == len(events)
            timings.append(time.perf_counter() - started)
        finally:
            database.close()
    return statistics.median(timings) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--webhooks", type=int, default=10_000, help="for 100 callers; a tenth for one")
    parser.add_argument("--events", type=int, default=200_000, help="for bytes per event")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    args = parser.parse_args()
    platform_ids: dict[str, str] = {}
    events = realistic_events(max(args.events, args.webhooks, FLUSHED), platform_ids=platform_ids)
    hooks = webhooks(events[: args.webhooks])
    workdir = Path(tempfile.mkdtemp(prefix="promobot-bench-", dir=Path(__file__).resolve().parent.parent))
    try:
        flushes = {}
        for name in args.engines:
            with ENGINES[name](workdir) as engine:
                compare_record(engine, hooks[: max(1, len(hooks) // 10)], 1, args.rounds)
                compare_record(engine, hooks, CALLERS, args.rounds)
                flushes[engine.name] = flush_ms(engine, events[:FLUSHED], workdir, args.rounds)
        for name, ms in flushes.items():
            print(
                f"flush of {FLUSHED:,} events from {name} to Parquet (median of {args.rounds}): {ms:,.0f} ms"
            )

        # Bytes per event: the Parquet file of a realistic day, as the flusher writes it; the baseline is the
        # previous version's file of the same events.
        sample = events[: args.events]
        previous = previous_version_parquet(sample, platform_ids)
        this = parquet_bytes(rows_to_table([event_row(e) for e in sample]))
        print_bytes_per_event(len(sample), previous, this)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_bytes_per_event(count: int, previous: bytes, this: bytes) -> None:
    """Bytes per event of two files of `count` events, column by column (pages and their headers), then the
    rest of each file (its footer) and the total."""
    before, after = dict(column_sizes(previous)), dict(column_sizes(this))
    names = [*before, *(name for name in after if name not in before), "(footer)", "total"]
    for sizes, body in ((before, previous), (after, this)):
        sizes["(footer)"] = len(body) - sum(sizes.values())
        sizes["total"] = len(body)
    print(f"bytes per event on disk ({count:,} events)        previous version  this version")
    for name in names:
        cells = [f"{sizes[name] / count:.2f}" if name in sizes else "-" for sizes in (before, after)]
        print(f"  {name:<40}{cells[0]:>16}{cells[1]:>14}")


def column_sizes(body: bytes) -> list[tuple[str, int]]:
    """Each column's bytes in a Parquet file (compressed pages and their headers), largest first."""
    metadata = pq.ParquetFile(io.BytesIO(body)).metadata
    sizes: dict[str, int] = {}
    for group in range(metadata.num_row_groups):
        for index in range(metadata.num_columns):
            column = metadata.row_group(group).column(index)
            sizes[column.path_in_schema] = sizes.get(column.path_in_schema, 0) + column.total_compressed_size
    return sorted(sizes.items(), key=lambda item: -item[1])


if __name__ == "__main__":
    main()
