"""An S3-compatible server (moto) on loopback for tests, and readers of what the bot stored there.

`s3_endpoint` is one server for the whole session; `bucket` a fresh bucket of the test's own, with the AWS
variables that point this process (and the bots it starts, which inherit its environment) at the server.
Registered in tests/conftest.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import boto3
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer

from bot.store import open_filesystem
from tests.support.ports import free_port

REGION = "us-east-1"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of a moto S3 server on 127.0.0.1, for the whole session."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of a new, empty bucket; the AWS variables of this process point at the server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    name = f"promobot-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION).create_bucket(Bucket=name)
    return name


def object_keys(bucket: str, endpoint: str) -> list[str]:
    """The keys of the bucket's files (not the empty "folder/" markers pyarrow may leave)."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/")]
    return sorted(keys)


def stored_rows(data: str) -> list[dict]:
    """Every event row stored under `data` (`s3://bucket/prefix`), duplicates included, read with pyarrow."""
    filesystem, root = open_filesystem(data)
    if filesystem.get_file_info(f"{root}/events").type == pafs.FileType.NotFound:
        return []
    dataset = ds.dataset(f"{root}/events", filesystem=filesystem, format="parquet", partitioning="hive")
    return dataset.to_table().to_pylist()
