"""`python -m bot doctor [--fix] [--json]`: every health check, for the bot the environment describes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bot.config import ConfigError, Mode, Settings
from bot.database import DatabaseError
from bot.health import Check, Name, Status, local_health, worst
from bot.migrations import MigrationError
from bot.page_checks import graph_checks, version_check
from bot.startup import command_settings, graph_client, open_database


def _settings(environ: Mapping[str, str]) -> Settings:
    """The settings the doctor needs: the page token, not the webhook's secrets (whatever is missing is a
    check that fails, not a refusal to look)."""
    settings = command_settings(environ)
    return replace(
        settings,
        mode=Mode.SERVER,
        page_token=environ.get("PROMOBOT_PAGE_TOKEN", "").strip(),
        app_secret=environ.get("PROMOBOT_APP_SECRET", "").strip(),
    )


def _store_checks(settings: Settings, now: datetime | None) -> list[Check]:
    url = settings.database
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        where = url.removeprefix("sqlite:///")
        return [
            Check(
                Name.STORE,
                Status.FAIL,
                f"no store at {where}",
                "run the doctor with the bot's PROMOBOT_DATA (or PROMOBOT_DATABASE_URL)",
            )
        ]
    try:
        database = open_database(settings)
    except (DatabaseError, MigrationError) as exc:
        return [
            Check(Name.STORE, Status.FAIL, str(exc), "check PROMOBOT_DATABASE_URL and that the database runs")
        ]
    try:
        return local_health(database, now, flush_seconds=settings.flush_seconds)
    finally:
        database.close()


async def _page_checks(
    settings: Settings, fix: bool, transport: httpx.AsyncBaseTransport | None
) -> list[Check]:
    if not settings.page_token:
        return [
            Check(
                Name.PAGE,
                Status.FAIL,
                "PROMOBOT_PAGE_TOKEN is not set",
                "set it to the page access token the bot runs with",
            )
        ]
    graph = graph_client(settings, transport)
    try:
        return await graph_checks(graph, fix=fix, app_id=settings.app_id, menu=True)
    finally:
        await graph.aclose()


def doctor(
    *,
    fix: bool = False,
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    now: datetime | None = None,
) -> list[Check]:
    """Every check, for the bot the environment describes.

    Parameters: `fix` subscribe the app to the webhook fields it lacks and add the opt-out item to the page's
    persistent menu; `environ`, `transport` and `now`
    the environment, the Graph API transport and the clock (tests pass stand-ins).
    Raises: ConfigError for a malformed setting.
    """
    settings = _settings(os.environ if environ is None else environ)
    today = (now or datetime.now(UTC)).date()
    checks = asyncio.run(_page_checks(settings, fix, transport))
    checks.append(version_check(settings.graph_version, today))
    checks.extend(_store_checks(settings, now))
    return checks


def render(checks: Sequence[Check]) -> str:
    """One line per check, `status  name: message`, and the fix below a warning or a failure."""
    lines = []
    for check in checks:
        lines.append(f"{check.status.upper():<4}  {check.name}: {check.message}")
        if check.fix and check.status is not Status.OK:
            lines.append(f"      fix: {check.fix}")
    return "\n".join(lines)


def doctor_command(
    *,
    fix: bool = False,
    as_json: bool = False,
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    now: datetime | None = None,
) -> int:
    """`python -m bot doctor [--fix] [--json]`: print every check.

    Returns: the exit status, 1 when a check failed (warnings alone: 0).
    """
    try:
        checks = doctor(fix=fix, environ=environ, transport=transport, now=now)
    except ConfigError as exc:
        print(f"promobot doctor: {exc}", file=sys.stderr)
        return 1
    status = worst(checks)
    if as_json:
        print(json.dumps({"status": status, "checks": [check.as_dict() for check in checks]}, indent=2))
    else:
        print(render(checks))
    return 1 if status is Status.FAIL else 0
