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
from bot.flow import Reply, button_payload
from bot.graph_batch import read_batch
from bot.replies import Replier
from tests.support import payloads
from tests.support.campaigns import CAMPAIGN, act
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
