"""The Graph API client over a stand-in transport: retries, deadlines, permanent errors, profiles."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from bot.graph import GraphClient, PermanentSendError, RetryPolicy, TransientSendError
from tests.conftest import MESSENGER_FIXTURES

pytestmark = pytest.mark.anyio

OK = json.loads(
    (MESSENGER_FIXTURES / "send" / "fbsamples-messenger-platform-samples__RESPONSE_send_ok.json").read_text()
)
FAST = RetryPolicy(deadline_s=2.0, first_backoff_s=0.01, max_backoff_s=0.05, request_timeout_s=0.5)
BODY = {"recipient": {"id": "42"}, "messaging_type": "RESPONSE", "message": {"text": "hi"}}


def graph_error(code: int, subcode: int | None = None, *, status: int = 400, transient: bool | None = None):
    error = {"message": f"(#{code}) something", "type": "OAuthException", "code": code, "fbtrace_id": "x"}
    if subcode is not None:
        error["error_subcode"] = subcode
    if transient is not None:
        error["is_transient"] = transient
    return httpx.Response(status, json={"error": error})


def client(*responses, policy: RetryPolicy = FAST, seen: list | None = None) -> GraphClient:
    """A client whose calls get `responses` in turn (an exception instance is raised instead)."""
    queue = list(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return GraphClient(
        base_url="https://graph.test",
        version="v25.0",
        page_token="TOKEN",
        app_secret="SECRET",
        retry=policy,
        transport=httpx.MockTransport(handle),
    )


async def test_a_send_returns_the_platforms_message_id():
    requests: list[httpx.Request] = []
    graph = client(httpx.Response(200, json=OK), seen=requests)

    message_id = await graph.send("42", BODY)

    assert message_id == OK["message_id"]
    [request] = requests
    assert request.url.path == "/v25.0/me/messages"
    assert json.loads(request.content) == BODY
    assert request.url.params["access_token"] == "TOKEN"
    assert len(request.url.params["appsecret_proof"]) == 64


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, text="oops"),
        httpx.Response(503, json={"error": {"code": 2, "message": "Service temporarily unavailable"}}),
        httpx.Response(429, text="slow down"),
        graph_error(613),
        graph_error(4),
        graph_error(17),
        graph_error(1),
        graph_error(100, transient=True),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
    ],
    ids=["500", "503-code-2", "429", "613", "4", "17", "1", "is_transient", "timeout", "connect"],
)
async def test_a_transient_failure_is_retried_until_it_succeeds(failure):
    requests: list[httpx.Request] = []
    graph = client(failure, failure, httpx.Response(200, json=OK), seen=requests)

    assert await graph.send("42", BODY) == OK["message_id"]
    assert len(requests) == 3


@pytest.mark.parametrize(
    ("failure", "code", "subcode"),
    [
        (graph_error(551, 1545041), 551, 1545041),
        (graph_error(10, 2018278), 10, 2018278),
        (graph_error(100, 2018001), 100, 2018001),
        (graph_error(200), 200, None),
        (graph_error(190, 460), 190, 460),
    ],
    ids=["551-unavailable", "10-outside-window", "100-no-user", "200-permission", "190-token"],
)
async def test_a_permanent_failure_is_not_retried(failure, code, subcode):
    requests: list[httpx.Request] = []
    graph = client(failure, seen=requests)

    with pytest.raises(PermanentSendError) as failed:
        await graph.send("42", BODY)

    assert (failed.value.code, failed.value.subcode) == (code, subcode)
    assert len(requests) == 1


async def test_retries_stop_at_the_deadline():
    requests: list[httpx.Request] = []
    graph = client(
        graph_error(613),
        seen=requests,
        policy=RetryPolicy(deadline_s=0.3, first_backoff_s=0.02, max_backoff_s=0.05),
    )

    with pytest.raises(TransientSendError) as failed:
        await graph.send("42", BODY)

    assert failed.value.code == 613
    assert "gave up after" in failed.value.reason
    assert 2 <= len(requests) < 40


async def test_a_bad_token_is_logged_loudly_once_without_the_token(caplog):
    graph = client(graph_error(190, 463))

    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            with pytest.raises(PermanentSendError):
                await graph.send("42", BODY)

    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(loud) == 1
    assert "PROMOBOT_PAGE_TOKEN" in loud[0].getMessage()
    assert "TOKEN" not in caplog.text.replace("PROMOBOT_PAGE_TOKEN", "")


async def test_the_first_name_is_asked_for_alone_and_cached():
    requests: list[httpx.Request] = []
    graph = client(httpx.Response(200, json={"first_name": "Ada", "id": "42"}), seen=requests)

    assert await graph.first_name("42") == "Ada"
    assert await graph.first_name("42") == "Ada"

    [request] = requests
    assert request.url.path == "/v25.0/42"
    assert request.url.params["fields"] == "first_name"


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={}),
        httpx.Response(200, json={"first_name": "  "}),
        graph_error(100, 33),
        httpx.Response(200, text="<html>"),
        httpx.ReadTimeout("slow"),
    ],
    ids=["empty", "blank", "error", "not-json", "timeout"],
)
async def test_a_missing_profile_gives_no_name(answer):
    graph = client(answer)

    assert await graph.first_name("42") is None
