"""The server's side of its sender process: waking it through the pipe to its stdin."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bot.sender import RESTARTS
from bot.sender_process import SenderProcess

pytestmark = pytest.mark.anyio


async def started(script: str, wake_interval_s: float = 0.0) -> SenderProcess:
    process = SenderProcess(wake_interval_s)
    process.command = [sys.executable, "-c", script]
    await process.start()
    return process


async def test_a_wake_is_a_byte_on_the_sender_process_stdin(tmp_path):
    woken = tmp_path / "woken"
    process = await started(f"import os; open({str(woken)!r}, 'wb').write(os.read(0, 16))")
    process.wake()
    assert process.process is not None
    await asyncio.wait_for(process.process.wait(), 30)
    await process.close(grace_s=1)
    assert woken.read_bytes() == b"w"


async def test_wakes_a_busy_sender_process_has_not_read_wait_in_the_pipe_not_in_memory():
    process = await started("import time; time.sleep(60)")  # never reads its stdin
    try:
        for _ in range(200_000):  # more than a pipe holds (64 KiB on Linux)
            process.wake()
        assert process.process is not None
        assert process.process.stdin is not None
        assert process.process.stdin.transport.get_write_buffer_size() <= 1
    finally:
        await process.close(grace_s=1)


async def test_a_sender_process_being_started_again_is_not_written_to():
    process = await started("pass")
    assert process.process is not None
    await asyncio.wait_for(process.process.wait(), 30)
    process.wake()  # no error: the next sender process looks at once
    await process.close(grace_s=1)


def counting(read: Path) -> str:
    """A child that writes to `read` the bytes that reached its stdin in half a second."""
    return (
        "import os, select, time\n"
        "got, end = b'', time.monotonic() + 0.5\n"
        "while (left := end - time.monotonic()) > 0:\n"
        "    if select.select([0], [], [], left)[0]:\n"
        "        got += os.read(0, 4096)\n"
        f"open({str(read)!r}, 'wb').write(got)\n"
    )


async def bytes_read(process: SenderProcess, read: Path) -> int:
    assert process.process is not None
    await asyncio.wait_for(process.process.wait(), 30)
    await process.close(grace_s=1)
    return len(await asyncio.to_thread(read.read_bytes))


async def test_wakes_close_together_share_a_byte(tmp_path):
    process = await started(counting(tmp_path / "read"), wake_interval_s=0.02)
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    for _ in range(1000):
        process.wake()
        await asyncio.sleep(0.0001)
    elapsed = loop.time() - started_at
    assert await bytes_read(process, tmp_path / "read") <= elapsed / 0.02 + 2, elapsed


async def test_a_wake_within_the_interval_comes_after_it_not_never(tmp_path):
    process = await started(counting(tmp_path / "read"), wake_interval_s=0.02)
    process.wake()
    process.wake()  # recorded just after the first: the sender must still hear of it
    assert await bytes_read(process, tmp_path / "read") == 2


async def test_a_sender_process_is_started_again_after_deaths_in_a_row_only(tmp_path):
    # Its deaths were counted over the bot's whole life: after five, spread over weeks, no sender was ever
    # started again and replies waited in the outbox until the bot was restarted.
    runs = tmp_path / "runs"
    script = (
        "import pathlib, time\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "run = len(runs.read_text()) + 1 if runs.exists() else 1\n"
        "runs.write_text('x' * run)\n"
        "time.sleep(1.0 if run == 4 else 0)  # the fourth one runs a good while, then dies too\n"
    )
    process = SenderProcess(healthy_run_s=0.5, first_restart_s=0.01)
    process.command = [sys.executable, "-c", script]
    await process.start()
    assert process._watcher is not None
    await asyncio.wait_for(process._watcher, 60)  # it gives up at last: deaths in a row still count
    await process.close(grace_s=1)
    # Three quick deaths; one after a good run, the first of a new row; then RESTARTS more.
    assert len(runs.read_text()) == 3 + 1 + RESTARTS
