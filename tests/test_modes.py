"""Modes: `serve` needs its secrets; only the local-mode bot has the simulator, and only on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import httpx
import pytest

from bot.config import Mode
from bot.messenger import sign
from bot.simulator import GraphStandIn
from tests.support import payloads
from tests.support.bot_process import BotProcess, run_bot
from tests.support.home import APP_SECRET, SECRETS, environment, make_home
from tests.support.paths import REPO
from tests.support.ports import free_port


def accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def serve_without(tmp_path, *missing: str) -> tuple[subprocess.CompletedProcess, int]:
    """`python -m bot serve` on a free port with the test secrets except `missing`; waits for it to end."""
    env = {name: value for name, value in environment(make_home(tmp_path)).items() if name not in missing}
    port = free_port()
    return run_bot("serve", "--host", "0.0.0.0", "--port", str(port), env=env), port


@pytest.mark.e2e
def test_serve_without_its_secrets_refuses_to_start_naming_all_three(tmp_path):
    result, port = serve_without(tmp_path, *SECRETS)

    assert result.returncode != 0
    assert "promobot cannot start: " in result.stderr
    for name in SECRETS:
        assert name in result.stderr
    assert not accepts_connections("127.0.0.1", port)
    assert not (tmp_path / "data" / "wal").exists()  # nothing opened either


@pytest.mark.e2e
@pytest.mark.parametrize("missing", list(SECRETS))
def test_serve_missing_one_secret_names_that_one(tmp_path, missing):
    result, port = serve_without(tmp_path, missing)

    assert result.returncode != 0
    named = set(re.findall(r"PROMOBOT_\w+", result.stderr.split(" not set")[0]))
    assert named == {missing}
    assert not accepts_connections("127.0.0.1", port)


@pytest.mark.e2e
def test_the_local_bot_serves_the_simulator_on_loopback_only_with_a_secret_of_its_own(tmp_path):
    # The shell holds a real page's secrets: local mode ignores them.
    with BotProcess(make_home(tmp_path), "https://graph.invalid", Mode.LOCAL) as bot:
        page = bot.client.get("/")
        assert page.status_code == 200
        config = json.loads(
            re.search(r'<script id="config" type="application/json">(.*?)</script>', page.text).group(1)
        )
        assert config["secret"] not in ("", APP_SECRET)
        assert bot.client.get("/simulator/messages", params={"customer": "1"}).json() == []

        # A webhook signed with the environment's secret is forged, as far as the local bot knows.
        body = payloads.envelope(payloads.postback("5001", "GET_STARTED"))
        assert bot.post(body).status_code == 403
        assert bot.post(body, signature=sign(config["secret"], body)).status_code == 200

        # 127.0.0.2 is this machine too: a bot listening beyond 127.0.0.1 would answer there.
        assert not accepts_connections("127.0.0.2", bot.port)
        assert bot.stop() == 0


# -- the stand-in's memory -----------------------------------------------------------------------------------


async def send(stand_in: GraphStandIn, customer: str, text: str) -> None:
    async with httpx.AsyncClient(transport=stand_in, base_url="https://graph.invalid") as client:
        response = await client.post(
            "/v25.0/me/messages", json={"recipient": {"id": customer}, "message": {"text": text}}
        )
        response.raise_for_status()


def texts(messages: list[dict]) -> list[str]:
    return [m["message"]["text"] for m in messages]


@pytest.mark.anyio
async def test_the_stand_in_remembers_the_last_messages_of_each_customer():
    stand_in = GraphStandIn(max_customers=10, max_messages=3)
    for n in range(5):
        await send(stand_in, "1", f"m{n}")

    assert texts(stand_in.messages("1")) == ["m2", "m3", "m4"]
    # Indices count every message ever sent: a page that has shown four gets the fifth.
    assert texts(stand_in.messages("1", after=4)) == ["m4"]
    assert texts(stand_in.messages("1", after=1)) == ["m2", "m3", "m4"]
    assert stand_in.messages("1", after=5) == []


@pytest.mark.anyio
async def test_the_stand_in_forgets_the_least_recently_active_customer_first():
    stand_in = GraphStandIn(max_customers=2, max_messages=3)
    await send(stand_in, "1", "to 1")
    await send(stand_in, "2", "to 2")
    stand_in.set_first_name("1", "Ada")  # 1 is active again: 2 is now the oldest

    await send(stand_in, "3", "to 3")

    assert stand_in.messages("2") == []
    assert texts(stand_in.messages("1")) == ["to 1"]
    assert texts(stand_in.messages("3")) == ["to 3"]


@pytest.mark.anyio
async def test_asking_for_an_unknown_customer_remembers_nothing():
    stand_in = GraphStandIn(max_customers=1, max_messages=3)
    await send(stand_in, "1", "to 1")

    for n in range(5):
        assert stand_in.messages(f"unknown-{n}") == []

    assert texts(stand_in.messages("1")) == ["to 1"]


@pytest.mark.e2e
def test_make_run_fails_when_the_bot_refuses_its_campaign(tmp_path):
    # The demo's events already there, so nothing is seeded; the campaign has a misspelt key.
    (tmp_path / "data" / "demo" / "events").mkdir(parents=True)
    campaign = (REPO / "data" / "demo-campaign.toml").read_text(encoding="utf-8")
    (tmp_path / "data" / "bad.toml").write_text(campaign.replace("reveal =", "revael ="), encoding="utf-8")
    for name in ("demo-codes.csv", "thanks.png"):
        shutil.copy(REPO / "data" / name, tmp_path / "data")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROMOBOT_") and k != "DATABASE_URL"}

    run = subprocess.run(
        [sys.executable, "-m", "bot", "run-local"],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(REPO), "PROMOBOT_CAMPAIGN": "data/bad.toml"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert "coupon.revael: unknown key" in run.stderr + run.stdout
    assert run.returncode == 1, run.stdout
    assert "the bot could not run" in run.stderr


@pytest.mark.parametrize("token", ["", "   "])
def test_the_dashboard_refuses_to_listen_beyond_this_machine_without_its_token(tmp_path, token):
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROMOBOT_")}

    run = subprocess.run(
        [sys.executable, "-m", "analytics", "dashboard", "--host", "0.0.0.0", "--port", str(port)],
        cwd=REPO,
        env={**clean, "PROMOBOT_DATA": str(tmp_path), "PROMOBOT_DASHBOARD_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 2
    assert "not listening on 0.0.0.0 without PROMOBOT_DASHBOARD_TOKEN" in run.stderr
    assert not accepts_connections("127.0.0.1", port)
