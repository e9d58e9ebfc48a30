"""Event store benchmark: durable appends per second, bytes per event on disk, flush time.

    python benchmarks/store.py [--events N]

The baseline, run in the same process on the same disk, is the naive durable log: one write and one fsync
per append, no group commit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.events import Event, detail_json
from bot.store import EventLog, event_row, parquet_bytes, rows_to_table
from bot.wal import encode_rows

PAGE = "111899832631525"


def message_id(rng: random.Random) -> str:
    # The platform's message ids: "m_" and about 80 characters of URL-safe base64.
    return "m_" + base64.urlsafe_b64encode(rng.randbytes(60)).decode().rstrip("=")


def journey(rng: random.Random, customer: str, start: datetime, campaign: str) -> list[Event]:
    """One customer's events as the bot records them, with the platform's ids."""
    events: list[Event] = []
    t = start

    def add(name: str, *, inbound_id: str | None = None, button=None, mid=None, detail=None, after=5.0):
        nonlocal t
        t += timedelta(seconds=rng.expovariate(1 / after))
        # Inbound ids as the bot derives them (customer, platform timestamp, kind); replies extend the id of
        # the click they answer.
        if inbound_id is not None:
            event_id = f"{customer}.{int(t.timestamp() * 1000)}.{inbound_id}"
        else:
            event_id = f"{events[-1].event_id}.{name[0]}"
        events.append(
            Event(
                event_id=event_id,
                ts=t,
                page_id=PAGE,
                customer_id=customer,
                campaign_id=campaign,
                event=name,
                button=button,
                message_id=mid,
                detail=detail,
            )
        )

    add("conversation_started", inbound_id="p", detail=detail_json(ref="till-qr", source="SHORTLINK"))
    welcome = message_id(rng)
    add("welcome_sent", mid=welcome, after=0.5)
    add("message_delivered", inbound_id="d", mid=welcome, after=2)
    if rng.random() < 0.2:
        return events  # never answers
    if rng.random() < 0.25:
        add("declined", inbound_id="p", button="spring-sale|A|no", after=60)
        add("thanks_sent", mid=message_id(rng), after=0.5)
        return events
    add("coupon_requested", inbound_id="p", button="spring-sale|A|yes", after=60)
    coupon = message_id(rng)
    add("coupon_sent", mid=coupon, after=0.5)
    add("message_delivered", inbound_id="d", mid=coupon, after=1)
    read_at = int((t + timedelta(seconds=3)).timestamp() * 1000)
    add("message_read", inbound_id="r", detail=detail_json(watermark=read_at), after=3)
    if rng.random() < 0.6:
        add("coupon_revealed", inbound_id="p", button="spring-sale|A|reveal", after=20)
    return events


def realistic_events(n: int, seed: int = 1) -> list[Event]:
    rng = random.Random(seed)
    start = datetime(2026, 3, 1, 9, tzinfo=UTC)
    events: list[Event] = []
    while len(events) < n:
        customer = str(rng.randrange(10**15, 10**16))
        begin = start + timedelta(seconds=rng.uniform(0, 12 * 3600))
        events.extend(journey(rng, customer, begin, rng.choice(["spring-sale", "summer-sale"])))
    return sorted(events[:n], key=lambda e: e.ts)


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
    events = realistic_events(args.events)
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

        # Bytes per event: the Parquet file of a realistic day, as the flusher writes it.
        table = rows_to_table([event_row(e) for e in events])
        body = parquet_bytes(table)
        print(
            f"bytes per event on disk (realistic):     {len(body) / len(events):>12.1f}  "
            f"({len(events):,} events, {len(body):,} bytes)"
        )
        sizes = column_sizes(body)
        share = ", ".join(f"{name} {size / len(events):.1f}" for name, size in sizes)
        print(f"  by column (bytes/event):               {share}")

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


def column_sizes(body: bytes) -> list[tuple[str, int]]:
    import io

    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(io.BytesIO(body)).metadata
    sizes: dict[str, int] = {}
    for group in range(metadata.num_row_groups):
        for index in range(metadata.num_columns):
            column = metadata.row_group(group).column(index)
            sizes[column.path_in_schema] = sizes.get(column.path_in_schema, 0) + column.total_compressed_size
    return sorted(sizes.items(), key=lambda item: -item[1])


if __name__ == "__main__":
    main()
