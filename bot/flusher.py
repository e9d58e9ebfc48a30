"""The flusher: events buffered in the transactional store become Parquet partition files, batch by batch.

A batch's file is named by the store and the batch number, `events/event_date=D/<store_id>-<batch>.parquet`,
and the batch is forgotten only once its files are visible. A flusher that dies in between leaves the batch
pending: the next one writes the same rows under the same names again, so no row is ever stored twice.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path

from bot.database import Batch, Database, DatabaseError
from bot.privacy import process_pending
from bot.store import (
    FileStore,
    event_row,
    fsync_directory,
    parquet_bytes,
    partition_dir,
    rows_to_table,
    split_by_day,
)

log = logging.getLogger(__name__)

# How long a customer's request to delete their data waits for its answer to be sent.
DELETION_DELAY = timedelta(minutes=2)

DEFAULT_INTERVAL_S = 5.0
DEFAULT_BATCH_SIZE = 10_000
PRUNE_EVERY_S = 3600.0  # how often the seen marks past their retention are forgotten


class FlushError(RuntimeError):
    """A batch's files could not be written; the batch stays in the database for the next round."""


def flush_once(database: Database, files: FileStore, limit: int = DEFAULT_BATCH_SIZE) -> int:
    """Write every buffered event to its day's partition: first the batches a crash left, then new ones.

    Parameters: `database` the transactional store; `files` where the partitions live; `limit` the most
    events in one new batch.
    Returns: how many events were written.
    Raises: FlushError (a file could not be written), DatabaseError; the batch in hand stays pending.
    """
    written = 0
    for leftover in database.pending_batches():
        written += _flush_batch(database, files, leftover)
    while (batch := database.next_batch(limit)) is not None:
        written += _flush_batch(database, files, batch)
    return written


def _flush_batch(database: Database, files: FileStore, batch: Batch) -> int:
    table = rows_to_table([event_row(event) for event in batch.events])
    try:
        for day, part in split_by_day(table).items():
            folder = partition_dir(day)
            if files.is_local:
                _make_directory(Path(files.path(folder)))
            files.put(f"{folder}/{database.store_id}-{batch.number:08d}.parquet", parquet_bytes(part))
    except OSError as exc:
        raise FlushError(
            f"batch {batch.number} ({len(batch.events)} events) could not be written to {files.data}: {exc}"
        ) from exc
    database.flushed(batch.number)
    return len(batch.events)


def _make_directory(directory: Path) -> None:
    """Create a directory and any missing parents, each fsynced into its parent: a file renamed into a new
    partition survives a crash of the machine only if the partition's own name does."""
    if directory.is_dir():
        return
    _make_directory(directory.parent)
    directory.mkdir(exist_ok=True)  # another flusher may have made it meanwhile: fsync all the same
    fsync_directory(directory.parent)


class Flusher:
    """Runs `flush_once` in a thread every `interval_s` seconds, or sooner when asked, and once more at close;
    every `prune_every_s` a round also forgets the seen marks past their retention (`Database.prune_seen`)
    and every round carries out the deletion requests older than DELETION_DELAY (`bot.privacy`).

    A round that fails is logged and the next round tries again: its events stay in the database.

    Parameters: `database`, `files`, `limit` as for `flush_once`; `interval_s` the time between rounds.
    """

    def __init__(
        self,
        database: Database,
        files: FileStore,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        limit: int = DEFAULT_BATCH_SIZE,
        prune_every_s: float = PRUNE_EVERY_S,
    ) -> None:
        self.database = database
        self.prune_every_s = prune_every_s
        self._pruned_at: float | None = None
        self.files = files
        self.interval_s = interval_s
        self.limit = limit
        self.last_error: Exception | None = None  # of the latest round; None once a round succeeds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="promobot-flusher", daemon=True)

    def start(self) -> Flusher:
        self._thread.start()
        return self

    def flush_soon(self) -> None:
        """Start a round now, or as soon as the one under way ends."""
        self._wake.set()

    def close(self) -> None:
        """Stop the thread, then flush what is left; what cannot be written stays in the database."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self._round()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if not self._stop.is_set():
                self._round()

    def _round(self) -> None:
        started = time.perf_counter()
        try:
            count = flush_once(self.database, self.files, self.limit)
            # Customers' own requests once their answer has had time to go out (which `forget` would take
            # from the outbox), and requests a crash left pending. Their flushes are done: this round's
            # flush just ran, in this thread.
            process_pending(self.database, self.files, settle_s=0, older_than=DELETION_DELAY)
            if self._pruned_at is None or started - self._pruned_at >= self.prune_every_s:
                self.database.prune_seen()
                self._pruned_at = started
        except (FlushError, DatabaseError) as exc:
            self.last_error = exc
            log.error("flushing events to %s failed, trying again next round: %s", self.files.data, exc)
            return
        except Exception as exc:
            self.last_error = exc
            log.exception("flushing events to %s failed, trying again next round", self.files.data)
            return
        self.last_error = None
        if count:
            log.debug(
                "flushed %d events to %s in %.1f ms",
                count,
                self.files.data,
                (time.perf_counter() - started) * 1e3,
            )

    def __enter__(self) -> Flusher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_INTERVAL_S", "FlushError", "Flusher", "flush_once"]
