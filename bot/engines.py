"""The SQL engines the transactional store runs on (a SQLite file, a PostgreSQL server) and how to connect."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

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
    # PostgreSQL: a connection's statements sent without waiting for each answer (pipeline mode)
    pipeline: Callable[[Any], AbstractContextManager[object]]


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
        "sqlite",
        f"SQLite {path}",
        connect,
        sqlite3.Error,
        "BEGIN IMMEDIATE",
        "",
        sqlite3.IntegrityError,
        lambda connection: contextlib.nullcontext(),  # in-process: no round trips to save
    )


def postgresql(url: str) -> Engine:
    """The PostgreSQL server of `url`; psycopg is imported only here."""
    import psycopg  # only needed with a PostgreSQL URL
    from psycopg.abc import Params, Query

    class QmarkCursor(psycopg.Cursor):
        """Takes `?` placeholders, as sqlite3 does: one text of each statement serves both engines."""

        def execute(
            self,
            query: Query,
            params: Params | None = None,
            *,
            prepare: bool | None = None,
            binary: bool | None = None,
        ) -> Self:
            return super().execute(_pyformat(query), params, prepare=prepare, binary=binary)

        def executemany(self, query: Query, params_seq: Iterable[Params], *, returning: bool = False) -> None:
            super().executemany(_pyformat(query), params_seq, returning=returning)

    info = psycopg.conninfo.conninfo_to_dict(url)
    # Without a limit, a server that drops packets holds a webhook (or start-up) for minutes.
    timeout = info.get("connect_timeout", CONNECT_TIMEOUT_S)
    where = f"PostgreSQL {info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    return Engine(
        "postgresql",
        where,
        lambda: psycopg.connect(url, autocommit=True, cursor_factory=QmarkCursor, connect_timeout=timeout),
        psycopg.Error,
        "BEGIN",
        "FOR UPDATE SKIP LOCKED",
        psycopg.errors.UniqueViolation,
        lambda connection: connection.pipeline(),
    )


def _pyformat(query: object) -> str:
    """A statement's `?` placeholders as psycopg's `%s`. Raises TypeError for a query that is not text (a
    composed sql.SQL, bytes, a template): the store sends none, and psycopg's own take `%s` already."""
    if not isinstance(query, str):
        raise TypeError(f"a statement with ? placeholders is text, not {type(query).__name__}")
    return query.replace("?", "%s")
