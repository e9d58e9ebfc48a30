"""The sender's process beside the server: `python -m bot.sender_process`, and its supervisor in the server.

The server starts it (`SenderProcess`) so that sending never takes the event loop's time from acknowledging
webhooks, and starts it again when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from bot.campaign import Campaign
from bot.config import Mode, Settings
from bot.database import Database, DatabaseError
from bot.sender import CLAIM_INTERVAL_S, RESTARTS, Sender, release_leases
from bot.startup import (
    SHUTDOWN_REPLY_GRACE_S,
    build_sender,
    configure_logging,
    load_settings,
    open_database,
    tune_garbage_collector,
)

log = logging.getLogger(__name__)

OPEN_RETRY_FIRST_S = 0.5  # a store unreachable at start: the first pause before trying again
OPEN_RETRY_MAX_S = 10.0
HEALTHY_RUN_S = 60.0  # a sender process that ran this long before it died was not dying in a row
FIRST_RESTART_S = 1.0  # the pause before starting it again, doubling with each death in a row


class SenderProcess:
    """`python -m bot.sender_process` beside the server, started again when it dies (RESTARTS times in a row:
    a death after HEALTHY_RUN_S or more of running starts the count again).

    It gets the server's environment; its own session, so that Ctrl-C in a terminal reaches the server only,
    which then stops it.
    """

    def __init__(
        self,
        wake_interval_s: float = CLAIM_INTERVAL_S,
        *,
        healthy_run_s: float = HEALTHY_RUN_S,
        first_restart_s: float = FIRST_RESTART_S,
    ) -> None:
        self.command = [sys.executable, "-m", "bot.sender_process"]
        self.wake_interval_s = wake_interval_s
        self.healthy_run_s = healthy_run_s
        self.first_restart_s = first_restart_s
        self.process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._woken_at = -wake_interval_s  # the event loop's time of the last byte written
        self._wake_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, start_new_session=True
        )
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="promobot-sender-watch")

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        deaths, started = 0, loop.time()
        while not self._closing and self.process is not None:
            status = await self.process.wait()
            if self._closing:
                return
            # Counted in a row only: five deaths over weeks of running must not leave replies unsent for good.
            deaths = 1 if loop.time() - started >= self.healthy_run_s else deaths + 1
            if deaths > RESTARTS:
                log.error("the sender process keeps stopping (status %s): replies wait in the outbox", status)
                return
            log.error("the sender process stopped (status %s); starting another", status)
            await asyncio.sleep(min(30.0, self.first_restart_s * 2 ** (deaths - 1)))
            started = loop.time()
            if not self._closing:
                await self.start()

    def wake(self) -> None:
        """Tell the sender process that replies were recorded: a byte on its stdin, at most one every
        `wake_interval_s` (the sender claims no more often: the wake-ups of a busy server's webhooks share
        one, and the sender is not woken hundreds of times a second on the cores the webhooks need)."""
        if self._wake_timer is not None:
            return  # one is coming
        loop = asyncio.get_running_loop()
        delay = self._woken_at + self.wake_interval_s - loop.time()
        if delay > 0:
            self._wake_timer = loop.call_later(delay, self._write_wake)
        else:
            self._write_wake()

    def _write_wake(self) -> None:
        self._wake_timer = None
        self._woken_at = asyncio.get_running_loop().time()
        process = self.process
        if process is None or process.returncode is not None or process.stdin is None:
            return  # being started again: a new sender looks at once
        transport = process.stdin.transport
        # None is written while an earlier byte waits for room in the pipe: the sender has it coming.
        if not transport.is_closing() and not transport.get_write_buffer_size():
            process.stdin.write(b"w")

    async def close(self, grace_s: float) -> None:
        """Ask the sender to finish (SIGTERM), wait up to `grace_s` plus a little, then kill it."""
        self._closing = True
        if self._wake_timer is not None:
            self._wake_timer.cancel()
        process = self.process
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), grace_s + 5)
            except TimeoutError:
                log.warning("the sender process did not stop in time; its replies stay owed")
                process.kill()
                await process.wait()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)


async def run_process(settings: Settings, campaign: Campaign) -> None:
    """The sender process: claim and send until SIGTERM, or until the server's end of stdin closes. The server
    writes to stdin when it recorded replies (SenderProcess.wake); the sender also looks by itself now and
    then (replies retried later, leases run out, other instances' replies). A store that cannot be reached
    at start is waited for: the replies wait in it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    stdin = sys.stdin.fileno()
    sender: Sender | None = None

    def read_stdin() -> None:
        if not os.read(stdin, 4096):  # EOF: the server is gone
            stop.set()
        elif sender is not None:
            sender.wake()

    loop.add_reader(stdin, read_stdin)
    database = await open_when_reachable(settings, stop)
    if database is None:
        return
    sender = build_sender(settings, campaign, database)
    try:
        await release_leases(database)
        sender.start()
        await stop.wait()
    finally:
        await sender.close(SHUTDOWN_REPLY_GRACE_S)
        await sender.replier.graph.aclose()
        await asyncio.to_thread(database.close)


async def open_when_reachable(settings: Settings, stop: asyncio.Event) -> Database | None:
    """The store of `settings`, opened as soon as it can be (trying again after a pause that grows to
    OPEN_RETRY_MAX_S); None when `stop` is set first. Raises: MigrationError (a schema newer than this)."""
    pause = OPEN_RETRY_FIRST_S
    while not stop.is_set():
        try:
            return await asyncio.to_thread(open_database, settings)
        except DatabaseError as exc:
            log.error("the sender cannot open the store, trying again in %g s: %s", pause, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), pause)
        pause = min(OPEN_RETRY_MAX_S, 2 * pause)
    return None


def main() -> None:
    settings, campaign = load_settings(Mode.SERVER)
    configure_logging(settings.log_level)
    with contextlib.suppress(OSError):
        os.nice(5)  # acknowledging webhooks comes first: on a busy machine replies wait for the CPU
    tune_garbage_collector()
    try:
        import uvloop

        uvloop.run(run_process(settings, campaign))
    except ImportError:
        asyncio.run(run_process(settings, campaign))


if __name__ == "__main__":
    main()
