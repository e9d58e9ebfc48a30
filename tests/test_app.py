"""The app in-process, through httpx's ASGI transport with its lifespan run: the store behind the webhook."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import httpx
import psycopg
import pytest
import segno

from bot.app import create_app
from bot.campaign import load_campaign
from bot.config import ConfigError, Mode, Settings
from bot.facts import ButtonStep
from bot.flow import button_payload
from tests.support import payloads
from tests.support.bot_process import run_bot
from tests.support.home import LAST_DAY, environment, make_home, shown_day, single_use_home
from tests.support.in_process import post, running, settings_for
from tests.support.mock_graph import Platform, platform
from tests.support.paths import REPO

pytestmark = pytest.mark.anyio


async def test_a_webhook_the_store_cannot_take_is_answered_503_and_its_redelivery_recorded(
    tmp_path, postgres_database_url
):
    data = make_home(tmp_path)
    app = create_app(
        settings_for(data, PROMOBOT_DATABASE_URL=postgres_database_url),
        graph_transport=httpx.MockTransport(platform),
    )
    first = payloads.envelope(payloads.postback("9101", "GET_STARTED"))
    second = payloads.envelope(payloads.postback("9102", "GET_STARTED"))
    async with running(app) as client:
        assert (await post(client, first)).status_code == 200
        # The server drops every connection of the bot (a failover, a restart of PostgreSQL).
        with psycopg.connect(postgres_database_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        refused = await post(client, second)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert (await post(client, second)).status_code == 200  # the platform's redelivery: a new connection
        assert (await post(client, second)).status_code == 200  # and once more: recorded once all the same
        recorded = app.state.runtime.database.query(
            "SELECT customer_id FROM events WHERE event = 'conversation_started'"
        )
    assert sorted(customer for (customer,) in recorded) == ["9101", "9102"]


async def test_an_unflushed_log_of_an_earlier_promobot_stops_start_up_naming_it(tmp_path):
    data = make_home(tmp_path)
    (data / "wal").mkdir()
    (data / "wal" / "000000000007.wal").write_bytes(b"\x00" * 64)
    app = create_app(settings_for(data), graph_transport=httpx.MockTransport(platform))

    with pytest.raises(ConfigError, match=f"{data / 'wal'} holds events an earlier promobot"):
        async with running(app):
            pass


async def test_local_mode_keeps_its_state_beside_its_events(tmp_path):
    data = make_home(tmp_path)
    settings = Settings.from_env(
        {"PROMOBOT_DATA": str(data), "PROMOBOT_CAMPAIGN": str(data / "campaign.toml")}, Mode.LOCAL
    )
    async with running(create_app(settings)) as client:
        assert (await client.get("/healthz")).status_code == 200
    assert (data / "promobot.sqlite3").is_file()


async def test_a_reveal_gets_a_single_use_code_with_its_till_link_then_the_pool_runs_out(tmp_path):
    data = single_use_home(tmp_path, ["SPR-AAAA2222"])
    platform = Platform()
    settings = settings_for(data, PROMOBOT_PUBLIC_URL="https://bot.example")
    app = create_app(settings, graph_transport=httpx.MockTransport(platform))
    reveal = button_payload(load_campaign(data / "campaign.toml"), ButtonStep.REVEAL)
    async with running(app) as client:
        for customer, n in (("9201", 2), ("9201", 4), ("9202", 1)):  # two messages per code: text, QR code
            body = payloads.envelope(payloads.postback(customer, reveal, mid=f"m_{customer}_{n}"))
            assert (await post(client, body)).status_code == 200
            await platform.wait_for(customer, n)
        first, qr, again, qr_again = platform.messages["9201"]
        code_line, valid_line, link_line = first["text"].split("\n")
        link = link_line.removeprefix("At the till, show this link: ")
        image = await client.get(link.removeprefix("https://bot.example") + "/qr.png")
        unknown = await client.get("/redeem/not-a-token/qr.png")

    assert again == first  # the same code on every reveal
    assert code_line == "Your code: SPR-AAAA2222"
    assert valid_line == f"Valid until: {shown_day(LAST_DAY)}"
    token = link.removeprefix("https://bot.example/redeem/")
    assert len(base64.urlsafe_b64decode(token + "==")) == 16  # 128 bits
    # Then the link as a QR code, for the till to scan from the customer's screen: an image of their own.
    assert (
        qr
        == qr_again
        == {"attachment": {"type": "image", "payload": {"url": f"{link}/qr.png", "is_reusable": False}}}
    )
    assert (image.status_code, image.headers["content-type"]) == (200, "image/png")
    expected = io.BytesIO()
    segno.make(link, error="m").save(expected, kind="png", scale=8, border=2)
    assert image.content == expected.getvalue()
    assert unknown.status_code == 404
    assert platform.messages["9202"] == [{"text": "Sorry, all gone!"}]


def test_a_bad_codes_file_stops_start_up_naming_file_and_line(tmp_path):
    data = single_use_home(tmp_path, ["SPR-AAAA2222", "SPR-BBBB3333", "SPR-AAAA2222"])
    result = run_bot("serve", "--port", "9", env=environment(data))
    assert result.returncode != 0
    assert f"{data / 'spring-codes.csv'}: line 4: 'SPR-AAAA2222' repeats line 2" in result.stderr


async def test_a_nul_in_a_ref_is_stored_as_a_replacement_character_on_postgresql(
    tmp_path, postgres_database_url
):
    data = make_home(tmp_path)
    app = create_app(
        settings_for(data, PROMOBOT_DATABASE_URL=postgres_database_url),
        graph_transport=httpx.MockTransport(Platform()),
    )
    body = payloads.envelope(payloads.referral("9401", "till\u0000qr"))
    async with running(app) as client:
        assert (await post(client, body)).status_code == 200
        assert (
            await post(client, payloads.envelope(payloads.postback("9402", "GET_STARTED")))
        ).status_code == 200
        rows = app.state.runtime.database.query("SELECT customer_id, detail FROM events ORDER BY customer_id")
    assert [customer for customer, _ in rows] == ["9401", "9402"]
    assert json.loads(rows[0][1])["ref"] == "till\ufffdqr"


SETTLED_SERVER = """
import gc, json, sys
import httpx
from starlette.testclient import TestClient
from bot.app import create_app
from bot.config import Mode
from bot.server import settle_in
from bot.startup import load_settings
from bot.store import event_row, rows_to_table
from tests.support.builders import PLATFORM_T0, customer_event

settings, _ = load_settings(Mode.SERVER)
transport = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
with TestClient(create_app(settings, graph_transport=transport, on_ready=settle_in)):
    ready, frozen = set(sys.modules), gc.get_freeze_count()
    rows_to_table([event_row(customer_event("c1", 0, start=PLATFORM_T0))])  # as the first flush does
    print(json.dumps({"frozen": frozen, "imported_later": sorted(set(sys.modules) - ready)}))
"""


def test_the_server_imports_what_its_first_flush_needs_before_it_freezes_its_heap(tmp_path):
    # pyarrow imports pandas (300 modules) at its first conversion of rows: the first flush did it while the
    # event loop served webhooks, and the next collections walked 35,000 new objects (29 and 23 ms pauses).
    clean = {name: value for name, value in os.environ.items() if not name.startswith("PROMOBOT_")}
    done = subprocess.run(
        [sys.executable, "-c", SETTLED_SERVER],
        cwd=REPO,
        env={**clean, **environment(make_home(tmp_path))},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    settled = json.loads(done.stdout.splitlines()[-1])

    assert settled["imported_later"] == []
    assert settled["frozen"] > 10_000
