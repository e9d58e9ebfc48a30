"""The webhook benchmark: its baseline checks signatures under the bot's own uvicorn options, and a short run
measures the baseline and the bot on both stores without an error."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import uvicorn

from benchmarks import webhook as bench
from bot.config import Mode
from bot.messenger import SIGNATURE_HEADER, sign
from tests.support.home import make_home
from tests.support.paths import REPO


def post(body: bytes, signature: str) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=bench.baseline_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            return await client.post("/webhook", content=body, headers={SIGNATURE_HEADER: signature})

    return asyncio.run(send())


def test_the_baseline_acknowledges_a_signed_webhook_and_refuses_a_bad_signature() -> None:
    body, signature = bench.bodies(1)[0]

    signed = post(body, signature.decode())
    forged = post(body, sign("another-secret", body))

    assert (signed.status_code, signed.text) == (200, "EVENT_RECEIVED")
    assert signed.headers["content-type"] == "text/plain; charset=utf-8"
    assert forged.status_code == 403


def test_the_baseline_runs_under_the_uvicorn_options_of_the_bots_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the bot's server settings, with the log level the benchmark gives the bot
    data = make_home(tmp_path)
    for name, value in {
        "PROMOBOT_APP_SECRET": "s",
        "PROMOBOT_VERIFY_TOKEN": "v",
        "PROMOBOT_PAGE_TOKEN": "t",
        "PROMOBOT_DATA": str(data),
        "PROMOBOT_CAMPAIGN": str(data / "campaign.toml"),
        "PROMOBOT_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(name, value)
    given: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: given.update(options))
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    threshold = gc.get_threshold()
    # When `python -m bot serve` starts (uvicorn itself replaced: nothing listens)
    from bot.server import serve

    try:
        serve(Mode.SERVER, port=8000)
    finally:
        for number, handler in handlers.items():  # serve sets its own, and freezes the heap
            signal.signal(number, handler)
        gc.unfreeze()
        gc.set_threshold(*threshold)

    # Then the baseline's options are the bot's, loop and HTTP implementation included
    del given["host"], given["port"]
    assert given == bench.uvicorn_options("warning")


@pytest.mark.e2e
def test_a_short_run_measures_the_baseline_and_both_stores_without_errors(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    short = ["--seconds", "0.3", "--warmup", "0.1", "--rounds", "1", "--rate", "200"]

    run = subprocess.run(
        [sys.executable, "benchmarks/webhook.py", *short, "--json", str(figures)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert run.returncode == 0, run.stderr
    (measured,) = json.loads(figures.read_text())["rounds"]
    assert list(measured) == ["baseline", "sqlite", "postgres"]
    for name, result in measured.items():
        assert result["requests"] > 0, name
        assert result["errors"] == 0, name
        assert result["at_rate"]["errors"] == 0, name
    assert measured["postgres"]["cpu_ms"]["PostgreSQL"] > 0
    assert measured["sqlite"]["cpu_ms"]["sender"] > 0  # the bot's sender process, which sends its replies
    assert measured["postgres"]["cpu_ms"]["sender"] > 0
    assert "PostgreSQL ≥ 2,000 webhooks/s" in run.stdout
