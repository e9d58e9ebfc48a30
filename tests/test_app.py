"""The app in-process, through httpx's ASGI transport with its lifespan run: the store behind the webhook."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
from starlette.applications import Starlette

from bot.app import create_app
from bot.config import ConfigError, Mode, Settings
from bot.messenger import sign
from tests import payloads
from tests.bot_process import APP_SECRET, PAGE_TOKEN, VERIFY_TOKEN, make_home

pytestmark = pytest.mark.anyio

SECRETS = {
    "PROMOBOT_APP_SECRET": APP_SECRET,
    "PROMOBOT_VERIFY_TOKEN": VERIFY_TOKEN,
    "PROMOBOT_PAGE_TOKEN": PAGE_TOKEN,
}


def platform(request: httpx.Request) -> httpx.Response:
    if request.method == "GET":
        return httpx.Response(200, json={"first_name": "Ada", "id": "1"})
    return httpx.Response(200, json={"recipient_id": "1", "message_id": "m_1"})


def settings_for(data: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            **SECRETS,
            "PROMOBOT_DATA": str(data),
            "PROMOBOT_CAMPAIGN": str(data / "campaign.toml"),
            "PROMOBOT_GRAPH_URL": "https://graph.test",
            **env,
        }
    )


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app`, between its start-up and its shut-down."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://promobot.test") as client:
            yield client


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(
        "/webhook", content=body, headers={"X-Hub-Signature-256": sign(APP_SECRET, body)}
    )


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
        recorded = app.state.runtime.database._query(
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


async def test_health_tells_how_many_replies_are_owed(tmp_path):
    data = make_home(tmp_path)
    app = create_app(settings_for(data), graph_transport=httpx.MockTransport(platform))
    async with running(app) as client:
        health = (await client.get("/healthz")).json()
    assert health["status"] == "ok"
    assert health["replies_owed"] == 0


async def test_local_mode_keeps_its_state_beside_its_events(tmp_path):
    data = make_home(tmp_path)
    settings = Settings.from_env(
        {"PROMOBOT_DATA": str(data), "PROMOBOT_CAMPAIGN": str(data / "campaign.toml")}, Mode.LOCAL
    )
    async with running(create_app(settings)) as client:
        assert (await client.get("/healthz")).status_code == 200
    assert (data / "promobot.sqlite3").is_file()
