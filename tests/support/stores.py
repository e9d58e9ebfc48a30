"""The transactional store on both engines for tests: the `database_url` and `store` fixtures (a plugin)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.config import SQLITE_FILE
from bot.database import Database
from tests.support.builders import BOT_T0, Clock


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The store's URL: None for the SQLite file in the data directory, or a fresh PostgreSQL database."""
    return request.getfixturevalue("postgres_database_url") if request.param == "postgresql" else None


@dataclass
class Store:
    """One engine's empty database, and a way to look at it from outside the code under test."""

    url: str | None  # None: SQLite in data_dir
    data_dir: Path
    clock: Clock

    def open(self, **options) -> Database:
        return Database.open(self.url, self.data_dir, clock=self.clock, **options)

    def rows(self, sql: str) -> list[tuple]:
        with self._connection() as connection:
            return [tuple(row) for row in connection.execute(sql).fetchall()]

    def execute(self, *statements: str) -> None:
        with self._connection() as connection:
            for statement in statements:
                connection.execute(statement)

    @contextlib.contextmanager
    def _connection(self) -> Iterator:
        if self.url is None:
            connection = sqlite3.connect(self.data_dir / SQLITE_FILE, isolation_level=None)
        else:
            import psycopg

            connection = psycopg.connect(self.url, autocommit=True)
        try:
            yield connection
        finally:
            connection.close()


@pytest.fixture
def store(database_url: str | None, tmp_path: Path) -> Store:
    """An empty store: a SQLite file in this test's directory, or a fresh database on the suite's server."""
    return Store(database_url, tmp_path / "data", Clock(BOT_T0))


@pytest.fixture
def database(store: Store) -> Iterator[Database]:
    """The store opened, on the bot's clock `store.clock`."""
    database = store.open()
    yield database
    database.close()


@contextlib.contextmanager
def opened(url: str | None, directory: Path, **options: Any) -> Iterator[Database]:
    """The store at `url` (None: the SQLite file in `directory`), open for the block."""
    database = Database.open(url, directory, **options)
    try:
        yield database
    finally:
        database.close()
