"""The AWS Lambda handler, invoked with real API Gateway event shapes: events are stored before it returns."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest

from bot.aws_lambda import build_handler
from bot.messenger import sign
from tests import payloads
from tests.bot_process import APP_SECRET, PAGE_TOKEN, VERIFY_TOKEN, make_home, stored_events
from tests.conftest import TEST_DATA
from tests.fake_graph import FakeGraph

pytestmark = pytest.mark.e2e

HTTP_API = json.loads((TEST_DATA / "aws" / "apigw-http-v2-event.json").read_text())
REST_API = json.loads((TEST_DATA / "aws" / "apigw-rest-v1-event.json").read_text())


class Context:
    function_name = "promobot"
    aws_request_id = "test-request"


@pytest.fixture
def graph():
    with FakeGraph(PAGE_TOKEN) as fake:
        yield fake


@pytest.fixture
def handler(tmp_path: Path, graph, monkeypatch):
    data = make_home(tmp_path)
    for name, value in {
        "PROMOBOT_APP_SECRET": APP_SECRET,
        "PROMOBOT_VERIFY_TOKEN": VERIFY_TOKEN,
        "PROMOBOT_PAGE_TOKEN": PAGE_TOKEN,
        "PROMOBOT_GRAPH_URL": graph.url,
        "PROMOBOT_DATA": str(data),
        "PROMOBOT_CAMPAIGN": str(data / "campaign.toml"),
        "PROMOBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'lambda-tmp' / 'promobot.sqlite3'}",
    }.items():
        monkeypatch.setenv(name, value)
    return build_handler(), data


def http_api_post(body: bytes, *, encode: bool) -> dict:
    event = copy.deepcopy(HTTP_API)
    event["routeKey"] = event["requestContext"]["routeKey"] = "POST /webhook"
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/webhook"
    event["requestContext"]["http"]["method"] = "POST"
    event["headers"].update(
        {
            "content-type": "application/json",
            "content-length": str(len(body)),
            "x-hub-signature-256": sign(APP_SECRET, body),
            "user-agent": "facebookexternalua",
        }
    )
    event["body"] = base64.b64encode(body).decode() if encode else body.decode()
    event["isBase64Encoded"] = encode
    return event


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
    event = copy.deepcopy(REST_API)
    event["httpMethod"] = event["requestContext"]["httpMethod"] = "GET"
    event["path"] = "/webhook"
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "31415"}
    event["queryStringParameters"] = query
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    event["body"] = None

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
        event = copy.deepcopy(HTTP_API)
        event["routeKey"] = event["requestContext"]["routeKey"] = f"GET {path}"
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
        event["requestContext"]["http"]["method"] = "GET"
        event["body"] = None

        response = app(event, Context())

        assert response["statusCode"] == 404, path
        assert APP_SECRET not in response["body"]


def test_a_function_without_its_page_token_refuses_to_start_naming_it(handler, monkeypatch):
    monkeypatch.delenv("PROMOBOT_PAGE_TOKEN")

    with pytest.raises(SystemExit, match=r"^promobot cannot start: PROMOBOT_PAGE_TOKEN not set: lambda mode"):
        build_handler()
