"""Heroku, reproduced: the Python buildpack's install (`pip install -r requirements.txt` in the app's
directory, into a fresh venv), then the Procfile's `release` and `web` commands as a dyno runs them, with
`$PORT`, Heroku Postgres's `DATABASE_URL` (a real PostgreSQL server) and the events on S3 (moto); a signed
conversation, then SIGTERM, as a dyno's restart sends it to every process of the dyno."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pyarrow.dataset as ds
import pytest

from bot.messenger import sign
from bot.store import open_filesystem
from tests.support import payloads
from tests.support.fake_graph import FakeGraph
from tests.support.home import APP_SECRET, PAGE_TOKEN, VERIFY_TOKEN
from tests.support.paths import REPO
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

BUCKET = "promobot-heroku"


@pytest.fixture(scope="module")
def slug(tmp_path_factory) -> tuple[Path, Path]:
    """The app as pushed (the repository's tracked files), built as the buildpack builds it: the app's
    directory and the venv its requirements went into."""
    root = tmp_path_factory.mktemp("heroku")
    app, venv = root / "app", root / "venv"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        source = REPO / name
        if source.is_file() and not name.startswith(("tests/", "benchmarks/")):
            (app / name).parent.mkdir(parents=True, exist_ok=True)
            (app / name).write_bytes(source.read_bytes())
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [venv / "bin" / "pip", "install", "--quiet", "-r", "requirements.txt"], cwd=app, env=env, check=True
    )
    return app, venv


def procfile(app: Path) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in (app / "Procfile").read_text().splitlines() if line)


def dyno_env(venv: Path, **settings: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PROMOBOT_", "PYTHON", "AWS_"))}
    return {**keep, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", **settings}


def postbacks(message: dict) -> dict[str, str]:
    return {b["title"]: b["payload"] for b in message["attachment"]["payload"]["buttons"]}


def test_the_slug_holds_the_bot_without_the_analytics(slug):
    app, venv = slug

    for module, installed in (("bot.app", True), ("duckdb", False), ("altair", False), ("vl_convert", False)):
        found = subprocess.run([venv / "bin" / "python", "-c", f"import {module}"], cwd=app, check=False)
        assert (found.returncode == 0) is installed, module


def test_release_then_web_serve_a_conversation_and_leave_the_events_in_s3(
    slug, postgres_database_url, s3_endpoint, tmp_path, monkeypatch
):
    app, venv = slug
    processes = procfile(app)
    heroku = {
        "DATABASE_URL": postgres_database_url,
        "PROMOBOT_DATA": f"s3://{BUCKET}/promobot",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }
    for name, value in heroku.items():
        monkeypatch.setenv(name, value)  # the same bucket for this test's own reads and writes
    boto3.client("s3").create_bucket(Bucket=BUCKET)

    release = subprocess.run(
        ["bash", "-c", processes["release"]],
        cwd=app,
        env=dyno_env(venv, **heroku),
        capture_output=True,
        text=True,
        check=False,
    )
    assert release.returncode == 0, release.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "web.log"
    with FakeGraph(PAGE_TOKEN) as graph, open(log, "wb") as output:
        secrets = {
            "PROMOBOT_APP_SECRET": APP_SECRET,
            "PROMOBOT_VERIFY_TOKEN": VERIFY_TOKEN,
            "PROMOBOT_PAGE_TOKEN": PAGE_TOKEN,
            "PROMOBOT_GRAPH_URL": graph.url,
        }
        # The web command binds 0.0.0.0 as on a dyno; only loopback is ever sent anything here.
        web = subprocess.Popen(
            ["bash", "-c", processes["web"]],
            cwd=app,
            env=dyno_env(venv, PORT=str(port), **heroku, **secrets),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the dyno: a restart signals every process in it
        )
        try:
            deadline = time.monotonic() + 60
            while not healthy(url):
                assert web.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)

            def post(messaging: dict) -> None:
                body = payloads.envelope(messaging)
                answer = httpx.post(
                    f"{url}/webhook",
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "X-Hub-Signature-256": sign(APP_SECRET, body),
                    },
                )
                assert answer.status_code == 200, answer.text

            post(payloads.postback("6001", "GET_STARTED", ref="till-qr"))
            yes = postbacks(graph.wait_for("6001", 1)[0])["Yes! Show me coupon"]
            post(payloads.postback("6001", yes, mid="m_heroku1"))
            reveal = postbacks(graph.wait_for("6001", 2)[1])["Reveal the coupon"]
            post(payloads.postback("6001", reveal, mid="m_heroku2"))
            assert graph.wait_for("6001", 3)[2] == {"text": "SPRING20"}

            os.killpg(web.pid, signal.SIGTERM)
            assert web.wait(timeout=30) == 0, log.read_text()
        finally:
            if web.poll() is None:
                os.killpg(web.pid, signal.SIGKILL)
                web.wait(timeout=30)

    filesystem, root = open_filesystem(f"s3://{BUCKET}/promobot")
    table = ds.dataset(
        f"{root}/events", filesystem=filesystem, format="parquet", partitioning="hive"
    ).to_table()
    assert sorted(table.column("event").to_pylist()) == sorted(
        [
            "conversation_started",
            "welcome_sent",
            "coupon_requested",
            "coupon_sent",
            "coupon_revealed",
            "code_sent",
        ]
    )
    assert not (app / ".promobot").exists()  # the state was in PostgreSQL, not on the dyno's disk


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.TransportError:
        return False
