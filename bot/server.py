"""`python -m bot serve` and `run-local`: the app under uvicorn until SIGINT or SIGTERM, then a clean stop."""

from __future__ import annotations

import signal
import sys

from bot.app import create_app
from bot.config import Mode, Settings
from bot.database import DatabaseError
from bot.migrations import MigrationError
from bot.startup import (
    SHUTDOWN_REPLY_GRACE_S,
    configure_logging,
    load_settings,
    open_database,
    tune_garbage_collector,
)
from bot.store import rows_to_table


def serve(mode: Mode, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the bot for `mode` on `host`:`port`; on SIGINT or SIGTERM, drain, flush and return.

    Raises: SystemExit when the settings or the campaign are wrong, or the store cannot be opened.
    """
    import uvicorn

    from bot.http import BoundedHttpToolsProtocol

    settings, _ = load_settings(mode)
    configure_logging(settings.log_level)
    if mode is Mode.SERVER:
        wait_for_the_store(settings)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again with the handlers it
    # found at start. Finding these, it returns instead: a stop that flushed every event exits with 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda signum, frame: None)
    app = create_app(settings, on_ready=settle_in)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_REPLY_GRACE_S,
        # Links are built from PROMOBOT_PUBLIC_URL, not from a request's scheme or host; the one use of a
        # client's address, the till's count of wrong PINs, reads X-Forwarded-For itself, as far as
        # PROMOBOT_PROXIES says it can be believed (bot.till.client_address).
        proxy_headers=False,
        access_log=False,
        server_header=False,  # no need to tell the world which server answers
        http=BoundedHttpToolsProtocol,  # a header section past 64 KiB is refused, not read whole
    )


def wait_for_the_store(settings: Settings) -> None:
    """Open the store once, waiting for a PostgreSQL server that does not answer yet (restarting, starting
    after the bot) PROMOBOT_DATABASE_WAIT seconds at most; a SQLite file on this machine's disk is not waited
    for. This comes before the server takes over SIGTERM and SIGINT, which then end the wait at once; the
    lifespan opens the store again, its schema up to date.

    Raises: SystemExit (1) when the store cannot be opened, (130) on Ctrl-C while waiting.
    """
    if not settings.database.startswith(("postgresql://", "postgres://")):
        return
    try:
        open_database(settings, wait_s=settings.database_wait_s).close()
    except (DatabaseError, MigrationError) as exc:
        print(f"promobot cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def settle_in() -> None:
    """Once the server has made what it starts with: import what the first flush would, then freeze the heap.

    pyarrow imports pandas (300 modules) at its first conversion of rows: the first flush, a minute after the
    start, did it on the flusher's thread, taking turns with the event loop for the interpreter lock, and left
    35,000 objects that the next two collections walked (29 and 23 ms pauses of the event loop). Frozen here,
    with everything the lifespan made, they are out of the collector's sight.
    """
    rows_to_table([])
    tune_garbage_collector()
