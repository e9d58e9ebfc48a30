"""The AWS Lambda handler, invoked with real API Gateway event shapes: events are stored before it returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.aws_lambda import build_handler
from tests.support import payloads
from tests.support.bot_process import stored_events
from tests.support.home import APP_SECRET, VERIFY_TOKEN, environment, make_home
from tests.support.lambda_events import http_api_get, http_api_post, rest_api_get

pytestmark = pytest.mark.e2e


class Context:
    function_name = "promobot"
    aws_request_id = "test-request"


@pytest.fixture
def handler(tmp_path: Path, graph, monkeypatch):
    data = make_home(tmp_path)
    for name, value in environment(
        data,
        PROMOBOT_GRAPH_URL=graph.url,
        PROMOBOT_DATABASE_URL=f"sqlite:///{tmp_path / 'lambda-tmp' / 'promobot.sqlite3'}",
    ).items():
        monkeypatch.setenv(name, value)
    return build_handler(), data


@pytest.mark.parametrize("encode", [True, False], ids=["base64-body", "plain-body"])
def test_a_click_is_answered_and_stored_before_the_invocation_returns(handler, graph, encode):
    app, data = handler
    body = payloads.envelope(payloads.postback("4001", "GET_STARTED", ref="flyer"))

    response = app(http_api_post(body, encode=encode), Context())

    assert response["statusCode"] == 200
    assert response["body"] == "EVENT_RECEIVED"
    assert len(graph.messages_to("4001")) == 1  # replied inside the invocation
    # Nothing runs after a Lambda answers: the events are already Parquet in the store.
    assert [e["event"] for e in stored_events(data)] == ["conversation_started", "welcome_sent"]


def test_a_bad_signature_is_refused(handler):
    app, data = handler
    event = http_api_post(payloads.envelope(payloads.postback("4002", "GET_STARTED")), encode=False)
    event["headers"]["x-hub-signature-256"] = "sha256=" + "0" * 64

    assert app(event, Context())["statusCode"] == 403
    assert stored_events(data) == []


def test_the_handshake_through_a_rest_api(handler):
    app, _ = handler
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "31415"}
    event = rest_api_get("/webhook", query)

    response = app(event, Context())

    assert (response["statusCode"], response["body"]) == (200, "31415")


def test_successive_invocations_each_store_their_events(handler, graph):
    app, data = handler

    for customer in ("4003", "4004"):
        body = payloads.envelope(payloads.postback(customer, "GET_STARTED"))
        assert app(http_api_post(body, encode=False), Context())["statusCode"] == 200

    events = stored_events(data)
    assert sorted({e["customer_id"] for e in events}) == ["4003", "4004"]
    assert len(events) == 4


def test_the_function_has_no_simulator(handler):
    app, _ = handler
    for path in ("/", "/simulator/messages"):
        response = app(http_api_get(path), Context())

        assert response["statusCode"] == 404, path
        assert APP_SECRET not in response["body"]


def test_a_function_without_its_page_token_refuses_to_start_naming_it(handler, monkeypatch):
    monkeypatch.delenv("PROMOBOT_PAGE_TOKEN")

    with pytest.raises(SystemExit, match=r"^promobot cannot start: PROMOBOT_PAGE_TOKEN not set: lambda mode"):
        build_handler()
