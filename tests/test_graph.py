"""The Graph API client over a stand-in transport: retries, deadlines, permanent errors, profiles."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from urllib.parse import parse_qs, parse_qsl

import httpx
import pytest

from bot.graph import GraphClient
from bot.graph_batch import BatchEntry, Encoded, form_quote, read_batch
from bot.graph_errors import PermanentSendError, RetryPolicy, TransientSendError, Usage, usage_of
from tests.support.mock_graph import FAST, graph_over
from tests.support.paths import MESSENGER_FIXTURES

pytestmark = pytest.mark.anyio

OK = json.loads(
    (MESSENGER_FIXTURES / "send" / "fbsamples-messenger-platform-samples__RESPONSE_send_ok.json").read_text()
)
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

    return graph_over(handle, policy=policy)


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
        graph_error(32),
        graph_error(1),
        graph_error(1200),
        graph_error(80006),
        graph_error(80001),
        graph_error(100, transient=True),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
    ],
    ids=[
        "500",
        "503-code-2",
        "429",
        "613",
        "4",
        "17",
        "32",
        "1",
        "1200-temporary",
        "80006-messenger-buc",
        "80001-pages-buc",
        "is_transient",
        "timeout",
        "connect",
    ],
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
        policy=RetryPolicy(
            deadline_s=0.3, first_backoff_s=0.02, max_backoff_s=0.05, first_hold_s=0.02, max_hold_s=0.05
        ),
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


async def test_a_customer_id_cannot_bend_the_profile_lookups_path():
    requests: list[httpx.Request] = []
    graph = client(httpx.Response(200, json={"first_name": "Ada"}), seen=requests)

    await graph.first_name("../me/messages?debug=all#")

    [request] = requests
    assert request.url.raw_path.decode().split("?")[0] == "/v25.0/..%2Fme%2Fmessages%3Fdebug%3Dall%23"
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


# -- batch requests ----------------------------------------------------------------------------------------


def batching_client(answer, *, seen: list) -> GraphClient:
    """A client whose batch requests are answered call by call: `answer(entry, attempt)` gives the result
    (a dict: {"code", "body"}, or None for a call the platform did not get to). A call that goes alone (a
    retry whose jittered backoff left it out of the others' batch) is answered by `answer` as well."""
    attempts: dict[str, int] = {}

    def answered(entry: BatchEntry) -> dict | None:
        key = entry.body["recipient"]["id"] if entry.method == "POST" else entry.path
        attempts[key] = attempts.get(key, 0) + 1
        return answer(entry, attempts[key])

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path != "/v25.0/":
            path = request.url.path.removeprefix("/v25.0/")
            body = json.loads(request.content) if request.method == "POST" else {}
            params = {
                k: v for k, v in request.url.params.items() if k not in ("access_token", "appsecret_proof")
            }
            result = answered(BatchEntry(request.method, path, params, body))
            if result is None:
                return httpx.Response(503, json={"error": {"code": 2, "message": "try again"}})
            return httpx.Response(result["code"], content=result["body"])
        entries = read_batch(dict(parse_qsl(request.content.decode())))
        return httpx.Response(200, json=[answered(entry) for entry in entries])

    return graph_over(handle)


def sent(entry) -> dict:
    return {
        "code": 200,
        "body": json.dumps({"recipient_id": entry.body["recipient"]["id"], "message_id": "m_x"}),
    }


def body_to(customer: str) -> dict:
    return {
        "recipient": {"id": customer},
        "messaging_type": "RESPONSE",
        "message": {"text": "Hi & bye = 100% + café ☕"},
    }


async def test_calls_made_together_go_out_as_one_batch_request():
    requests: list[httpx.Request] = []

    def answer(entry, attempt):
        if entry.method == "GET":
            return {"code": 200, "body": json.dumps({"first_name": "Ada", "id": entry.path})}
        customer = entry.body["recipient"]["id"]
        return {"code": 200, "body": json.dumps({"recipient_id": customer, "message_id": f"m_{customer}"})}

    graph = batching_client(answer, seen=requests)
    results = await asyncio.gather(
        graph.send("1", body_to("1")), graph.send("2", body_to("2")), graph.first_name("3")
    )

    assert results == ["m_1", "m_2", "Ada"]
    [request] = requests
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.url.params["access_token"] == "TOKEN"
    assert len(request.url.params["appsecret_proof"]) == 64
    form = dict(parse_qsl(request.content.decode()))
    assert form["include_headers"] == "false"
    entries = read_batch(form)
    assert [(e.method, e.path, e.params) for e in entries] == [
        ("POST", "me/messages", {}),
        ("POST", "me/messages", {}),
        ("GET", "3", {"fields": "first_name"}),
    ]
    assert entries[0].body == body_to("1")  # every field, JSON values and form escapes intact


async def test_an_encoded_message_is_sent_as_its_plain_value_alone_and_in_a_batch():
    message = {"text": 'Hi Zoë & co: 100% = "yes"+more', "quick_replies": [{"title": "a b"}]}
    encoded = Encoded(message)
    requests: list[httpx.Request] = []

    def answer(entry, attempt):
        customer = entry.body["recipient"]["id"]
        return {"code": 200, "body": json.dumps({"recipient_id": customer, "message_id": f"m_{customer}"})}

    def with_encoded(customer: str) -> dict:
        return {"recipient": {"id": customer}, "messaging_type": "RESPONSE", "message": encoded}

    alone = client(httpx.Response(200, json=OK), seen=requests)
    await alone.send("42", with_encoded("42"))
    assert json.loads(requests.pop().content) == {**with_encoded("42"), "message": message}

    graph = batching_client(answer, seen=requests)
    await asyncio.gather(*(graph.send(c, with_encoded(c)) for c in "12"))
    [request] = requests
    entries = read_batch(dict(parse_qsl(request.content.decode())))
    assert [e.body for e in entries] == [{**with_encoded(c), "message": message} for c in "12"]


async def test_each_call_of_a_batch_gets_its_own_outcome():
    requests: list[httpx.Request] = []
    first_answers = {
        "1": lambda entry: sent(entry),
        "2": lambda entry: {
            "code": 400,
            "body": json.dumps({"error": {"code": 551, "error_subcode": 1545041}}),
        },
        "3": lambda entry: None,  # the platform did not get to it: tried again
        "4": lambda entry: {
            "code": 400,
            "body": json.dumps({"error": {"code": 613, "message": "slow down"}}),
        },
    }

    def answer(entry, attempt):
        customer = entry.body["recipient"]["id"]
        return first_answers[customer](entry) if attempt == 1 else sent(entry)

    graph = batching_client(answer, seen=requests)
    results = await asyncio.gather(*(graph.send(c, body_to(c)) for c in "1234"), return_exceptions=True)

    assert results[0] == "m_x"
    assert isinstance(results[1], PermanentSendError)
    assert (results[1].code, results[1].subcode) == (551, 1545041)
    assert results[2:] == ["m_x", "m_x"]
    assert sorted(customer for request in requests[1:] for customer in recipients(request)) == ["3", "4"]


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, text="oops"),
        graph_error(613),
        httpx.Response(200, json={}),
    ],
    ids=["500", "613", "not-a-batch-answer"],
)
async def test_a_failed_batch_request_fails_each_call_and_they_are_retried(failure):
    requests: list[httpx.Request] = []
    answers = [failure]

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if answers:
            answer = answers.pop()
            if isinstance(answer, Exception):
                raise answer
            return answer
        if request.url.path != "/v25.0/":  # a retry that came after the others had gone: alone
            return httpx.Response(200, json={"recipient_id": recipients(request)[0], "message_id": "m_x"})
        entries = read_batch(dict(parse_qsl(request.content.decode())))
        return httpx.Response(200, json=[sent(entry) for entry in entries])

    graph = graph_over(handle)
    results = await asyncio.gather(*(graph.send(c, body_to(c)) for c in "123"))

    assert results == ["m_x"] * 3
    failed, *retries = requests
    assert recipients(failed) == ["1", "2", "3"]  # one batch request
    # Each call retried once (the retries' jitter may leave one out of the others' batch).
    assert sorted(customer for request in retries for customer in recipients(request)) == ["1", "2", "3"]


def recipients(request: httpx.Request) -> list[str]:
    """The customers a Send API request, alone or batched, is for."""
    if request.url.path != "/v25.0/":
        return [json.loads(request.content)["recipient"]["id"]]
    return [entry.body["recipient"]["id"] for entry in read_batch(dict(parse_qsl(request.content.decode())))]


async def test_after_a_batch_request_times_out_each_of_its_calls_goes_alone():
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/v25.0/":
            raise httpx.ReadTimeout("one of the calls is slow")
        customer = json.loads(request.content)["recipient"]["id"]
        if customer == "2":
            raise httpx.ReadTimeout("still slow")
        return httpx.Response(200, json={"recipient_id": customer, "message_id": f"m_{customer}"})

    graph = graph_over(handle)
    results = await asyncio.gather(*(graph.send(c, body_to(c)) for c in "123"), return_exceptions=True)

    assert results[0] == "m_1"
    assert results[2] == "m_3"
    assert isinstance(results[1], TransientSendError)
    assert "timed out" in results[1].reason
    batches = [r for r in requests if r.url.path == "/v25.0/"]
    alone = {json.loads(r.content)["recipient"]["id"] for r in requests if r.url.path != "/v25.0/"}
    assert len(batches) == 1  # the slow call held up its batch-mates once, not at every retry
    assert alone == {"1", "2", "3"}


async def test_a_bad_token_for_a_batch_fails_each_call_at_once():
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return graph_error(190, 463)

    graph = graph_over(handle)
    results = await asyncio.gather(*(graph.send(c, body_to(c)) for c in "123"), return_exceptions=True)

    assert all(isinstance(r, PermanentSendError) and r.code == 190 for r in results)
    assert len(requests) == 1


async def test_no_more_than_fifty_calls_go_in_one_batch():
    requests: list[httpx.Request] = []
    graph = batching_client(lambda entry, attempt: sent(entry), seen=requests)

    results = await asyncio.gather(*(graph.send(str(c), body_to(str(c))) for c in range(120)))

    assert results == ["m_x"] * 120
    sizes = sorted(len(read_batch(dict(parse_qsl(r.content.decode())))) for r in requests)
    assert sizes == [20, 50, 50]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain",
        'a JSON {"text":"50% off & free + more = #1"}',
        "Café, crème brûlée 🍰",
        "a line\nand a tab\t",
        "~!@$^*()[]{};:'\"<>,/?|\\`",
    ],
)
def test_form_fields_read_back_exactly_as_sent(text):
    form = f"batch={form_quote(text)}&include_headers=false"
    assert parse_qs(form, keep_blank_values=True) == {"batch": [text], "include_headers": ["false"]}


@pytest.mark.parametrize("limit", [613, 80006])
async def test_a_rate_limit_holds_every_call_of_the_client_for_a_while(limit):
    # Each call backed off on its own: the other calls kept knocking at a page the platform had asked to
    # slow down, and the call itself came back after a few milliseconds of jitter.
    hold_s = 0.5
    policy = RetryPolicy(deadline_s=5.0, first_backoff_s=0.01, max_backoff_s=0.02, first_hold_s=hold_s)
    sent: list[tuple[float, str]] = []
    limited = [True]
    refused = asyncio.Event()

    def handle(request: httpx.Request) -> httpx.Response:
        now = asyncio.get_running_loop().time()
        batched = request.headers["content-type"].startswith("application/x-www-form-urlencoded")
        bodies = [e.body for e in read_batch(dict(parse_qsl(request.content.decode())))] if batched else []
        for body in bodies or [json.loads(request.content)]:
            sent.append((now, body["recipient"]["id"]))
        if limited.pop() if limited else False:
            refused.set()
            return graph_error(limit)  # the whole request refused, batch or not
        if batched:
            return httpx.Response(200, json=[{"code": 200, "body": json.dumps(OK)} for _ in bodies])
        return httpx.Response(200, json=OK)

    graph = graph_over(handle, policy=policy)
    first = asyncio.create_task(graph.send("1", {**BODY, "recipient": {"id": "1"}}))
    await refused.wait()
    await asyncio.sleep(0.05)  # another customer's reply, a moment later
    second = asyncio.create_task(graph.send("2", {**BODY, "recipient": {"id": "2"}}))
    await asyncio.gather(first, second)

    refused_at = sent[0][0]
    assert sorted(customer for _, customer in sent[1:]) == ["1", "2"]
    assert all(at - refused_at >= hold_s * 0.95 for at, _ in sent[1:])  # nothing during the hold


async def test_the_hold_doubles_while_the_platform_keeps_asking_and_ends_with_a_call_through():
    policy = RetryPolicy(deadline_s=5.0, first_backoff_s=0.01, max_backoff_s=0.02, first_hold_s=0.2)
    requests: list[httpx.Request] = []
    times: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        times.append(asyncio.get_running_loop().time())
        return graph_error(613) if len(requests) in (1, 2, 4) else httpx.Response(200, json=OK)

    graph = graph_over(handle, policy=policy)
    await graph.send("42", BODY)  # refused, held 0.2 s, refused, held 0.4 s, sent
    await graph.send("42", BODY)  # refused: held 0.2 s again, since a call got through meanwhile

    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(requests) == 5
    assert gaps[0] >= 0.19, gaps
    assert gaps[1] >= 0.38, gaps  # doubled
    assert 0.19 <= gaps[3] < 0.75, gaps  # the first hold again, not 0.8 s


# -- the platform's usage headers -------------------------------------------------------------------------

PAGE_ID = "112130216863063"


def business_use_case(minutes: float = 0, percent: float = 10, kind: str = "messenger") -> dict[str, str]:
    """An X-Business-Use-Case-Usage header as the platform sends it to page tokens: per business object id, a
    list of {type, call_count, total_cputime, total_time, estimated_time_to_regain_access (minutes)}."""
    usage = {
        "type": kind,
        "call_count": percent,
        "total_cputime": 5,
        "total_time": 5,
        "estimated_time_to_regain_access": minutes,
    }
    return {"X-Business-Use-Case-Usage": json.dumps({PAGE_ID: [usage]})}


def app_usage(percent: float) -> dict[str, str]:
    return {"X-App-Usage": json.dumps({"call_count": 3, "total_cputime": percent, "total_time": 7})}


def with_headers(response: httpx.Response, headers: dict[str, str]) -> httpx.Response:
    return httpx.Response(response.status_code, headers=headers, content=response.content)


def test_the_usage_headers_read_as_the_platform_means_them():
    headers = httpx.Headers(
        {
            **app_usage(41),
            "X-Page-Usage": json.dumps({"call_count": 12, "total_cputime": 2, "total_time": 3}),
            "X-Business-Use-Case-Usage": json.dumps(
                {
                    PAGE_ID: [
                        {
                            "type": "pages",
                            "call_count": 97,
                            "total_cputime": 1,
                            "total_time": 1,
                            "estimated_time_to_regain_access": 0,
                        },
                        {
                            "type": "messenger",
                            "call_count": 100,
                            "total_cputime": 20,
                            "total_time": 30,
                            "estimated_time_to_regain_access": 19,
                        },
                    ]
                }
            ),
            "X-Ad-Account-Usage": json.dumps({"acc_id_util_pct": 100, "reset_time_duration": 3600}),
        }
    )

    assert usage_of(headers) == Usage(percent=100, regain_s=19 * 60)
    assert usage_of(httpx.Headers(app_usage(41))) == Usage(percent=41, regain_s=0)
    assert usage_of(httpx.Headers(business_use_case(minutes=100_000))) == Usage(10, regain_s=24 * 3600)
    assert usage_of(httpx.Headers({"X-Ad-Account-Usage": '{"acc_id_util_pct": 100}'})) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not json",
        "[1, 2]",
        '"100"',
        "null",
        '{"call_count": "100"}',
        '{"call_count": true, "estimated_time_to_regain_access": true}',
        '{"call_count": -5, "estimated_time_to_regain_access": -3}',
        '{"call_count": NaN, "estimated_time_to_regain_access": Infinity}',
        '{"call_count": 1e400, "estimated_time_to_regain_access": 1' + "0" * 400 + "}",
        '{"call_count": null, "estimated_time_to_regain_access": {}}',
        json.dumps({PAGE_ID: [None, 3, "x", [], {"estimated_time_to_regain_access": "19"}]}),
        json.dumps({PAGE_ID: {"call_count": 100}}),
        "[" * 100_000 + "]" * 100_000,
        '{"call_count": 100',
    ],
)
async def test_a_malformed_usage_header_changes_nothing(value):
    headers = {name: value for name in ("X-App-Usage", "X-Page-Usage", "X-Business-Use-Case-Usage")}
    requests: list[httpx.Request] = []
    graph = client(with_headers(httpx.Response(200, json=OK), headers), seen=requests)

    assert usage_of(httpx.Headers(headers)) is None
    async with asyncio.timeout(1):
        assert await graph.send("42", BODY) == OK["message_id"]
        assert await graph.send("42", BODY) == OK["message_id"]
        assert (
            await graph.get("me", deadline_s=0.2) == OK
        )  # no hold, whatever a value could have been read as


async def held(graph: GraphClient, deadline_s: float) -> bool:
    """Whether a call of `deadline_s` is held (still waiting, a moment later) rather than failed at once: a
    hold that outlasts a call's deadline fails it at once, without a request."""
    call = asyncio.ensure_future(graph.get("me", deadline_s=deadline_s))
    done, _ = await asyncio.wait([call], timeout=0.1)
    if not done:
        call.cancel()
        return True
    with pytest.raises(TransientSendError, match="asks to wait past its deadline"):
        call.result()
    return False


@pytest.mark.parametrize(
    "answer",
    [graph_error(80006), graph_error(613), httpx.Response(200, json=OK)],
    ids=["refused-messenger-buc", "refused-613", "sent"],
)
async def test_a_time_the_platform_states_holds_every_call_that_long(answer):
    requests: list[httpx.Request] = []
    graph = client(with_headers(answer, business_use_case(minutes=19, percent=100)), seen=requests)

    async with asyncio.timeout(2):
        await asyncio.gather(graph.send("42", BODY), return_exceptions=True)
        assert not await held(graph, deadline_s=18 * 60)  # no use waiting: fails at once, as FAST's 0.05 s
        assert await held(
            graph, deadline_s=20 * 60
        )  # max_hold_s does not cut the platform's 19 minutes short

    assert len(requests) == 1  # the refused call's own retry was held too


async def test_a_stated_hold_past_a_day_is_cut_to_a_day():
    graph = client(with_headers(graph_error(80006), business_use_case(minutes=7 * 24 * 60)))

    async with asyncio.timeout(2):
        with pytest.raises(TransientSendError, match="80006"):
            await graph.send("42", BODY)
        assert not await held(graph, deadline_s=23 * 3600)
        assert await held(graph, deadline_s=25 * 3600)


async def test_calls_waiting_when_a_stated_hold_begins_fail_at_once_when_it_outlasts_their_deadline():
    arrived, answer = asyncio.Event(), asyncio.Event()
    requests: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        arrived.set()
        await answer.wait()
        return with_headers(graph_error(80006), business_use_case(minutes=19, percent=100))

    graph = GraphClient(
        base_url="https://graph.test",
        version="v25.0",
        page_token="TOKEN",
        retry=FAST,
        transport=httpx.MockTransport(handle),
        max_connections=1,
    )
    async with asyncio.timeout(1):
        first = asyncio.ensure_future(graph.send("1", BODY))
        await arrived.wait()
        second = asyncio.ensure_future(graph.send("2", BODY))  # waits for the one connection
        await asyncio.sleep(0)  # it joins the queue
        answer.set()
        results = await asyncio.gather(first, second, return_exceptions=True)

    assert all(isinstance(r, TransientSendError) for r in results), results
    assert len(requests) == 1


async def test_answers_to_requests_under_way_when_a_stated_hold_began_do_not_lengthen_it(caplog):
    answers = iter([business_use_case(minutes=2, percent=100), business_use_case(minutes=30, percent=100)])
    one, both = asyncio.Event(), asyncio.Event()
    requests: list[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        (both if len(requests) == 2 else one).set()
        await both.wait()
        return with_headers(graph_error(80006), next(answers))

    graph = graph_over(handle)
    with caplog.at_level(logging.DEBUG):
        async with asyncio.timeout(2):
            first = asyncio.ensure_future(graph.send("1", BODY))
            await one.wait()
            second = asyncio.ensure_future(graph.send("2", BODY))  # its own request, the first under way
            await asyncio.gather(first, second, return_exceptions=True)
            assert await held(graph, deadline_s=3 * 60)  # 2 minutes, not 30

    assert len(requests) == 2
    holds = [r for r in caplog.records if r.levelno >= logging.WARNING and "refuses calls" in r.getMessage()]
    assert len(holds) == 1  # logged once
    assert "TOKEN" not in caplog.text
    assert PAGE_ID not in caplog.text


async def test_near_a_rate_limit_requests_go_one_at_a_time_until_the_usage_drops(caplog):
    # Left at full speed, every waiting call would go out at once, in up to max_connections requests, and
    # tip the page over its limit before the next reading came back.
    pace_s = 0.1
    policy = RetryPolicy(deadline_s=5.0, first_backoff_s=0.01, max_backoff_s=0.02, first_hold_s=pace_s)
    assert policy.slow_at_usage_pct == 90
    readings = [95, 95, 95, 40]  # one per request; then 40
    requests: list[tuple[float, int]] = []  # (when, how many calls)

    def handle(request: httpx.Request) -> httpx.Response:
        batched = request.url.path == "/v25.0/"
        entries = read_batch(dict(parse_qsl(request.content.decode()))) if batched else []
        requests.append((asyncio.get_running_loop().time(), len(entries) or 1))
        headers = app_usage(readings.pop(0) if readings else 40)
        return httpx.Response(200, headers=headers, json=[sent(e) for e in entries] if batched else OK)

    graph = graph_over(handle, policy=policy)
    with caplog.at_level(logging.INFO):
        async with asyncio.timeout(5):
            await graph.send("0", body_to("0"))  # reads 95 %
            near = await asyncio.gather(*(graph.send(str(c), body_to(str(c))) for c in range(1, 121)))
            far = await asyncio.gather(*(graph.send(str(c), body_to(str(c))) for c in range(121, 241)))

    assert near == far == ["m_x"] * 120
    near_requests, far_requests = requests[1:4], requests[4:]
    assert [calls for _, calls in near_requests] == [50, 50, 20]
    starts = [at for at, _ in requests[:4]]
    assert all(later - earlier >= pace_s * 0.95 for earlier, later in itertools.pairwise(starts)), starts
    assert sorted(calls for _, calls in far_requests) == [20, 50, 50]
    assert max(at for at, _ in far_requests) - min(at for at, _ in far_requests) < pace_s / 2  # all at once
    slow = [r for r in caplog.records if "one request at a time" in r.getMessage()]
    assert len(slow) == 1
