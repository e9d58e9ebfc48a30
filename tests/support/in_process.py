"""The app in-process: its settings for a test home, a client through httpx's ASGI transport, signed posts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from starlette.applications import Starlette

from bot.config import Mode, Settings
from bot.messenger import SIGNATURE_HEADER, sign
from tests.support.home import APP_SECRET, environment


def settings_for(data: Path, mode: Mode = Mode.SERVER, **env: str) -> Settings:
    """Settings of a bot on `data` with the test secrets and a Graph API at https://graph.test, and `env`."""
    return Settings.from_env(environment(data, **{"PROMOBOT_GRAPH_URL": "https://graph.test", **env}), mode)


@contextlib.asynccontextmanager
async def running(app: Starlette, base_url: str = "http://promobot.test") -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` at `base_url` (https for secure cookies), between its start-up and its shut-down."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


async def post(client: httpx.AsyncClient, body: bytes, secret: str = APP_SECRET) -> httpx.Response:
    """POST /webhook with `body` signed as the platform signs it (with the app secret)."""
    return await client.post("/webhook", content=body, headers={SIGNATURE_HEADER: sign(secret, body)})
