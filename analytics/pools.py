"""The bot's transactional store as the dashboard reads it: codes left, health, audiences and broadcasts.

The store is the SQLite file in the data directory, or the database PROMOBOT_DATABASE_URL names; one that
does not exist yet is never created here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.audience import AudienceCounts, BroadcastResult
from bot.config import SQLITE_FILE, ConfigError, Settings
from bot.database import Database, DatabaseError
from bot.health import Check, local_health
from bot.migrations import MigrationError
from bot.pool import LOW_POOL_SHARE
from bot.recipients import audience_now, broadcast_results
from bot.redemption import pool_status
from bot.startup import command_settings


@dataclass(frozen=True, slots=True)
class PoolLevel:
    """A campaign's single-use codes: how many it has, and how many are not handed out yet."""

    campaign_id: str
    total: int
    free: int

    @property
    def gone(self) -> bool:
        return self.free == 0

    @property
    def low(self) -> bool:
        """Fewer than LOW_POOL_SHARE of the codes are left (the bot's log warns at the same mark)."""
        return self.free < LOW_POOL_SHARE * self.total


class CodePools:
    """The code pools of one transactional store, read on demand. Safe to share between threads.

    Parameters:
        url: a `postgresql://` or `sqlite:///path` URL, or None for the SQLite file in `data_dir`.
        data_dir: the data directory beside which the bot keeps its SQLite file; None: no store (an s3://
            store without a database URL).
    """

    def __init__(self, url: str | None, data_dir: Path | None) -> None:
        self.url, self.data_dir = url, data_dir
        self.problem: str | None = None  # why the last read found no figures, for people
        self._database: Database | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, data: str, environ: Mapping[str, str] = os.environ) -> CodePools:
        """The pools of the store the bot beside the events at `data` (a directory or s3:// URL) uses."""
        url = environ.get("PROMOBOT_DATABASE_URL") or environ.get("DATABASE_URL") or None
        return cls(url, None if data.startswith("s3://") and url is None else Path(data))

    def _sqlite_file(self) -> Path | None:
        if self.url is not None and self.url.startswith("sqlite:///"):
            return Path(self.url.removeprefix("sqlite:///"))
        if self.url is None and self.data_dir is not None:
            return self.data_dir / SQLITE_FILE
        return None

    def _open(self) -> Database | None:
        if self._database is None:
            if self.url is None and self.data_dir is None:
                return None
            sqlite = self._sqlite_file()
            if sqlite is not None and not sqlite.is_file():
                return None  # no bot has run here yet: never create its store
            self._database = Database.open(self.url, self.data_dir or Path())
        return self._database

    def levels(self, campaigns: Iterable[str]) -> list[PoolLevel]:
        """The pools of those of `campaigns` that hand out single-use codes (none: an empty list)."""
        with self._lock:
            try:
                database = self._open()
                if database is None:
                    return []
                found = [(c, pool_status(database, c)) for c in campaigns]
            except (DatabaseError, MigrationError) as exc:
                self.problem = f"The codes left could not be read: {exc}"
                self.close()
                return []
            self.problem = None
            return [PoolLevel(c, status.total, status.free) for c, status in found if status.total]

    def health(self, environ: Mapping[str, str] = os.environ) -> list[Check]:
        """The store's health checks (bot.health.local_health); none when no bot has run here yet."""
        try:
            flush_seconds = command_settings(environ).flush_seconds
        except ConfigError:
            flush_seconds = Settings.flush_seconds  # the bot refuses to start so; judged by the default
        with self._lock:
            try:
                database = self._open()
            except (DatabaseError, MigrationError):
                return []  # `levels` tells why
            return [] if database is None else local_health(database, flush_seconds=flush_seconds)

    def reach(self, campaigns: Iterable[str]) -> tuple[dict[str, AudienceCounts], list[BroadcastResult]]:
        """Each campaign's audience now, and the broadcasts of those campaigns (newest first); nothing when
        no bot has run here yet or the store cannot be read (`levels` tells why)."""
        with self._lock:
            try:
                database = self._open()
                if database is None:
                    return {}, []
                chosen = list(campaigns)
                audiences = {campaign: audience_now(database, campaign) for campaign in chosen}
                broadcasts = [b for b in broadcast_results(database) if b.campaign_id in chosen]
            except (DatabaseError, MigrationError):
                return {}, []
            return audiences, broadcasts

    def close(self) -> None:
        database, self._database = self._database, None
        if database is not None:
            database.close()


__all__ = ["CodePools", "PoolLevel"]
