"""The AWS Lambda package as `make lambda` builds it, invoked from its directory alone (no site-packages)
with API Gateway (REST and HTTP API) and EventBridge events; the state in a real PostgreSQL, the events on S3
(moto).

The package is built for this interpreter's Python version (the invocations run here); the wheels are
Lambda's Linux ones all the same, and `make lambda` builds for Python 3.12 unless told otherwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pyarrow.dataset as ds
import pytest

from bot.store import open_filesystem
from tests.support import payloads
from tests.support.fake_graph import Answer
from tests.support.home import APP_SECRET, PAGE_TOKEN, VERIFY_TOKEN
from tests.support.lambda_events import http_api_post, rest_api_post
from tests.support.paths import REPO

pytestmark = pytest.mark.e2e

LAMBDA_LIMIT_BYTES = 250 * 1024 * 1024  # a zip package's size once unzipped, its layers included
# What an EventBridge schedule rule sends (the example in EventBridge's documentation of scheduled events).
SCHEDULED = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-11-30T16:53:06Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/promobot-owed-replies"],
    "detail": {},
}

# A Lambda container: imports the handler once, then answers one invocation per line of stdin.
RUNTIME = """
import json, sys
import bot.aws_lambda

class Context:
    function_name = "promobot"
    aws_request_id = "test"

print(json.dumps({"handler": bot.aws_lambda.__file__, "path": sys.path}), flush=True)
for line in sys.stdin:
    print(json.dumps(bot.aws_lambda.handler(json.loads(line), Context())), flush=True)
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """`make lambda` into a temporary directory; this venv stands for the one `make` would install."""
    root = tmp_path_factory.mktemp("lambda")
    venv = Path(sys.prefix)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            f"--assume-old={venv / '.installed'}",
            "lambda",
            f"VENV={venv}",
            f"LAMBDA_PYTHON={version}",
            f"LAMBDA_DIR={root / 'lambda'}",
            f"LAMBDA_ZIP={root / 'promobot-lambda.zip'}",
        ],
        cwd=REPO,
        check=True,
    )
    return root / "lambda"


@pytest.fixture
def function_env(postgres_database_url, s3_endpoint, graph, monkeypatch, request) -> dict[str, str]:
    """The function's configuration: its secrets, PostgreSQL, and a bucket of its own for this test."""
    bucket = request.node.name.replace("_", "-")[:50].lower()
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }
    for name, value in aws.items():
        monkeypatch.setenv(name, value)  # this test reads the bucket too
    boto3.client("s3").create_bucket(Bucket=bucket)
    return {
        "PATH": os.environ["PATH"],
        **aws,
        "PROMOBOT_APP_SECRET": APP_SECRET,
        "PROMOBOT_VERIFY_TOKEN": VERIFY_TOKEN,
        "PROMOBOT_PAGE_TOKEN": PAGE_TOKEN,
        "PROMOBOT_GRAPH_URL": graph.url,
        "PROMOBOT_DATABASE_URL": postgres_database_url,
        "PROMOBOT_DATA": f"s3://{bucket}/promobot",
    }


class Container:
    """One Lambda container: the runtime above, started from the package's directory, with only the package
    and the standard library to import from (`-S`: no site-packages)."""

    def __init__(self, package: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-S", "-c", RUNTIME],
            cwd=package,  # /var/task: the campaign is found in the package's data/
            env={**env, "PYTHONPATH": str(package), "PYTHONNOUSERSITE": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.started = json.loads(self.process.stdout.readline())

    def invoke(self, event: dict) -> dict:
        self.process.stdin.write(json.dumps(event) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def send(self, event: dict) -> None:
        """Invoke without waiting for the answer."""
        self.process.stdin.write(json.dumps(event) + "\n")
        self.process.stdin.flush()

    def freeze(self) -> None:
        """The container is stopped mid-invocation (a timeout, a recycled container): nothing more runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


def stored(data: str) -> list[tuple[str, str]]:
    """(customer, event) of every row in the bucket's Parquet files."""
    filesystem, root = open_filesystem(data)
    try:
        table = ds.dataset(f"{root}/events", filesystem=filesystem, format="parquet").to_table()
    except FileNotFoundError:
        return []
    return sorted(
        zip(table.column("customer_id").to_pylist(), table.column("event").to_pylist(), strict=True)
    )


def test_the_package_fits_in_a_lambda_zip_without_the_analytics(package):
    files = [path for path in package.rglob("*") if path.is_file() and not path.is_symlink()]
    size = sum(path.stat().st_size for path in files)
    print(f"Lambda package: {size / 1e6:.0f} MB unzipped, {len(files)} files")

    assert size <= LAMBDA_LIMIT_BYTES
    assert (package.parent / "promobot-lambda.zip").is_file()
    for analytics_only in ("duckdb", "altair", "vl_convert", "sqlglot", "tqdm"):
        assert not (package / analytics_only).exists(), analytics_only


def test_webhooks_through_both_api_gateways_are_stored_and_answered_within_the_invocation(
    package, function_env, graph
):
    container = Container(package, function_env)
    try:
        assert Path(container.started["handler"]).is_relative_to(package)
        assert not any("site-packages" in path for path in container.started["path"])

        http = container.invoke(http_api_post(payloads.envelope(payloads.postback("7001", "GET_STARTED"))))
        rest = container.invoke(rest_api_post(payloads.envelope(payloads.postback("7002", "GET_STARTED"))))

        assert (http["statusCode"], http["body"]) == (200, "EVENT_RECEIVED")
        assert (rest["statusCode"], rest["body"]) == (200, "EVENT_RECEIVED")
        # Answered and flushed before each invocation returned: a frozen container runs nothing afterwards.
        assert len(graph.messages_to("7001")) == len(graph.messages_to("7002")) == 1
        assert stored(function_env["PROMOBOT_DATA"]) == [
            ("7001", "conversation_started"),
            ("7001", "welcome_sent"),
            ("7002", "conversation_started"),
            ("7002", "welcome_sent"),
        ]
    finally:
        container.close()


def test_a_bad_signature_is_refused_through_both_api_gateways(package, function_env, graph):
    body = payloads.envelope(payloads.postback("7003", "GET_STARTED"))
    container = Container(package, function_env)
    try:
        for event in (http_api_post(body, secret="not-the-app-secret"), rest_api_post(body, "not-it-either")):
            assert container.invoke(event)["statusCode"] == 403
        assert container.invoke(SCHEDULED) == {"replies_owed": 0}
    finally:
        container.close()

    assert graph.messages_to("7003") == []
    assert stored(function_env["PROMOBOT_DATA"]) == []


def test_a_reply_owed_by_a_frozen_function_is_sent_by_the_scheduled_invocation(package, function_env, graph):
    graph.script_sends("7004", Answer(delay_s=60))  # the Send API call hangs: the container is stopped in it
    frozen = Container(package, function_env)
    frozen.send(http_api_post(payloads.envelope(payloads.postback("7004", "GET_STARTED"))))
    deadline = time.monotonic() + 30
    while graph.attempts.get("7004", 0) == 0:
        assert time.monotonic() < deadline, "the function never called the Send API"
        time.sleep(0.02)
    frozen.freeze()

    # EventBridge invokes the function on its schedule; the reply is sent once its lease has run out.
    scheduled = Container(package, function_env)
    try:
        deadline = time.monotonic() + 60
        while not graph.messages_to("7004"):
            assert time.monotonic() < deadline, "no scheduled invocation sent the owed reply"
            scheduled.invoke(SCHEDULED)
            time.sleep(0.5)  # the rule's period, shortened
        assert scheduled.invoke(SCHEDULED) == {"replies_owed": 0}
    finally:
        scheduled.close()

    # The click, committed to PostgreSQL before the frozen function sent anything, was not lost.
    assert stored(function_env["PROMOBOT_DATA"]) == [
        ("7004", "conversation_started"),
        ("7004", "welcome_sent"),
    ]
