"""A writer process for the crash test: appends from many tasks and prints each acknowledged event id."""

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from bot.events import Event
from bot.store import EventLog


async def appender(log: EventLog, task: int) -> None:
    for n in range(1_000_000):
        event_id = f"t{task}-{n}"
        event = Event(
            event_id=event_id,
            ts=datetime.now(UTC),
            page_id="page",
            customer_id=f"c{task}",
            campaign_id="crash",
            event="welcome_sent",
        )
        await log.append([event])
        print(event_id, flush=True)


async def main(data: str, wal: str, sync_process: bool) -> None:
    # Small segments so that the kill also lands between flushes of earlier segments.
    log = EventLog.open(data, Path(wal), flush_bytes=4096, flush_age_s=0.05, sync_process=sync_process)
    await asyncio.gather(*(appender(log, task) for task in range(8)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:] == ["--sync-process"]))
