"""The doctor: the page token, the webhook subscription (and --fix), the Graph API version's end of life, and
the store's figures (last webhook, outbox, flush lag); the same checks behind `/healthz?deep=1`."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from bot.__main__ import main
from bot.database import Database
from bot.doctor import doctor_command
from bot.facts import EventName
from bot.flow import Reply, ReplyKind
from bot.graph import GraphClient
from bot.graph_errors import RetryPolicy
from bot.health import Name, Status, health_figures, local_health, store_checks
from bot.page_checks import NEEDED_FIELDS, version_check
from tests.support.bot_process import BotProcess
from tests.support.builders import customer_event
from tests.support.fake_graph import FakeGraph
from tests.support.home import make_home

PAGE_TOKEN = "EAAG-page-token-never-shown-0123"
HEALTH_TOKEN = "health-token-never-shown-4567"
PAGE_ID = "100000000000001"
APP_ID = "700000000000001"
TODAY = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class Platform:
    """The Graph API of one page, as httpx.MockTransport: /me, /app and the page's subscribed_apps."""

    def __init__(self, *, subscriptions: dict[str, list[str]] | None = None, token_error: int | None = None):
        self.subscriptions = subscriptions if subscriptions is not None else {}
        self.token_error = token_error  # answer every call with error 190 and this subcode
        self.requests: list[httpx.Request] = []
        self.app_refused = False  # GET /app answers an error: the token's app is not known
        self.profile: dict = {}  # the page's Messenger Profile (persistent_menu, get_started)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.token_error is not None:
            error = {"message": "Error validating access token", "type": "OAuthException", "code": 190}
            return httpx.Response(400, json={"error": {**error, "error_subcode": self.token_error}})
        path = request.url.path.removeprefix("/v25.0/")
        if request.method == "GET" and path == "me":
            return httpx.Response(200, json={"id": PAGE_ID, "name": "Corner Bakery"})
        if request.method == "GET" and path == "app" and self.app_refused:
            return httpx.Response(400, json={"error": {"message": "Unsupported get request", "code": 100}})
        if request.method == "GET" and path == "app":
            return httpx.Response(200, json={"id": APP_ID, "name": "promobot"})
        if path == "me/messenger_profile" and request.method == "GET":
            fields = request.url.params["fields"].split(",")
            return httpx.Response(
                200, json={"data": [{k: v for k, v in self.profile.items() if k in fields}]}
            )
        if path == "me/messenger_profile" and request.method == "POST":
            self.profile.update(json.loads(request.content))  # each field given replaces the page's
            return httpx.Response(200, json={"result": "success"})
        if path == f"{PAGE_ID}/subscribed_apps" and request.method == "GET":
            apps = [{"id": app, "subscribed_fields": fields} for app, fields in self.subscriptions.items()]
            return httpx.Response(200, json={"data": apps})
        if path == f"{PAGE_ID}/subscribed_apps" and request.method == "POST":
            self.subscriptions[APP_ID] = json.loads(request.content)["subscribed_fields"].split(",")
            return httpx.Response(200, json={"success": True})
        return httpx.Response(400, json={"error": {"message": "Unknown path", "code": 100}})

    def posts(self) -> list[dict]:
        """The bodies of the POSTs to the page's subscribed_apps."""
        return [
            json.loads(request.content)
            for request in self.requests
            if request.method == "POST" and request.url.path.endswith("/subscribed_apps")
        ]


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    """A bot's environment with a store that exists (empty), a Graph API that gives up fast."""
    data = tmp_path / "data"
    Database.open(None, data).close()
    return {
        "PROMOBOT_PAGE_TOKEN": PAGE_TOKEN,
        "PROMOBOT_GRAPH_URL": "https://graph.test",
        "PROMOBOT_GRAPH_TIMEOUT": "0.1",
        "PROMOBOT_DATA": str(data),
    }


def lines_of(output: str, name: str) -> str:
    """The lines of the doctor's output about the check `name`: its line and its fix."""
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if f"  {name}: " in line)
    following = lines[at + 1] if at + 1 < len(lines) and lines[at + 1].startswith("      fix:") else ""
    return f"{lines[at]}\n{following}"


# -- the page token ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subcode", "why"),
    [(460, "password"), (463, "expired"), (467, "no longer valid")],
    ids=["password-changed", "expired", "invalid"],
)
def test_a_refused_token_says_reconnect_the_page_with_the_steps_and_exits_1(
    environ, capsys, caplog, subcode, why
):
    caplog.set_level(logging.DEBUG)
    platform = Platform(subscriptions={APP_ID: list(NEEDED_FIELDS)}, token_error=subcode)

    status = doctor_command(environ=environ, transport=platform.transport(), now=TODAY)

    assert status == 1
    output = capsys.readouterr()
    token = lines_of(output.out, Name.PAGE)
    assert token.startswith("FAIL  page token:")
    assert f"code 190, subcode {subcode}" in token
    assert why in token
    for step in ("reconnect the page", "Meta app dashboard", "Messenger", "PROMOBOT_PAGE_TOKEN", "restart"):
        assert step in token, step
    assert "WARN  webhooks: not checked" in output.out
    assert PAGE_TOKEN not in output.out + output.err + caplog.text


def test_a_valid_token_names_the_page(environ, capsys):
    platform = Platform(subscriptions={APP_ID: list(NEEDED_FIELDS)})

    assert doctor_command(environ=environ, transport=platform.transport(), now=TODAY) == 0

    assert (
        "OK    page token: valid, for the page 'Corner Bakery' (100000000000001)" in capsys.readouterr().out
    )
    (me, *_) = platform.requests
    assert (me.url.path, me.url.params["fields"]) == ("/v25.0/me", "id,name")


def test_without_a_page_token_the_token_check_fails_and_the_rest_still_run(environ, capsys):
    del environ["PROMOBOT_PAGE_TOKEN"]

    assert doctor_command(environ=environ, now=TODAY) == 1

    output = capsys.readouterr().out
    assert "FAIL  page token: PROMOBOT_PAGE_TOKEN is not set" in output
    assert "graph api version: v25.0" in output
    assert "outbox: no reply owed" in output


# -- the webhook subscription --------------------------------------------------------------------------------


def test_an_app_not_subscribed_fails_and_fix_subscribes_exactly_the_needed_fields(environ, capsys):
    platform = Platform(subscriptions={})

    assert doctor_command(environ=environ, transport=platform.transport(), now=TODAY) == 1
    webhooks = lines_of(capsys.readouterr().out, Name.WEBHOOKS)
    assert webhooks.startswith("FAIL  webhooks: the app is not subscribed")
    assert "doctor --fix" in webhooks
    assert platform.posts() == []  # no change without --fix

    assert doctor_command(fix=True, environ=environ, transport=platform.transport(), now=TODAY) == 0
    assert platform.posts() == [{"subscribed_fields": ",".join(NEEDED_FIELDS)}]
    (post,) = [r for r in platform.requests if r.method == "POST" and r.url.path.endswith("/subscribed_apps")]
    assert post.url.path == f"/v25.0/{PAGE_ID}/subscribed_apps"
    assert "OK    webhooks: subscribed now (--fix)" in capsys.readouterr().out


def test_missing_fields_fail_and_fix_adds_them_keeping_the_others(environ, capsys):
    platform = Platform(subscriptions={APP_ID: ["messages", "feed", "messaging_postbacks"]})

    assert doctor_command(environ=environ, transport=platform.transport(), now=TODAY) == 1
    lacking = [field for field in NEEDED_FIELDS if field not in ("messages", "messaging_postbacks")]
    assert f"FAIL  webhooks: the app's subscription lacks {', '.join(lacking)}" in capsys.readouterr().out

    assert doctor_command(fix=True, environ=environ, transport=platform.transport(), now=TODAY) == 0
    assert platform.posts() == [
        {"subscribed_fields": ",".join(["messages", "feed", "messaging_postbacks", *lacking])}
    ]


def test_another_apps_subscription_is_not_the_bots(environ, capsys):
    platform = Platform(subscriptions={"700000000000999": list(NEEDED_FIELDS)})

    assert doctor_command(environ=environ, transport=platform.transport(), now=TODAY) == 1

    assert "FAIL  webhooks: the app is not subscribed" in capsys.readouterr().out


@pytest.mark.parametrize(("apps", "status"), [(1, "OK  "), (2, "FAIL")])
def test_without_the_apps_id_the_pages_only_subscribed_app_is_taken_for_the_bots(
    environ, capsys, apps, status
):
    platform = Platform(subscriptions={f"70000000000000{n}": list(NEEDED_FIELDS) for n in range(apps)})
    platform.app_refused = True

    doctor_command(environ=environ, transport=platform.transport(), now=TODAY)

    assert f"{status}  webhooks:" in capsys.readouterr().out


def test_the_json_output_is_one_object_with_every_check(environ, capsys):
    platform = Platform(subscriptions={APP_ID: list(NEEDED_FIELDS)})

    assert doctor_command(as_json=True, environ=environ, transport=platform.transport(), now=TODAY) == 0

    report = json.loads(capsys.readouterr().out)
    assert [check["name"] for check in report["checks"]] == [
        "page token",
        "webhooks",
        "app id",
        "persistent menu",
        "graph api version",
        "last webhook",
        "outbox",
        "flush",
    ]
    assert report["status"] == "warn"  # an empty store has seen no webhook yet


def test_a_store_that_is_not_there_fails_naming_where_it_looked(environ, capsys, tmp_path):
    environ["PROMOBOT_DATA"] = str(tmp_path / "elsewhere")
    platform = Platform(subscriptions={APP_ID: list(NEEDED_FIELDS)})

    assert doctor_command(environ=environ, transport=platform.transport(), now=TODAY) == 1

    assert (
        f"FAIL  store: no store at {tmp_path / 'elsewhere' / 'promobot.sqlite3'}" in capsys.readouterr().out
    )
    assert not (tmp_path / "elsewhere").exists()


# -- against the fake Graph server, through the command line -------------------------------------------------


def test_doctor_on_a_bad_token_and_on_a_missing_subscription_with_the_fake_graph_server(
    environ, capsys, monkeypatch
):
    with FakeGraph("the-token-the-page-has-now-01") as graph:
        for name, value in {
            **environ,
            "PROMOBOT_GRAPH_URL": graph.url,
            "PROMOBOT_GRAPH_TIMEOUT": "1",
        }.items():
            monkeypatch.setenv(name, value)
        assert main(["doctor"]) == 1  # the bot's token is not the page's
        bad = capsys.readouterr().out
        assert "FAIL  page token:" in bad
        assert "reconnect the page" in bad
        assert PAGE_TOKEN not in bad

        graph.token = PAGE_TOKEN
        assert main(["doctor"]) == 1
        assert "FAIL  webhooks: the app is not subscribed" in capsys.readouterr().out
        assert main(["doctor", "--fix"]) == 0
        assert graph.subscribing == [",".join(NEEDED_FIELDS)]
        assert main(["doctor"]) == 0
        assert "OK    webhooks: subscribed to" in capsys.readouterr().out


# -- the Graph API version's end of life ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "today", "status", "words"),
    [
        ("v25.0", date(2026, 11, 30), Status.OK, "available until 2028-07-29"),
        ("v21.0", date(2026, 10, 23), Status.OK, "available until 2027-01-21"),  # 90 days left
        ("v21.0", date(2026, 10, 24), Status.WARN, "expires on 2027-01-21, in 89 days"),
        ("v20.0", date(2026, 9, 23), Status.WARN, "in 1 days"),
        ("v20.0", date(2026, 9, 24), Status.FAIL, "expired on 2026-09-24"),
        ("v20.0", date(2026, 11, 30), Status.FAIL, "expired on 2026-09-24"),
        ("v12.0", date(2026, 11, 30), Status.FAIL, "v12.0 has expired"),
        ("v26.0", date(2026, 11, 30), Status.OK, "no end of life announced"),
        ("v99.0", date(2026, 11, 30), Status.WARN, "not a version promobot knows"),
    ],
)
def test_the_graph_api_version_warns_90_days_before_its_end_of_life_and_fails_after(
    version, today, status, words
):
    check = version_check(version, today)

    assert check.status is status
    assert words in check.message
    assert (check.fix is not None) == (status is not Status.OK)


def test_the_version_in_use_is_the_one_configured(environ, capsys):
    environ["PROMOBOT_GRAPH_VERSION"] = "v20.0"
    platform = Platform(subscriptions={APP_ID: list(NEEDED_FIELDS)})

    assert doctor_command(environ=environ, transport=platform.transport(), now=TODAY) == 1

    version = lines_of(capsys.readouterr().out, Name.GRAPH_VERSION)
    assert version.startswith("FAIL  graph api version: v20.0 expired on 2026-09-24")
    assert "PROMOBOT_GRAPH_VERSION" in version


# -- the store's figures -------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def record(database: Database, *events_and_replies: tuple) -> None:
    for events, replies in events_and_replies:
        asyncio.run(database.record(events, replies))


def test_the_store_tells_the_last_webhook_the_outbox_and_the_oldest_buffered_event(tmp_path):
    start = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    clock = Clock(start)
    database = Database.open(None, tmp_path, clock=clock)
    try:
        # A click the platform stamped 2 s before the bot recorded it, with its welcome owed.
        first = customer_event("2001", 0, start=start - timedelta(seconds=2))
        record(database, ([first], [Reply(ReplyKind.WELCOME, first)]))
        clock.now = start + timedelta(minutes=3)
        second = customer_event("2002", 0, start=clock.now - timedelta(seconds=1))
        third = customer_event("2003", 0, EventName.TEXT_RECEIVED, start=clock.now - timedelta(seconds=1))
        record(database, ([second, third], [Reply(ReplyKind.WELCOME, second)]))

        figures = health_figures(database)
    finally:
        database.close()

    assert figures.last_seen == start + timedelta(minutes=3)
    assert (figures.outbox_rows, figures.oldest_due) == (2, start)
    assert (figures.buffered_events, figures.oldest_buffered) == (3, start)  # recorded, not the platform's ts


def test_an_empty_store_has_no_figures(tmp_path):
    database = Database.open(None, tmp_path)
    try:
        figures = health_figures(database)
    finally:
        database.close()

    assert (figures.last_seen, figures.outbox_rows, figures.oldest_due) == (None, 0, None)
    assert (figures.buffered_events, figures.oldest_buffered) == (0, None)


@pytest.mark.parametrize(
    ("later", "outbox", "flush"),
    [
        (timedelta(seconds=30), (Status.OK, "2 replies owed, none overdue"), (Status.OK, "for 30 s")),
        (timedelta(minutes=5), (Status.WARN, "the oldest due 5 min ago"), (Status.WARN, "for 5 min")),
        (timedelta(minutes=11), (Status.FAIL, "the oldest due 11 min ago"), (Status.WARN, "for 11 min")),
        (timedelta(hours=2), (Status.FAIL, "the oldest due 2 h 0 min ago"), (Status.FAIL, "for 2 h 0 min")),
    ],
)
def test_an_overdue_outbox_and_a_flush_lag_warn_then_fail(tmp_path, later, outbox, flush):
    start = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    database = Database.open(None, tmp_path, clock=Clock(start))
    try:
        events = [customer_event(customer, 0, start=start - timedelta(seconds=1)) for customer in ("1", "2")]
        record(database, (events, [Reply(ReplyKind.WELCOME, event) for event in events]))
        checks = local_health(database, start + later, flush_seconds=60)
    finally:
        database.close()

    by_name = {check.name: check for check in checks}
    assert (by_name[Name.OUTBOX].status, by_name[Name.FLUSH].status) == (outbox[0], flush[0])
    assert outbox[1] in by_name[Name.OUTBOX].message
    assert by_name[Name.FLUSH].message == f"2 events waiting, the oldest {flush[1]}"
    assert by_name[Name.LAST_WEBHOOK].status is Status.OK


def test_a_page_quiet_for_a_day_warns_and_flushed_events_wait_no_more(tmp_path):
    start = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    database = Database.open(None, tmp_path, clock=Clock(start))
    try:
        record(database, ([customer_event("1", 0, start=start)], []))
        batch = database.next_batch(100)
        assert batch is not None
        database.flushed(batch.number)
        checks = {check.name: check for check in local_health(database, start + timedelta(hours=25))}
    finally:
        database.close()

    assert checks[Name.LAST_WEBHOOK].status is Status.WARN
    assert checks[Name.LAST_WEBHOOK].message == "25 h 0 min ago"
    assert checks[Name.FLUSH].message == "no event waiting"
    assert checks[Name.OUTBOX].message == "no reply owed"


def test_the_store_checks_of_an_empty_store_only_warn_that_no_webhook_came(tmp_path):
    database = Database.open(None, tmp_path)
    try:
        checks = local_health(database)
    finally:
        database.close()

    assert [(check.name, check.status) for check in checks] == [
        (Name.LAST_WEBHOOK, Status.WARN),
        (Name.OUTBOX, Status.OK),
        (Name.FLUSH, Status.OK),
    ]


def test_store_checks_are_a_pure_function_of_the_figures():
    from bot.health import HealthFigures

    now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    figures = HealthFigures(now - timedelta(minutes=1), 1, now + timedelta(seconds=20), 0, None)

    (webhook, outbox, flush) = store_checks(figures, now)

    assert (webhook.message, outbox.status, flush.status) == ("60 s ago", Status.OK, Status.OK)
    assert outbox.message == "1 reply owed, none overdue"  # leased: due when its lease ends


# -- the Graph client's public calls ------------------------------------------------------------------------


def test_the_graph_clients_get_and_post_go_through_its_retries():
    answers = iter(
        [httpx.Response(503, json={"error": {"code": 2}}), httpx.Response(200, json={"success": True})]
    )
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    async def post() -> object:
        graph = GraphClient(
            base_url="https://graph.test",
            version="v25.0",
            page_token=PAGE_TOKEN,
            retry=RetryPolicy(deadline_s=5, first_backoff_s=0.01),
            transport=httpx.MockTransport(handle),
        )
        try:
            return await graph.post("1/subscribed_apps", {"subscribed_fields": "messages"})
        finally:
            await graph.aclose()

    assert asyncio.run(post()) == {"success": True}
    assert [json.loads(request.content) for request in seen] == [{"subscribed_fields": "messages"}] * 2


# -- /healthz?deep=1 on the real server ----------------------------------------------------------------------


def test_deep_health_on_the_server_needs_the_token_and_shows_the_checks(tmp_path):
    data = make_home(tmp_path)
    with FakeGraph("test-page-token") as graph:
        graph.subscriptions[graph.app["id"]] = list(NEEDED_FIELDS)
        with BotProcess(data, graph.url, PROMOBOT_HEALTH_TOKEN=HEALTH_TOKEN) as bot:
            plain = bot.client.get("/healthz")
            refused = bot.client.get("/healthz?deep=1")
            wrong = bot.client.get("/healthz?deep=1", headers={"Authorization": "Bearer not-the-token-000"})
            deep = bot.client.get("/healthz?deep=1", headers={"Authorization": f"Bearer {HEALTH_TOKEN}"})
            assert bot.stop() == 0
        log = bot.log()

    assert plain.status_code == 200
    assert "checks" not in plain.json()
    assert (refused.status_code, wrong.status_code) == (401, 403)
    for answer in (refused, wrong):
        assert "campaign" not in answer.text
        assert "page" not in answer.text
    assert deep.status_code == 200
    checks = {check["name"]: check for check in deep.json()["checks"]}
    assert checks["page token"]["message"] == "valid, for the page 'Corner Bakery' (100000000000001)"
    assert checks["webhooks"]["status"] == "ok"
    assert HEALTH_TOKEN not in log
    assert "test-page-token" not in log


# -- the bot's app id and the persistent menu's opt-out item ------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "line"),
    [
        (None, "WARN  app id: PROMOBOT_APP_ID is not set"),
        (APP_ID, f"OK    app id: {APP_ID}: the bot tells its own messages from staff's"),
        ("123", f"FAIL  app id: PROMOBOT_APP_ID is 123, but the page token is the app {APP_ID}'s"),
    ],
    ids=["unset", "right", "wrong"],
)
def test_the_app_id_is_checked_against_the_tokens_app(environ, capsys, configured, line):
    if configured is not None:
        environ["PROMOBOT_APP_ID"] = configured
    platform = Platform(subscriptions={APP_ID: list(NEEDED_FIELDS)})

    status = doctor_command(environ=environ, transport=platform.transport(), now=TODAY)

    output = lines_of(capsys.readouterr().out, Name.APP_ID)
    assert output.startswith(line)
    assert status == (1 if configured == "123" else 0)
    if configured != APP_ID:
        assert f"set PROMOBOT_APP_ID={APP_ID}" in output


def test_fix_adds_the_opt_out_item_to_the_menu_keeping_the_pages_own_items(environ, capsys):
    hours = {"type": "web_url", "title": "Opening hours", "url": "https://bakery.example/hours"}
    platform = Platform(subscriptions={APP_ID: list(NEEDED_FIELDS)})
    platform.profile = {
        "get_started": {"payload": "HELLO"},
        "persistent_menu": [
            {"locale": "default", "composer_input_disabled": False, "call_to_actions": [hours]}
        ],
    }
    doctor_command(environ=environ, transport=platform.transport(), now=TODAY)
    assert "WARN  persistent menu: no 'Stop promotions' item" in capsys.readouterr().out

    doctor_command(fix=True, environ=environ, transport=platform.transport(), now=TODAY)

    assert "OK    persistent menu: offers 'Stop promotions' now (--fix)" in capsys.readouterr().out
    [menu] = platform.profile["persistent_menu"]
    assert menu["call_to_actions"] == [
        hours,
        {"type": "postback", "title": "Stop promotions", "payload": "PROMOBOT_OPT_OUT"},
    ]
    assert platform.profile["get_started"] == {"payload": "HELLO"}  # the page's own, kept

    doctor_command(fix=True, environ=environ, transport=platform.transport(), now=TODAY)
    assert "OK    persistent menu: offers 'Stop promotions'\n" in capsys.readouterr().out + "\n"
    assert len(platform.profile["persistent_menu"][0]["call_to_actions"]) == 2  # not added twice


def test_fix_sets_a_menu_and_get_started_button_on_a_page_with_neither(environ, capsys):
    platform = Platform(subscriptions={APP_ID: list(NEEDED_FIELDS)})

    doctor_command(fix=True, environ=environ, transport=platform.transport(), now=TODAY)

    assert platform.profile["get_started"] == {"payload": "GET_STARTED"}  # no menu shows without one
    assert platform.profile["persistent_menu"][0]["call_to_actions"] == [
        {"type": "postback", "title": "Stop promotions", "payload": "PROMOBOT_OPT_OUT"}
    ]
