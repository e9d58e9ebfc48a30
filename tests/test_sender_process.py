"""The server's side of its sender process: waking it through the pipe to its stdin."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bot.sender_process import SenderProcess

pytestmark = pytest.mark.anyio


async def started(script: str) -> SenderProcess:
    process = SenderProcess()
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
