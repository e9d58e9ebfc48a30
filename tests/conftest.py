"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# A real PostgreSQL server: the fixtures postgres_server, postgres_url and postgres_database_url.
pytest_plugins = ["tests.postgres", "tests.s3"]

REPO = Path(__file__).resolve().parent.parent
# Real Messenger payloads (webhook bodies, and Send API bodies in send/); see their SOURCES.md.
MESSENGER_FIXTURES = Path(__file__).resolve().parent / "data" / "messenger"
TEST_DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
