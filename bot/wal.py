"""The write-ahead log: events are durable on local disk before anyone is told they were recorded.

A log is a directory of numbered segment files. Each record is one appended batch, framed as
`<length:u32><crc32:u32><payload>`, so a record torn by a crash is recognised and dropped on recovery (it was
never acknowledged: acknowledgement waits for the fsync that covers it). Appends from many callers are
written and fsynced together (group commit): a hundred concurrent appenders share one fsync instead of
queueing for a hundred. An event loop writes what its tasks appended in one turn itself (`write_unsynced`)
and has a thread fsync it (`sync`), one fsync at a time, what was written meanwhile sharing the next; other
threads hand their records to a committer thread (`submit`), which also closes segments as they fill or age.

An event loop may instead have a small process of its own fsync for it (`SyncProcess`): a thread of the
loop's own process needs the interpreter's lock to wake up and to report back, and a loop busy with webhooks
holds that lock for milliseconds at a time, so under load the thread's round trip took twice the disk's time.

A log may preallocate its segments (`preallocate`): each is filled with zeros before its first record, so
that an fsync finds the file's size and blocks unchanged and writes the records alone, not the file system's
journal too (which also holds every other file's changes); a spare segment is prepared ahead by the
committer thread. The first header of zeros ends a segment.

Records nobody waits for (`submit_soon`) are written with the next commit, or within `SOON_S` when none
comes, and are made durable by the next fsync: a crash of the process loses none of them once written (they
are in the kernel's page cache), a crash of the machine may lose the last few.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from bot import jsontext

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SEGMENT_SUFFIX = ".wal"
_SPARE = "spare.wal.tmp"  # the next preallocated segment, made ahead of its use
SOON_S = 0.1  # how long a record nobody waits for may wait for a commit to ride along with


class WALError(OSError):
    """The log cannot take or keep records (unwritable or full disk, closed log, locked directory)."""


@dataclass(frozen=True, slots=True)
class Segment:
    seq: int
    path: Path


def segment_name(seq: int) -> str:
    return f"{seq:012d}{_SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[Segment]:
    segments = []
    for path in directory.glob(f"*{_SEGMENT_SUFFIX}"):
        try:
            segments.append(Segment(int(path.stem), path))
        except ValueError:
            continue
    return sorted(segments, key=lambda s: s.seq)


def read_records(path: Path, *, repair: bool = False) -> Iterator[bytes]:
    """The intact records of a segment, in order. With `repair`, a torn tail is cut off the file."""
    with open(path, "rb") as file:
        data = file.read()
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        if length == 0:  # no record is empty: the zeros of a preallocated segment (or of a crash) follow
            if data.count(0, offset) == len(data) - offset:
                return
            break
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        if end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        yield data[start:end]
        offset = end
    if offset != len(data):
        log.warning("write-ahead log segment %s has a torn tail of %d bytes", path.name, len(data) - offset)
        if repair:
            with open(path, "r+b") as file:
                file.truncate(offset)
                os.fsync(file.fileno())


def datasync(fd: int) -> None:
    """fdatasync where the platform has it; fsync elsewhere (Python offers no fdatasync on macOS)."""
    sync = getattr(os, "fdatasync", None) or os.fsync  # looked up each time: tests replace it
    sync(fd)


def encode_records(payloads: list[bytes]) -> bytes:
    return b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Pending:
    payload: bytes
    future: Future[None]


class WriteAheadLog:
    """Durable, group-committed appends into rotating segments; closed segments go to `on_segment_closed`.

    A segment is closed when it reaches `segment_bytes`, when its first record is older than `segment_age_s`,
    or on `rotate()`. The callback owns a closed segment from then on and deletes it when its contents are
    safe elsewhere.
    """

    def __init__(
        self,
        directory: Path,
        *,
        first_seq: int,
        on_segment_closed: Callable[[Segment], None],
        segment_bytes: int,
        segment_age_s: float,
        preallocate: bool = False,
    ) -> None:
        self.directory = directory
        self._on_closed = on_segment_closed
        self._preallocate = preallocate
        self._spare_ready = False
        (directory / _SPARE).unlink(missing_ok=True)  # maybe half made by a run that stopped
        self._segment_bytes = segment_bytes
        self._segment_age_s = segment_age_s
        self._lock = threading.Condition()  # guards the queues and flags below
        self._io = threading.Lock()  # one writer of the segment files at a time
        self._queue: list[_Pending] = []
        self._soon: list[bytes] = []  # records nobody waits for
        self._soon_since: float | None = None  # monotonic time the oldest of them was submitted
        self._closing = False
        self._rotate_requested: list[Future[None]] = []
        self._full = False  # a write filled the segment: the committer closes it
        self._seq = first_seq
        self._file = self._open_segment(first_seq)
        self._size = 0
        self._unsynced = False  # records written since the last fsync
        self._close_sync_failed: set[int] = set()  # segments closed without the fsync of their last records
        self._opened_at: float | None = None  # monotonic time of the current segment's first record
        self._thread = threading.Thread(target=self._run, name="promobot-wal-committer", daemon=True)
        self._thread.start()

    # -- the callers' side ---------------------------------------------------------------------------------

    def write_unsynced(self, payload: bytes) -> int:
        """Write one record now, with the records nobody waits for; `sync` makes it durable.

        Returns the number of the segment it went into. Raises WALError if it could not be written (nothing
        of it is left in the log then).
        """
        with self._io:
            with self._lock:
                if self._closing:
                    raise WALError("the event log is closed")
                soon, self._soon, self._soon_since = self._soon, [], None
            first = self._opened_at is None
            self._append([*soon, payload], sync=False)
            seq = self._seq
            full = self._size >= self._segment_bytes
        if first or full:
            with self._lock:  # the committer closes the segment when it is full or old enough
                self._full = self._full or full
                self._lock.notify()
        return seq

    def unsynced(self, segments: set[int]) -> int | None:
        """The one of these segments that still needs an fsync for what `write_unsynced` wrote into it: the
        current segment, or none (the others were fsynced as they were closed). Raises WALError for a segment
        whose closing fsync failed."""
        with self._io:
            return self._unsynced_of(segments)

    def _unsynced_of(self, segments: set[int]) -> int | None:
        failed = sorted(segments & self._close_sync_failed)
        if failed:
            raise WALError(f"write-ahead log segment {failed[0]} could not be fsynced when it was closed")
        return self._seq if self._seq in segments else None

    def sync(self, segments: set[int]) -> None:
        """Make what `write_unsynced` wrote into these segments durable. Blocks for an fsync: call it from a
        thread of its own, while the caller goes on writing (the file is not locked during the fsync).

        Raises WALError if it is not durable. Records whose fsync failed were never acknowledged, but may
        still be on disk and replayed at the next start: the store keeps one copy of an event id.
        """
        with self._io:
            if self._unsynced_of(segments) is None:
                return
            fd = os.dup(self._file.fileno())  # stays open if the committer closes the segment meanwhile
        try:
            datasync(fd)
        except OSError as exc:
            raise self._sync_error(exc.errno) from None
        finally:
            os.close(fd)

    def _sync_error(self, code: int) -> WALError:
        return WALError(code, f"write-ahead log fsync failed in {self.directory}: {os.strerror(code)}")

    def synced_by_process(self, seq: int, code: int) -> WALError | None:
        """What a `SyncProcess` answering `code` (an errno, 0 when done) for segment `seq` means."""
        if code == errno.ENOENT:
            try:  # closed, flushed and deleted since: durable if its closing fsync was
                self.unsynced({seq})
            except WALError as exc:
                return exc
            return None
        return self._sync_error(code) if code else None

    def submit(self, payload: bytes) -> Future[None]:
        """Queue one record; the future completes when it is on disk, or fails with WALError."""
        future: Future[None] = Future()
        with self._lock:
            if self._closing:
                raise WALError("the event log is closed")
            self._queue.append(_Pending(payload, future))
            self._lock.notify()
        return future

    def submit_soon(self, payload: bytes) -> None:
        """Queue one record without waiting for it: written with the next commit, or within SOON_S.

        For records whose loss in a crash of the machine costs little (the outcome of a reply: the reply is
        sent again after the restart). A failure to write them is logged.
        """
        with self._lock:
            if self._closing:
                raise WALError("the event log is closed")
            self._soon.append(payload)
            if self._soon_since is None:
                self._soon_since = time.monotonic()
                self._lock.notify()

    def rotate(self) -> Future[None]:
        """Close the current segment (if it holds anything) after everything queued so far is durable."""
        future: Future[None] = Future()
        with self._lock:
            self._rotate_requested.append(future)
            self._lock.notify()
        return future

    def current_segment(self) -> Segment:
        with self._lock:
            return Segment(self._seq, self.directory / segment_name(self._seq))

    def close(self) -> None:
        """Commit what is queued, close the last segment (handing it over) and stop."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._lock.notify()
        self._thread.join()

    # -- the committer thread ------------------------------------------------------------------------------

    def _open_segment(self, seq: int):
        # Segment numbers name the Parquet files flushed from them, so they must never repeat, even once
        # every segment has been flushed and deleted: the next number is kept beside them.
        next_seq = self.directory / "next-seq"
        temporary = next_seq.with_suffix(".tmp")
        temporary.write_text(str(seq + 1))
        os.replace(temporary, next_seq)
        path = self.directory / segment_name(seq)
        if self._spare_ready:
            self._spare_ready = False
            os.replace(self.directory / _SPARE, path)
        elif self._preallocate:
            self._zeroed(path)
        # Written at offsets (os.pwrite), not appended: a preallocated segment's records go over its zeros.
        file = open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666), "wb", buffering=0)  # noqa: SIM115
        fsync_directory(self.directory)
        return file

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (
                    self._queue
                    or self._closing
                    or self._rotate_requested
                    or self._due_for_age()
                    or self._soon_due()
                    or self._full
                    or self._spare_wanted()
                ):
                    self._lock.wait(timeout=self._wait_timeout())
            with self._io:
                with self._lock:
                    batch, self._queue = self._queue, []
                    soon, self._soon, self._soon_since = self._soon, [], None
                    rotations, self._rotate_requested = self._rotate_requested, []
                    closing = self._closing
                    self._full = False
                if batch or soon:
                    self._commit(batch, soon, sync=bool(batch))
                if rotations or closing or self._due_for_age() or self._size >= self._segment_bytes:
                    error = self._close_segment(reopen=not closing)
                    for future in rotations:
                        if error is None:
                            future.set_result(None)
                        else:
                            future.set_exception(error)
            if closing:
                (self.directory / _SPARE).unlink(missing_ok=True)
                with self._lock:
                    leftover, self._queue = self._queue, []
                for pending in leftover:
                    pending.future.set_exception(WALError("the event log is closed"))
                return
            if self._spare_wanted():
                self._prepare_spare()

    def _spare_wanted(self) -> bool:
        return self._preallocate and not self._spare_ready and not self._closing

    def _prepare_spare(self) -> None:
        """Zero the next segment ahead, outside `_io`: the event loop's writes go on meanwhile."""
        self._spare_ready = self._zeroed(self.directory / _SPARE)

    def _zeroed(self, path: Path) -> bool:
        """Fill `path` with a segment's zeros. On a disk short of room, segments are appended to from then
        on (appends are refused only once it is full)."""
        try:
            _fill_with_zeros(path, self._segment_bytes)
        except OSError as exc:
            log.warning("could not preallocate a write-ahead log segment (%s)", exc.strerror)
            self._preallocate = False
            path.unlink(missing_ok=True)
            return False
        return True

    def _wait_timeout(self) -> float | None:
        deadlines = []
        if self._opened_at is not None:
            deadlines.append(self._opened_at + self._segment_age_s)
        if self._soon_since is not None:
            deadlines.append(self._soon_since + SOON_S)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _soon_due(self) -> bool:
        return self._soon_since is not None and time.monotonic() - self._soon_since >= SOON_S

    def _due_for_age(self) -> bool:
        return self._opened_at is not None and time.monotonic() - self._opened_at >= self._segment_age_s

    def _commit(self, batch: list[_Pending], soon: list[bytes], *, sync: bool) -> None:
        """Write the records, the ones nobody waits for first; fsync when somebody waits."""
        try:
            self._append([*soon, *(p.payload for p in batch)], sync=sync)
        except WALError as error:
            if soon:
                log.error("%d records nobody waited for were lost: %s", len(soon), error)
            for pending in batch:
                pending.future.set_exception(error)
            return
        for pending in batch:
            pending.future.set_result(None)

    def _append(self, payloads: list[bytes], *, sync: bool) -> None:
        """Write records to the current segment (and fsync it). Under `_io`. Raises WALError, leaving none of
        them in the segment."""
        data = encode_records(payloads)
        try:
            _write_all(self._file.fileno(), data, self._size)
            if sync:
                datasync(self._file.fileno())
        except OSError as exc:
            self._undo_partial_write()
            message = f"write-ahead log write failed in {self.directory}: {exc.strerror}"
            raise WALError(exc.errno, message) from None
        self._size += len(data)
        self._unsynced = not sync
        if self._opened_at is None:
            self._opened_at = time.monotonic()

    def _undo_partial_write(self) -> None:
        # The failed batch was never acknowledged; cut it off so the segment ends on a whole record.
        try:
            self._file.truncate(self._size)
            os.fsync(self._file.fileno())
        except OSError:
            log.exception("could not truncate write-ahead log segment %s", self._seq)

    def _close_segment(self, *, reopen: bool) -> WALError | None:
        if self._size == 0:
            if not reopen:
                self._file.close()
                (self.directory / segment_name(self._seq)).unlink(missing_ok=True)
            return None
        if self._unsynced:
            # A closed segment is durable as a whole, whatever was waited for in it.
            try:
                datasync(self._file.fileno())
                self._unsynced = False
            except OSError as exc:
                self._close_sync_failed.add(self._seq)
                log.error("could not fsync write-ahead log segment %s: %s", self._seq, exc.strerror)
        self._file.close()
        closed = Segment(self._seq, self.directory / segment_name(self._seq))
        error = None
        if reopen:
            try:
                self._file = self._open_segment(self._seq + 1)
            except OSError as exc:
                error = WALError(exc.errno, f"cannot open a new write-ahead log segment: {exc.strerror}")
                # Keep appending to the old segment: better a large segment than refused events.
                self._file = open(os.open(closed.path, os.O_WRONLY), "wb", buffering=0)  # noqa: SIM115
                return error
            self._seq += 1
        self._size = 0
        self._opened_at = None
        self._on_closed(closed)
        return error


class SyncProcessGone(WALError):
    """The sync process stopped before it answered: the fsync is to be done some other way."""


class SyncProcess:
    """fdatasyncs segments of a log directory in a process of its own, for an event loop.

    The loop writes a segment's number down a pipe and hears back, through its own reader of the answer
    pipe, when that segment is fsynced: no thread of the loop's process takes part. One fsync at a time is
    enough (the log asks for one, the records written meanwhile wait for the next). The process starts with
    the log, so that the first webhooks do not wait for it to start.
    """

    command = (sys.executable, "-m", "bot.wal")  # and the directory
    patience_s = 30.0  # an fsync unanswered for this long: the process is taken to be stuck

    def __init__(self, directory: Path) -> None:
        self._process = subprocess.Popen(
            [*self.command, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,  # Ctrl-C reaches the bot, which then closes it
        )
        self._requests = self._process.stdin.fileno()
        self._answers = self._process.stdout.fileno()
        os.set_blocking(self._answers, False)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop reading its answers
        self._waiting: deque[tuple[float, Callable[[int], None]]] = deque()  # (when asked, whom to tell)
        self._watchdog: asyncio.TimerHandle | None = None
        self._rest = b""
        self.alive = True

    def sync(self, seq: int, answered: Callable[[int], None]) -> None:
        """Fsync segment `seq` for the running loop; `answered` gets 0, an errno, or -1 if the process stopped
        before answering. Raises SyncProcessGone if it has stopped, or is busy for another loop."""
        if not self.alive:
            raise SyncProcessGone("the sync process has stopped")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._waiting or (self._loop is not None and self._loop.is_running()):
                raise SyncProcessGone("the sync process works for another event loop")
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._answers)
            self._loop = loop
            loop.add_reader(self._answers, self._read_answers)
        try:
            os.write(self._requests, b"%d\n" % seq)
        except OSError as exc:
            self._stopped()
            raise SyncProcessGone(f"the sync process has stopped: {exc}") from None
        self._waiting.append((time.monotonic(), answered))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.patience_s, self._watch)

    def _watch(self) -> None:
        self._watchdog = None
        if not self._waiting or not self.alive:
            return
        waited = time.monotonic() - self._waiting[0][0]
        if waited >= self.patience_s:
            self._give_up(f"has not answered for {waited:.0f} s")
        else:
            self._watchdog = self._loop.call_later(self.patience_s - waited, self._watch)

    def _give_up(self, why: str) -> None:
        log.error("the write-ahead log's sync process %s; not asking it again", why)
        self._process.kill()
        self._stopped()

    def _read_answers(self) -> None:
        try:
            data = os.read(self._answers, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._stopped()
            return
        *lines, self._rest = (self._rest + data).split(b"\n")
        for line in lines:
            try:
                code = int(line)
                _, answered = self._waiting.popleft()
            except (ValueError, IndexError):
                self._give_up(f"answered {line!r:.80}")
                return
            answered(code)

    def _stopped(self) -> None:
        if not self.alive:
            return
        self.alive = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._answers)
        self._process.stdin.close()
        self._process.stdout.close()
        waiting, self._waiting = self._waiting, deque()
        for _, answered in waiting:
            answered(-1)

    def close(self) -> None:
        """Stop it (from any thread). An fsync it had not answered is done by the log's thread, if the log
        still runs; its pipes are closed by the loop reading them, which sees them end."""
        self._process.terminate()
        self._process.wait()
        if self._loop is None or self._loop.is_closed():
            self.alive = False
            self._process.stdin.close()
            self._process.stdout.close()


def serve_syncs(directory: Path) -> None:
    """The sync process: for each segment number read, fdatasync that segment and answer 0 or the errno."""
    current: tuple[int, int] | None = None  # (seq, fd) of the segment last fsynced
    for line in sys.stdin.buffer:
        seq = int(line)
        try:
            if current is None or current[0] != seq:
                if current is not None:
                    os.close(current[1])
                    current = None  # closed: if the next open fails, it is not closed again
                current = (seq, os.open(directory / segment_name(seq), os.O_WRONLY | os.O_APPEND))
            datasync(current[1])
            code = 0
        except OSError as exc:
            code = exc.errno or errno.EIO
        os.write(1, b"%d\n" % code)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    # A write may be short (a filling disk writes what fits): only all of it, or an error, counts.
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _fill_with_zeros(path: Path, size: int) -> None:
    """A file of `size` zero bytes (written, not just allocated: writing over them changes no metadata),
    durable."""
    zeros = memoryview(bytes(min(size, 1 << 20)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        for offset in range(0, size, len(zeros)):
            _write_all(fd, zeros[: size - offset], offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def next_sequence(directory: Path) -> int:
    """The number for a new segment: after every segment this log directory has ever had."""
    path = directory / "next-seq"
    recorded = int(path.read_text()) if path.exists() else 1
    existing = list_segments(directory)
    return max(recorded, existing[-1].seq + 1 if existing else 1)


def encode_rows(rows: list[list]) -> bytes:
    """One record's payload: a batch of event rows as compact JSON (UTF-8)."""
    return jsontext.dumps(rows)


def decode_rows(payload: bytes) -> list[list]:
    return jsontext.loads(payload)


class DirectoryLock:
    """An exclusive lock on a write-ahead log directory: one process per log."""

    def __init__(self, directory: Path) -> None:
        self._file = open(directory / "LOCK", "a+")  # noqa: SIM115 - held for the log's life
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise WALError(
                f"write-ahead log {directory} is in use by another process; give each process its own "
                "PROMOBOT_WAL directory"
            ) from None

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


if __name__ == "__main__":
    serve_syncs(Path(sys.argv[1]))
