"""The Replier: bounded concurrency, expiry, shutdown, each reply's outcome recorded once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import httpx
import pytest

from bot.events import message_digest
from bot.facts import ButtonStep
from bot.flow import Reply, ReplyKind, button_payload
from bot.graph_batch import read_batch
from bot.pool import CodeState
from bot.redemption import redeemed_event
from bot.replies import Replier
from tests.support import payloads
from tests.support.campaigns import CAMPAIGN, SINGLE_USE, act, reveal
from tests.support.mock_graph import graph_over

pytestmark = pytest.mark.anyio


def coupon_replies(count: int) -> list[Reply]:
    """The coupon owed to each of `count` customers who clicked *Yes*."""
    replies = []
    for n in range(count):
        _, planned = act(payloads.postback(str(5000 + n), button_payload(CAMPAIGN, ButtonStep.YES)))
        replies += planned
    return replies


def recipients(request: httpx.Request) -> list[str]:
    """The customers a request (alone or a batch) sends to."""
    if request.url.path.endswith("/me/messages"):
        return [json.loads(request.content)["recipient"]["id"]]
    form = {key: values[0] for key, values in parse_qs(request.content.decode()).items()}
    return [entry.body["recipient"]["id"] for entry in read_batch(form)]


def sent_ok(request: httpx.Request) -> httpx.Response:
    answers = [{"recipient_id": r, "message_id": f"m_{r}"} for r in recipients(request)]
    if request.url.path.endswith("/me/messages"):
        return httpx.Response(200, json=answers[0])
    return httpx.Response(200, json=[{"code": 200, "body": json.dumps(a)} for a in answers])


async def test_no_more_than_concurrency_events_are_answered_at_once_and_the_rest_follow():
    gate = asyncio.Event()
    seen: list[str] = []

    async def platform(request: httpx.Request) -> httpx.Response:
        seen.extend(recipients(request))
        await gate.wait()
        return sent_ok(request)

    replier = Replier(CAMPAIGN, graph_over(platform), image_url="", max_age_s=1e9, concurrency=3)
    outcomes = []
    sending = asyncio.create_task(
        replier.send(coupon_replies(10), lambda reply, event: outcomes.append(event))
    )
    await asyncio.sleep(0.3)  # long enough for every call the Replier lets go to reach the platform
    assert len(set(seen)) == 3
    assert replier.pending == 10
    gate.set()
    await asyncio.wait_for(sending, 5)
    assert sorted(event.customer_id for event in outcomes) == [str(5000 + n) for n in range(10)]
    assert {event.event for event in outcomes} == {"coupon_sent"}
    # Each keeps the digest of the id the platform answered for it, alone or in a batch.
    assert {e.customer_id: e.message_digest for e in outcomes} == {
        e.customer_id: message_digest(f"m_{e.customer_id}") for e in outcomes
    }
    assert replier.pending == 0


async def test_a_backlog_of_expired_replies_is_recorded_failed_without_a_call():
    calls = []
    late = datetime.now(UTC) + timedelta(days=2)
    graph = graph_over(lambda request: calls.append(request) or sent_ok(request))
    replier = Replier(CAMPAIGN, graph, image_url="", max_age_s=60, clock=lambda: late)
    outcomes = []
    await replier.send(coupon_replies(3000), lambda reply, event: outcomes.append(event))
    assert len(outcomes) == 3000
    assert {event.event for event in outcomes} == {"send_failed"}
    assert "expired" in outcomes[0].detail
    assert calls == []


async def test_replies_still_unsent_when_the_drain_times_out_get_no_outcome():
    async def platform(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)  # the platform never answers

    replier = Replier(CAMPAIGN, graph_over(platform), image_url="", max_age_s=1e9)
    outcomes = []
    replier.start(coupon_replies(2), lambda reply, event: outcomes.append(event))
    waiting = asyncio.create_task(
        replier.send(coupon_replies(1), lambda reply, event: outcomes.append(event))
    )
    await replier.drain(0.2)
    await asyncio.wait_for(waiting, 1)  # whoever waited for its replies is let go
    await asyncio.sleep(0.1)
    assert outcomes == []  # owed: sent at the next start
    assert replier.pending == 0
    await replier.graph.aclose()


async def test_the_thanks_for_a_code_used_at_the_till_is_an_update_and_answers_are_responses():
    # The Send API's messaging types: RESPONSE answers a received message; UPDATE is sent proactively.
    bodies: list[dict] = []

    def platform(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return sent_ok(request)

    [revealed] = [event for event in reveal("7001")[0] if event.event == "coupon_revealed"]
    redeemed = redeemed_event(
        CodeState(
            code="ABC",
            campaign_id=revealed.campaign_id,
            customer_id="7001",
            page_id=revealed.page_id,
            variant=revealed.variant,
            token="t",
            expires_at=None,
            redeemed_at=None,
        ),
        datetime.now(UTC),
    )
    replier = Replier(SINGLE_USE, graph_over(platform), image_url="", max_age_s=1e9)
    outcomes = []

    await replier.send([Reply(ReplyKind.REDEEMED, redeemed)], lambda reply, event: outcomes.append(event))
    await replier.send(coupon_replies(1), lambda reply, event: outcomes.append(event))

    assert [body["messaging_type"] for body in bodies] == ["UPDATE", "RESPONSE"]
    assert [str(event.event) for event in outcomes] == ["thanks_sent", "coupon_sent"]
