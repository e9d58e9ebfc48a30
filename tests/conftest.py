"""Shared test fixtures: the helpers in tests/support, and the fixture plugins among them."""

from __future__ import annotations

import pytest

# A real PostgreSQL server (postgres_server, postgres_url, postgres_database_url); a moto S3 server
# (s3_endpoint, bucket); the store on both engines (database_url, store, database); a fake Graph API (graph).
pytest_plugins = [
    "tests.support.postgres",
    "tests.support.s3",
    "tests.support.stores",
    "tests.support.fake_graph",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
