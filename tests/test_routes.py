"""Every route of the bot in-process through httpx's ASGI transport: status, the headers that matter, body."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from bot.app import create_app
from bot.config import Mode, Settings
from bot.facts import ButtonStep
from bot.flow import button_payload
from tests.support import payloads
from tests.support.campaigns import SINGLE_USE
from tests.support.home import APP_SECRET, PAGE_TOKEN, VERIFY_TOKEN, make_home, single_use_home
from tests.support.in_process import post, running, settings_for
from tests.support.mock_graph import Platform, page_platform, platform
from tests.support.paths import MESSENGER_FIXTURES

pytestmark = pytest.mark.anyio

TEXT = "text/plain; charset=utf-8"
SIGNATURE = "X-Hub-Signature-256"
TOO_BIG = 4 * 1024 * 1024 + 1  # one byte past the webhook's limit
HEALTH_TOKEN = "health-token-of-the-monitor-0001"
DEEP = "/healthz?deep=1"
BEARER = {"Authorization": f"Bearer {HEALTH_TOKEN}"}
PIN = "482613"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_home(tmp_path)


@pytest.fixture
async def client(data: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the server-mode bot on the example campaign (one shared code); the platform accepts all."""
    app = create_app(settings_for(data), graph_transport=httpx.MockTransport(platform))
    async with running(app) as client:
        yield client


def assert_text(response: httpx.Response, status: int, body: str) -> None:
    assert (response.status_code, response.headers["content-type"], response.text) == (status, TEXT, body)


# -- POST /webhook -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture",
    [
        "botman-driver-facebook__postback.json",
        "botman-driver-facebook__message_text.json",
        "botman-driver-facebook__referral.json",
        "meta-docs__quick_reply.json",
        "yoctol-bottender__batched_2entries.json",
    ],
)
async def test_a_real_signed_notification_is_acknowledged_event_received(client, fixture):
    body = (MESSENGER_FIXTURES / fixture).read_bytes()

    answer = await post(client, body)

    assert_text(answer, 200, "EVENT_RECEIVED")
    assert answer.headers["content-length"] == "14"


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=" + "0" * 64, "sha1=" + "0" * 40, "sha256=zz", "the-app-secret"],
    ids=["missing", "empty", "wrong", "sha1", "not-hex", "not-a-signature"],
)
async def test_a_notification_without_a_valid_signature_is_403(client, signature):
    body = (MESSENGER_FIXTURES / "botman-driver-facebook__postback.json").read_bytes()
    headers = {} if signature is None else {SIGNATURE: signature}

    answer = await client.post("/webhook", content=body, headers=headers)

    assert_text(answer, 403, "bad or missing signature")


async def test_a_signature_of_other_bytes_or_another_secret_is_403(client):
    body = (MESSENGER_FIXTURES / "botman-driver-facebook__postback.json").read_bytes()

    other_bytes = await client.post("/webhook", content=body + b" ", headers={SIGNATURE: signature_of(body)})
    other_secret = await post(client, body, secret="another-app-secret")

    assert_text(other_bytes, 403, "bad or missing signature")
    assert_text(other_secret, 403, "bad or missing signature")


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
async def test_a_body_declared_past_the_limit_is_413_whatever_its_signature(client, signed):
    body = b" " * TOO_BIG
    headers = {SIGNATURE: signature_of(body)} if signed else {}

    answer = await client.post("/webhook", content=body, headers=headers)

    assert_text(answer, 413, "body too large")


@pytest.mark.parametrize("length", ["-1", "1e9", "abc"])
async def test_a_content_length_that_is_not_a_count_is_413(client, length):
    answer = await client.post(
        "/webhook", content=b"{}", headers={"Content-Length": length, SIGNATURE: signature_of(b"{}")}
    )

    assert_text(answer, 413, "body too large")


async def test_a_streamed_body_with_no_length_is_counted_and_refused_past_the_limit(client):
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(TOO_BIG // 65536 + 1):
            yield b" " * 65536

    answer = await client.post("/webhook", content=chunks(), headers={SIGNATURE: "sha256=00"})

    assert "content-length" not in answer.request.headers  # sent chunked: nothing declared
    assert_text(answer, 413, "body too large")


async def test_a_streamed_body_within_the_limit_is_read_whole(client):
    body = payloads.envelope(payloads.read("9002", payloads.now_ms()))

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 40):
            yield body[start : start + 40]

    answer = await client.post("/webhook", content=pieces(), headers={SIGNATURE: signature_of(body)})

    assert_text(answer, 200, "EVENT_RECEIVED")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "malformed notification: "),
        (b"", "malformed notification: "),
        (b"[]", "malformed notification: "),
        (b'{"object": "page"}', "malformed notification: "),
        (b'{"object": "page", "entry": {"id": "1"}}', "malformed notification: "),
        ('{"object": "pag\u00e9"}'.encode("latin-1"), "malformed notification: "),
    ],
    ids=["not-json", "empty", "a-list", "no-entry", "entry-not-a-list", "not-utf8"],
)
async def test_a_signed_body_that_is_not_a_notification_is_400(client, body, reason):
    answer = await post(client, body)

    assert (answer.status_code, answer.headers["content-type"]) == (400, TEXT)
    assert answer.text.startswith(reason)


@pytest.mark.parametrize("path", ["/webhook", "/data-deletion"])
async def test_a_content_length_of_thousands_of_digits_is_413(client, path):
    # uvicorn's parser refuses such a header; an app behind another server (Mangum on Lambda) reads it itself.
    answer = await client.post(path, content=b"{}", headers={"Content-Length": "1" * 5_000})

    assert_text(answer, 413, "body too large")


async def test_a_client_that_goes_away_midway_is_answered_400(data):
    app = create_app(settings_for(data), graph_transport=httpx.MockTransport(platform))
    sent: list[dict] = []
    messages = iter(
        [{"type": "http.request", "body": b'{"obj', "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> dict:
        return next(messages)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhook",
        "raw_path": b"/webhook",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"promobot.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("promobot.test", 80),
    }
    async with app.router.lifespan_context(app):
        await app({**scope, "app": app, "state": {}}, receive, send)

    start, body = sent
    assert start["status"] == 400
    assert (b"content-type", TEXT.encode()) in start["headers"]
    assert body["body"] == b"client went away"


async def test_a_notification_the_store_cannot_take_is_503_with_retry_after(tmp_path, postgres_database_url):
    data = make_home(tmp_path)
    app = create_app(
        settings_for(data, PROMOBOT_DATABASE_URL=postgres_database_url, PROMOBOT_HEALTH_TOKEN=HEALTH_TOKEN),
        graph_transport=httpx.MockTransport(platform),
    )
    body = payloads.envelope(payloads.postback("9102", "GET_STARTED"))
    async with running(app) as client:
        with refusing_connections(postgres_database_url):
            refused = await post(client, body)
            health = await client.get("/healthz")
            deep = await client.get(DEEP, headers=BEARER)
        again = await post(client, body)

    assert_text(refused, 503, "events could not be recorded")
    assert refused.headers["retry-after"] == "5"
    assert (health.status_code, health.headers["content-type"]) == (503, "application/json")
    assert health.json()["status"] == "unavailable"
    # Where the database runs is for the monitor with the token, not for anyone who asks.
    database_name, host = postgres_database_url.rsplit("/", 1)[1], urlsplit(postgres_database_url).hostname
    assert database_name not in health.text
    assert host not in health.text
    assert deep.status_code == 503
    assert database_name in deep.json()["store"]
    assert_text(again, 200, "EVENT_RECEIVED")  # the platform's redelivery, once the store is back


async def test_refused_notifications_record_nothing_and_send_nothing(data):
    platform = Platform()
    app = create_app(settings_for(data), graph_transport=httpx.MockTransport(platform))
    body = payloads.envelope(payloads.postback("9001", "GET_STARTED"))
    control = payloads.envelope(payloads.postback("9009", "GET_STARTED"))

    async def oversized() -> AsyncIterator[bytes]:
        for _ in range(TOO_BIG // 65536 + 1):
            yield body + b" " * (65536 - len(body))

    async with running(app) as client:
        refused = [
            await client.post("/webhook", content=body),
            await client.post("/webhook", content=body, headers={SIGNATURE: "sha256=" + "0" * 64}),
            await client.post("/webhook", content=body + b" ", headers={SIGNATURE: signature_of(body)}),
            await post(client, body.replace(b'"entry"', b'"entries"')),
            await post(client, body + b" " * TOO_BIG),
            await client.post("/webhook", content=oversized(), headers={SIGNATURE: signature_of(body)}),
        ]
        assert (await post(client, control)).status_code == 200
        await platform.wait_for("9009", 1)  # the sender at work: had any of those been taken, it would be too
        deadline = time.monotonic() + 10
        while (await client.get("/healthz")).json()["replies_owed"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)

    assert [answer.status_code for answer in refused] == [403, 403, 403, 400, 413, 413]
    assert list(platform.messages) == ["9009"]


# -- GET /webhook: the subscription handshake ----------------------------------------------------------------


async def test_the_handshake_echoes_the_challenge_as_plain_text(client):
    answer = await client.get(
        "/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"},
    )

    assert_text(answer, 200, "1158201444")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN + "x", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {},
    ],
    ids=["wrong-token", "longer-token", "empty-token", "wrong-mode", "no-mode", "nothing"],
)
async def test_the_handshake_with_a_wrong_token_or_mode_is_403_and_echoes_nothing(client, params):
    answer = await client.get("/webhook", params=params)

    assert_text(answer, 403, "verification failed")


# -- GET /healthz --------------------------------------------------------------------------------------------


async def test_shallow_health_is_json_with_the_campaign_and_the_replies_owed(client):
    answer = await client.get("/healthz")

    assert (answer.status_code, answer.headers["content-type"]) == (200, "application/json")
    assert answer.json() == {"status": "ok", "campaign": "spring-sale", "replies_owed": 0}


async def test_a_failing_flush_is_named_in_plain_health_and_described_only_with_the_token(data):
    (data / "events").write_text("a file where the partitions' folder should be")
    app = create_app(
        settings_for(data, PROMOBOT_HEALTH_TOKEN=HEALTH_TOKEN, PROMOBOT_FLUSH_SECONDS="0.1"),
        graph_transport=httpx.MockTransport(platform),
    )
    async with running(app) as client:
        assert_text(
            await post(client, payloads.envelope(payloads.postback("9103", "GET_STARTED"))),
            200,
            "EVENT_RECEIVED",
        )
        deadline = time.monotonic() + 10
        while "flush_error" not in (plain := (await client.get("/healthz")).json()):
            assert time.monotonic() < deadline, plain
            await asyncio.sleep(0.05)
        deep = (await client.get(DEEP, headers=BEARER)).json()

    assert plain["status"] == "ok"
    assert str(data) not in json.dumps(plain)
    assert str(data) in deep["flush_error"]


async def test_plain_health_is_unchanged_by_a_health_token(data):
    app = create_app(
        settings_for(data, PROMOBOT_HEALTH_TOKEN=HEALTH_TOKEN), graph_transport=httpx.MockTransport(platform)
    )
    async with running(app) as client:
        plain = await client.get("/healthz")
        with_token = await client.get("/healthz", headers=BEARER)
    assert plain.status_code == with_token.status_code == 200
    assert plain.json() == with_token.json() == {"status": "ok", "campaign": "spring-sale", "replies_owed": 0}


@pytest.mark.parametrize(
    ("configured", "headers", "status", "body"),
    [
        (HEALTH_TOKEN, {}, 401, "the health token is needed"),
        (HEALTH_TOKEN, {"Authorization": "Bearer "}, 401, "the health token is needed"),
        (HEALTH_TOKEN, {"Authorization": f"Basic {HEALTH_TOKEN}"}, 401, "the health token is needed"),
        (HEALTH_TOKEN, {"Authorization": "Bearer health-token-of-the-monitor-0002"}, 403, "forbidden"),
        (HEALTH_TOKEN, {"Authorization": f"Bearer {HEALTH_TOKEN}x"}, 403, "forbidden"),
        (None, BEARER, 403, "forbidden"),  # no token configured: the deep checks are off
    ],
    ids=["no-header", "empty", "not-bearer", "wrong", "longer", "unconfigured"],
)
async def test_deep_health_without_the_right_token_is_refused_and_tells_nothing(
    data, configured, headers, status, body
):
    env = {"PROMOBOT_HEALTH_TOKEN": configured} if configured else {}
    requests: list[httpx.Request] = []
    app = create_app(settings_for(data, **env), graph_transport=page_platform(requests))
    async with running(app) as client:
        answer = await client.get(DEEP, headers=headers)

    assert_text(answer, status, body)
    assert answer.headers.get("www-authenticate") == ("Bearer" if status == 401 else None)
    assert requests == []  # not a single Graph API call for a caller without the token


async def test_deep_health_with_the_token_shows_the_checks_and_asks_the_graph_api_once_a_minute(data, caplog):
    caplog.set_level(logging.DEBUG)
    requests: list[httpx.Request] = []
    app = create_app(
        settings_for(data, PROMOBOT_HEALTH_TOKEN=HEALTH_TOKEN), graph_transport=page_platform(requests)
    )
    async with running(app) as client:
        first = await client.get(DEEP, headers=BEARER)
        second = await client.get(DEEP, headers=BEARER)
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"] == "application/json"
    health = first.json()
    assert health["campaign"] == "spring-sale"
    assert health["status"] == "warn"  # no webhook yet
    assert [(check["name"], check["status"]) for check in health["checks"]] == [
        ("page token", "ok"),
        ("webhooks", "ok"),
        ("graph api version", "ok"),
        ("last webhook", "warn"),
        ("outbox", "ok"),
        ("flush", "ok"),
    ]
    assert second.json()["checks"] == health["checks"]
    assert [request.url.path for request in requests].count("/v25.0/me") == 1  # the second was cached
    assert HEALTH_TOKEN not in caplog.text
    assert PAGE_TOKEN not in caplog.text


async def test_deep_health_answers_503_when_the_page_token_is_refused(data):
    requests: list[httpx.Request] = []
    app = create_app(
        settings_for(data, PROMOBOT_HEALTH_TOKEN=HEALTH_TOKEN),
        graph_transport=page_platform(requests, token_error=True),
    )
    async with running(app) as client:
        answer = await client.get(DEEP, headers=BEARER)
    assert (answer.status_code, answer.headers["content-type"]) == (503, "application/json")
    assert answer.json()["status"] == "fail"
    (token, *_) = answer.json()["checks"]
    assert token["status"] == "fail"
    assert "reconnect the page" in token["fix"]
    assert PAGE_TOKEN not in answer.text


# -- GET/HEAD /media/<name> ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_the_campaigns_image_is_served_cacheable(client, data, method):
    answer = await client.request(method, "/media/thanks.png")

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["cache-control"] == "public, max-age=3600"
    assert answer.headers["content-length"] == str((data / "thanks.png").stat().st_size)
    assert answer.content == ((data / "thanks.png").read_bytes() if method == "GET" else b"")


@pytest.mark.parametrize(
    "path",
    [
        "/media/campaign.toml",
        "/media/promobot.sqlite3",
        "/media/thanks.PNG",
        "/media/",
        "/media/%2e%2e/campaign.toml",
        "/media/..%2fcampaign.toml",
        "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/media//etc/passwd",
    ],
)
async def test_anything_but_the_campaigns_images_is_404(client, data, path):
    (data / "promobot.sqlite3").touch()  # beside the image, as the store is by default

    answer = await client.get(httpx.URL("http://promobot.test" + path))

    assert_text(answer, 404, "not found")
    assert "cache-control" not in answer.headers


# -- POST /data-deletion and GET /privacy/deletion/<code> ----------------------------------------------------


def signed_request(user_id: str, secret: str = APP_SECRET) -> str:
    """Meta's signed_request, written out from its documentation: base64url (no padding) of an HMAC-SHA256 of
    the encoded payload, a dot, base64url of the JSON payload."""
    payload = {"algorithm": "HMAC-SHA256", "expires": 0, "issued_at": int(time.time()), "user_id": user_id}
    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(secret.encode(), encoded, hashlib.sha256).digest())
    return f"{signature.rstrip(b'=').decode()}.{encoded.decode()}"


async def test_a_signed_deletion_request_is_answered_its_status_url_and_code(data):
    app = create_app(
        settings_for(data, PROMOBOT_PUBLIC_URL="https://shop.example"),
        graph_transport=httpx.MockTransport(platform),
    )
    async with running(app) as client:
        answer = await client.post(
            "/data-deletion", data={"signed_request": signed_request("10158000000000001")}
        )
        code = answer.json()["confirmation_code"]
        status = await client.get(f"/privacy/deletion/{code}")
        unknown = await client.get("/privacy/deletion/NOSUCHCODE0000000")

    assert (answer.status_code, answer.headers["content-type"]) == (200, "application/json")
    assert answer.json() == {
        "url": f"https://shop.example/privacy/deletion/{code}",
        "confirmation_code": code,
    }
    assert re.fullmatch(r"[A-Za-z0-9]{16,}", code)
    assert (status.status_code, status.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert code in status.text
    assert (unknown.status_code, unknown.headers["content-type"]) == (404, "text/html; charset=utf-8")
    assert "No deletion request has this confirmation code." in unknown.text


@pytest.mark.parametrize(
    "form",
    [
        {"signed_request": signed_request("10158000000000001", secret="not-the-app-secret")},
        {"signed_request": signed_request("10158000000000001").split(".")[1]},
        {"signed_request": "%%%.%%%"},
        {"signed_request": ""},
        {},
    ],
    ids=["other-secret", "no-signature", "not-base64", "empty", "missing"],
)
async def test_a_deletion_request_that_is_not_signed_by_meta_is_400(client, form):
    answer = await client.post("/data-deletion", data=form)

    assert (answer.status_code, answer.headers["content-type"]) == (400, TEXT)
    assert "signed_request" in answer.text


async def test_a_deletion_request_past_64_kb_is_413(client):
    form = {"signed_request": signed_request("10158000000000001"), "padding": "x" * 64 * 1024}

    answer = await client.post("/data-deletion", data=form)

    assert_text(answer, 413, "body too large")


# -- the Messenger simulator: local mode only ----------------------------------------------------------------


@pytest.fixture
async def local(data: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the local-mode bot, with its simulator and stand-in Graph API."""
    settings = Settings.from_env(
        {"PROMOBOT_DATA": str(data), "PROMOBOT_CAMPAIGN": str(data / "campaign.toml")}, Mode.LOCAL
    )
    async with running(create_app(settings)) as client:
        yield client


async def test_the_local_bot_serves_the_simulator_page_uncached_with_a_secret_of_its_own(local):
    page = await local.get("/")

    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert page.headers["cache-control"] == "no-store"
    config = json.loads(
        re.search(r'<script id="config" type="application/json">(.*?)</script>', page.text)[1]
    )
    assert config["secret"] not in ("", APP_SECRET)
    body = payloads.envelope(payloads.postback("5001", "GET_STARTED"))
    assert (await post(local, body)).status_code == 403  # signed with the environment's secret: forged
    assert_text(await post(local, body, secret=config["secret"]), 200, "EVENT_RECEIVED")


async def test_the_simulator_answers_what_the_stand_in_received_as_json(local):
    customer = await local.post("/simulator/customers", json={"id": 5002, "first_name": "Ada"})
    messages = await local.get("/simulator/messages", params={"customer": "5002"})
    bad_after = await local.get("/simulator/messages", params={"customer": "5002", "after": "x"})

    assert (customer.status_code, customer.headers["content-type"]) == (200, "application/json")
    assert customer.json() == {"id": "5002"}
    assert (messages.status_code, messages.headers["content-type"], messages.json()) == (
        200,
        "application/json",
        [],
    )
    assert_text(bad_after, 400, "`after` must be a number")


@pytest.mark.parametrize(
    ("content", "status", "body"),
    [
        (b"{not json", 400, 'expected {"id": \u2026, "first_name": \u2026}'),
        (b'{"first_name": "Ada"}', 400, 'expected {"id": \u2026, "first_name": \u2026}'),
        (b'{"id": true}', 400, "`id` must be a string or a number"),
        (b'{"id": ""}', 400, "`id` must be a string or a number"),
        (b'{"id": "1", "first_name": "' + b"A" * 5000 + b'"}', 413, "body too large"),
    ],
    ids=["not-json", "no-id", "bool-id", "empty-id", "too-big"],
)
async def test_a_simulated_customer_that_is_not_one_is_refused(local, content, status, body):
    answer = await local.post("/simulator/customers", content=content)

    assert_text(answer, status, body)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/simulator/messages?customer=1"), ("POST", "/simulator/customers")],
)
async def test_a_server_has_no_simulator(client, method, path):
    answer = await client.request(method, path, json={"id": "1"} if method == "POST" else None)

    assert_text(answer, 404, "Not Found")
    assert APP_SECRET not in answer.text


# -- the till: with single-use codes only --------------------------------------------------------------------


@pytest.fixture
async def till(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Platform]]:
    """A client of the bot of a single-use campaign with a staff PIN on https, and its Graph API."""
    data = single_use_home(tmp_path, ["SPR-AAAA2222"])
    platform = Platform()
    settings = settings_for(data, PROMOBOT_STAFF_PIN=PIN, PROMOBOT_PUBLIC_URL="https://bot.example")
    app = create_app(settings, graph_transport=httpx.MockTransport(platform))
    async with running(app, base_url="https://bot.example") as client:
        yield client, platform


def assert_till_page(answer: httpx.Response, status: int) -> None:
    assert (answer.status_code, answer.headers["content-type"]) == (status, "text/html; charset=utf-8")
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"


async def test_the_till_asks_for_the_pin_on_an_uncached_page_with_a_strict_csrf_cookie(till):
    client, _ = till

    answer = await client.get("/redeem")

    assert_till_page(answer, 200)
    assert "Staff PIN" in answer.text
    [cookie] = answer.headers.get_list("set-cookie")
    name, _, attributes = cookie.partition(";")
    assert name.startswith("promobot_csrf=")
    assert {a.strip().lower() for a in attributes.split(";")} >= {
        "httponly",
        "path=/redeem",
        "samesite=strict",
        "secure",
    }


async def test_a_till_form_without_its_csrf_token_is_403_and_a_wrong_pin_403(till):
    client, _ = till
    page = await client.get("/redeem")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)[1]

    forged = await client.post("/redeem/pin", data={"pin": PIN, "next": "/redeem"})
    wrong = await client.post("/redeem/pin", data={"pin": "0000", "csrf": token, "next": "/redeem"})
    right = await client.post("/redeem/pin", data={"pin": PIN, "csrf": token, "next": "/redeem?code=X"})

    assert_till_page(forged, 403)
    assert "This form has expired" in forged.text
    assert_till_page(wrong, 403)
    assert "Wrong PIN." in wrong.text
    assert (right.status_code, right.headers["location"], right.headers["cache-control"]) == (
        303,
        "/redeem?code=X",
        "no-store",
    )
    assert "promobot_staff=" in right.headers["set-cookie"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_codes_qr_image_is_private_and_a_made_up_ones_404(till, method):
    client, platform = till
    reveal = button_payload(SINGLE_USE, ButtonStep.REVEAL)
    body = payloads.envelope(payloads.postback("9201", reveal, mid="m_9201"))
    assert (await post(client, body)).status_code == 200
    text, _qr = await platform.wait_for("9201", 2)
    link = text["text"].rsplit("https://bot.example", 1)[1]

    image = await client.request(method, f"{link}/qr.png")
    unknown = await client.request(method, "/redeem/not-a-token/qr.png")

    assert (image.status_code, image.headers["content-type"]) == (200, "image/png")
    assert image.headers["cache-control"] == "private, max-age=86400"
    assert (image.content[:8] == b"\x89PNG\r\n\x1a\n") == (method == "GET")
    assert (unknown.status_code, unknown.headers["content-type"]) == (404, TEXT)
    assert unknown.text == ("not found" if method == "GET" else "")


async def test_a_campaign_of_one_shared_code_has_no_till(client):
    for path in ("/redeem", "/redeem/some-token", "/redeem/some-token/qr.png"):
        assert_text(await client.get(path), 404, "Not Found")
    assert_text(await client.post("/redeem/pin", data={"pin": PIN}), 404, "Not Found")


# -- what no route takes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/healthz/x", "/privacy/deletion/", "/.env", "/admin"])
async def test_an_unknown_path_is_404(client, path):
    assert_text(await client.get(path), 404, "Not Found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/webhook", {"GET", "HEAD", "POST"}),
        ("DELETE", "/webhook", {"GET", "HEAD", "POST"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("POST", "/media/thanks.png", {"GET", "HEAD"}),
        ("GET", "/data-deletion", {"POST"}),
        ("POST", "/privacy/deletion/ABC", {"GET", "HEAD"}),
    ],
)
async def test_a_method_a_route_does_not_take_is_405_naming_those_it_does(client, method, path, allowed):
    answer = await client.request(method, path)

    assert_text(answer, 405, "Method Not Allowed")
    assert {name.strip() for name in answer.headers["allow"].split(",")} == allowed


# -- helpers -------------------------------------------------------------------------------------------------


def signature_of(body: bytes, secret: str = APP_SECRET) -> str:
    """The platform's signature of `body`, written out from its documentation."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@contextlib.contextmanager
def refusing_connections(url: str) -> Iterator[None]:
    """The PostgreSQL database at `url` refuses every connection, and drops those it had, while the block runs
    (a failover, a restart of the server)."""
    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
