"""Event store benchmark: durable appends per second, bytes per event on disk, flush time.

    python benchmarks/store.py [--events N]

The baseline, run in the same process on the same disk, is the naive durable log: one write and one fsync
per append, no group commit. Bytes per event are given column by column, against the file the previous
version wrote of the same events (the platform's message ids themselves where this one keeps their digests).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.campaign import Campaign
from bot.events import FILE_SCHEMA, Event
from bot.facts import ButtonStep
from bot.flow import button_payload, plan_replies, record
from bot.messenger import Delivery, Inbound, Postback, Read, Referral
from bot.store import SORT_KEYS, EventLog, event_row, parquet_bytes, rows_to_table
from bot.wal import encode_rows

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


def naive_appends_per_s(directory: Path, events: list[Event], seconds: float = 2.0) -> float:
    """The baseline: one write and one fsync per append."""
    path = directory / "naive.log"
    count = 0
    started = time.perf_counter()
    with open(path, "ab", buffering=0) as file:
        while time.perf_counter() - started < seconds:
            file.write(encode_rows([event_row(events[count % len(events)])]))
            os.fdatasync(file.fileno())
            count += 1
    return count / (time.perf_counter() - started)


async def concurrent_appends_per_s(log: EventLog, events: list[Event], appenders: int, batch: int) -> float:
    per_appender = len(events) // appenders

    async def appender(index: int) -> None:
        mine = events[index * per_appender : (index + 1) * per_appender]
        for start in range(0, len(mine), batch):
            await log.append(mine[start : start + batch])

    started = time.perf_counter()
    await asyncio.gather(*(appender(i) for i in range(appenders)))
    return per_appender * appenders / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    platform_ids: dict[str, str] = {}
    events = realistic_events(args.events, platform_ids=platform_ids)
    workdir = Path(tempfile.mkdtemp(prefix="promobot-bench-", dir=Path(__file__).resolve().parent.parent))
    try:
        naive = naive_appends_per_s(workdir, events)
        print(f"baseline, one fsync per append:          {naive:>12,.0f} events/s")
        for appenders, batch in ((1, 1), (100, 1), (1, 100), (100, 100)):
            label = (
                f"{appenders} appender{'s' if appenders > 1 else ''}, "
                f"{batch} event{'s' if batch > 1 else ''}/append"
            )
            wal = workdir / f"wal-{appenders}-{batch}"
            log = EventLog.open(str(workdir / "data"), wal, flush_age_s=3600, flush_bytes=1 << 40)
            sample = events[: min(len(events), 20_000 if batch == 1 and appenders == 1 else len(events))]
            rate = asyncio.run(concurrent_appends_per_s(log, sample, appenders, batch))
            log.close()
            print(f"{label + ':':<41}{rate:>12,.0f} events/s  ({rate / naive:.1f}x baseline)")

        # Bytes per event: the Parquet file of a realistic day, as the flusher writes it; the baseline is the
        # previous version's file of the same events.
        previous = previous_version_parquet(events, platform_ids)
        this = parquet_bytes(rows_to_table([event_row(e) for e in events]))
        print_bytes_per_event(len(events), previous, this)

        # Flush time: a segment of 100,000 appended events to a visible Parquet file.
        timings = []
        for run in range(3):
            wal = workdir / f"wal-flush-{run}"
            log = EventLog.open(str(workdir / f"flush-{run}"), wal, flush_age_s=3600, flush_bytes=1 << 40)
            log.append_blocking(events[:100_000])
            started = time.perf_counter()
            log.flush_blocking()
            timings.append(time.perf_counter() - started)
            log.close()
        print(f"flush of 100,000 events (median of 3):   {statistics.median(timings) * 1e3:>12.0f} ms")
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
