"""The SQL engines the transactional store runs on (a SQLite file, a PostgreSQL server) and how to connect."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONNECT_TIMEOUT_S = 5  # PostgreSQL: seconds to wait for a connection, unless the URL says otherwise
BUSY_TIMEOUT_S = 10.0  # SQLite: how long a writer waits for another process's transaction


@dataclass(frozen=True, slots=True)
class Engine:
    """One engine: how to connect, and the few texts and errors in which the two differ."""

    name: str  # "sqlite" or "postgresql", as bot.migrations names them
    where: str  # the database, for messages (never a password)
    connect: Callable[[], Any]  # a DB-API connection in autocommit mode, taking `?` placeholders
    error: type[Exception]  # the driver's base exception
    begin: str  # SQLite takes the write lock at BEGIN: no transaction fails upgrading a read to a write
    skip_locked: str  # PostgreSQL: a claim passes over rows another claim holds instead of waiting
    conflict: type[Exception]  # the driver's error for a unique index violated


def sqlite(path: Path) -> Engine:
    """The SQLite file at `path` (WAL, synchronous FULL)."""

    def connect() -> sqlite3.Connection:
        # Autocommit: transactions are begun and ended explicitly. One connection per thread, but all are
        # closed by the thread that closes the database. FULL: a commit survives a crash of the machine.
        connection = sqlite3.connect(path, BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        return connection

    return Engine(
        "sqlite", f"SQLite {path}", connect, sqlite3.Error, "BEGIN IMMEDIATE", "", sqlite3.IntegrityError
    )


def postgresql(url: str) -> Engine:
    """The PostgreSQL server of `url`; psycopg is imported only here."""
    import psycopg  # only needed with a PostgreSQL URL

    class QmarkCursor(psycopg.Cursor):
        """Takes `?` placeholders, as sqlite3 does: one text of each statement serves both engines."""

        def execute(self, query: str, params: Any = None, **options: Any) -> QmarkCursor:
            return super().execute(query.replace("?", "%s"), params, **options)

        def executemany(self, query: str, params_seq: Any, **options: Any) -> None:
            super().executemany(query.replace("?", "%s"), params_seq, **options)

    info = psycopg.conninfo.conninfo_to_dict(url)
    # Without a limit, a server that drops packets holds a webhook (or start-up) for minutes.
    timeout = {} if "connect_timeout" in info else {"connect_timeout": CONNECT_TIMEOUT_S}
    where = f"PostgreSQL {info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    return Engine(
        "postgresql",
        where,
        lambda: psycopg.connect(url, autocommit=True, cursor_factory=QmarkCursor, **timeout),
        psycopg.Error,
        "BEGIN",
        "FOR UPDATE SKIP LOCKED",
        psycopg.errors.UniqueViolation,
    )
