"""The sender: replies leave the outbox once, in order, each outcome stored; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from bot import engines
from bot.config import SQLITE_FILE
from bot.database import Database
from bot.events import Event
from bot.facts import ButtonStep
from bot.flow import button_payload
from bot.graph_batch import read_batch
from bot.replies import Replier
from bot.sender import CLAIM_INTERVAL_S, Sender
from tests.support import payloads
from tests.support.campaigns import CAMPAIGN, act
from tests.support.mock_graph import graph_over

pytestmark = pytest.mark.anyio
LEASE = timedelta(seconds=30)


@pytest.fixture
async def database(database_url: str | None, tmp_path: Path) -> AsyncIterator[Database]:
    database = await asyncio.to_thread(Database.open, database_url, tmp_path)
    yield database
    await asyncio.to_thread(database.close)


class Platform:
    """The Send and User Profile APIs, alone or in batch requests: every message each customer got, in order.
    `refuse` gives the error a send gets instead of succeeding."""

    def __init__(self, refuse: dict | None = None) -> None:
        self.refuse = refuse
        self.order: list[str] = []  # "text" or "image", as sends arrived
        self.messages: dict[str, list[dict]] = collections.defaultdict(list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/me/messages"):
            status, answer = self._send(json.loads(request.content))
            return httpx.Response(status, json=answer)
        if request.method == "GET":
            return httpx.Response(200, json={"first_name": "Ada", "id": "1"})
        form = {key: values[0] for key, values in parse_qs(request.content.decode()).items()}
        answers = []
        for entry in read_batch(form):
            status, answer = (
                self._send(entry.body) if entry.method == "POST" else (200, {"first_name": "Ada", "id": "1"})
            )
            answers.append({"code": status, "body": json.dumps(answer)})
        return httpx.Response(200, json=answers)

    def _send(self, body: dict) -> tuple[int, dict]:
        customer = body["recipient"]["id"]
        self.messages[customer].append(body["message"])
        self.order.append(
            "image"
            if "attachment" in body["message"]
            and "url" in json.dumps(body["message"])
            and "template" not in json.dumps(body["message"])
            else "text"
        )
        if self.refuse is not None:
            return 400, self.refuse
        return 200, {"recipient_id": customer, "message_id": f"m_{customer}_{len(self.messages[customer])}"}


def sender_for(database: Database, platform: Platform, **options) -> Sender:
    replier = Replier(
        CAMPAIGN, graph_over(platform), image_url="https://shop.example/thanks.png", max_age_s=3600
    )
    return Sender(database, replier, lease=LEASE, **options)


async def click(database: Database, customer: str, payload: str = "GET_STARTED") -> list[Event]:
    events, replies = act(payloads.postback(customer, payload))
    return await database.record(events, replies)


async def outbox_empty(database: Database, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while await asyncio.to_thread(database.owed):  # noqa: ASYNC110 - another thread's work
            await asyncio.sleep(0.02)


def buffered(database: Database) -> list[Event]:
    """Events waiting for the flusher, in the order they were stored."""
    return [event for batch in [database.next_batch(100_000)] if batch for event in batch.events]


async def test_a_recorded_click_is_answered_and_its_outcome_stored_with_the_click(database):
    platform = Platform()
    sender = sender_for(database, platform)
    sender.start()
    await click(database, "7001")
    sender.wake()
    await outbox_empty(database)
    await sender.close(5)

    assert [m["attachment"]["payload"]["text"][:8] for m in platform.messages["7001"]] == ["Hi Ada! "]
    stored = await asyncio.to_thread(buffered, database)
    assert [(e.customer_id, str(e.event)) for e in stored] == [
        ("7001", "conversation_started"),
        ("7001", "welcome_sent"),
    ]
    assert stored[1].event_id == f"{stored[0].event_id}.w"


async def test_a_thank_you_image_goes_out_only_after_its_text(database):
    platform = Platform()
    sender = sender_for(database, platform)
    sender.start()
    await click(database, "7002", button_payload(CAMPAIGN, ButtonStep.NO))
    sender.wake()
    await outbox_empty(database)
    await sender.close(5)

    assert platform.order == ["text", "image"]
    stored = await asyncio.to_thread(buffered, database)
    assert [str(e.event) for e in stored] == ["declined", "thanks_sent", "thanks_sent"]


async def test_a_permanent_failure_is_stored_once_and_never_sent_again(database):
    platform = Platform(refuse={"error": {"code": 551, "message": "This person isn't available right now."}})
    sender = sender_for(database, platform)
    sender.start()
    await click(database, "7003")
    sender.wake()
    await outbox_empty(database)
    await asyncio.sleep(1.5)  # the sender's idle poll comes round once more: nothing is owed any more
    await sender.close(5)

    assert len(platform.messages["7003"]) == 1
    stored = await asyncio.to_thread(buffered, database)
    assert [str(e.event) for e in stored] == ["conversation_started", "send_failed"]
    assert json.loads(stored[1].detail)["code"] == 551


async def test_senders_of_two_instances_on_one_store_never_send_a_reply_twice(
    database, database_url, tmp_path
):
    other = await asyncio.to_thread(Database.open, database_url, tmp_path)
    platform = Platform()
    customers = [str(8000 + n) for n in range(300)]
    for customer in customers:
        await click(database, customer)
    senders = [sender_for(database, platform, limit=16), sender_for(other, platform, limit=16)]
    for sender in senders:
        sender.start()
    try:
        await outbox_empty(database, timeout_s=60)
    finally:
        for sender in senders:
            await sender.close(5)
        await asyncio.to_thread(other.close)

    assert {customer: len(platform.messages[customer]) for customer in customers} == dict.fromkeys(
        customers, 1
    )
    stored = await asyncio.to_thread(buffered, database)
    assert collections.Counter(str(e.event) for e in stored) == {
        "conversation_started": 300,
        "welcome_sent": 300,
    }


async def test_send_due_returns_once_every_outcome_is_stored(database):
    platform = Platform()
    sender = sender_for(database, platform)  # not started: as on AWS Lambda, sends only when told
    await click(database, "7004")
    await click(database, "7005")

    await sender.send_due()

    assert sorted(platform.messages) == ["7004", "7005"]
    stored = await asyncio.to_thread(buffered, database)
    assert sorted(str(e.event) for e in stored).count("welcome_sent") == 2
    assert not await asyncio.to_thread(database.due)
    await sender.close(1)


async def test_replies_claimed_by_a_run_that_died_are_owed_at_once_after_release(database):
    await click(database, "7006")
    claimed = await asyncio.to_thread(database.claim, 10, LEASE)  # a run that died holding the lease
    assert len(claimed) == 1
    assert not await asyncio.to_thread(database.due)

    assert await asyncio.to_thread(database.release_leases) == 1

    platform = Platform()
    await sender_for(database, platform).send_due()
    assert len(platform.messages["7006"]) == 1


async def test_a_sender_woken_as_it_is_closed_stops(database):
    for _ in range(20):
        sender = sender_for(database, Platform())
        sender.start()
        await asyncio.sleep(0.01)  # waiting for work
        sender.wake()  # work arrives as the server stops
        await asyncio.wait_for(sender.close(1), 5)


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(
            {"error": {"code": 2, "message": "Service temporarily unavailable", "is_transient": True}},
            id="the platform down",
        ),
        # Recorded as failed for good, every customer's reply was lost until the page was reconnected.
        pytest.param(
            {"error": {"code": 190, "error_subcode": 460, "message": "Error validating access token"}},
            id="the page token rejected",
        ),
    ],
)
async def test_a_reply_the_graph_api_cannot_take_for_now_is_sent_later_not_failed(
    database_url, tmp_path, refusal
):
    from tests.support.builders import Clock

    clock = Clock(datetime.now(UTC))
    database = await asyncio.to_thread(Database.open, database_url, tmp_path, clock=clock)
    platform = Platform(refuse=refusal)
    replier = Replier(CAMPAIGN, graph_over(platform), image_url="", max_age_s=3600, clock=clock)
    sender = Sender(database, replier, lease=LEASE)
    await click(database, "7010")

    await sender.send_due()  # the platform is down: retried within the deadline, then put off
    assert platform.messages["7010"]  # it was tried
    assert await asyncio.to_thread(database.owed) == 1
    assert not await asyncio.to_thread(database.due)  # not before its pause
    clock.advance(timedelta(seconds=11))
    platform.refuse = None  # the platform is back, or the page has a new token
    await sender.send_due()
    await sender.close(1)
    stored = await asyncio.to_thread(buffered, database)
    await asyncio.to_thread(database.close)

    assert [str(e.event) for e in stored] == ["conversation_started", "welcome_sent"]  # no send_failed


class CountedClaims(Database):
    """The store, counting its claims."""

    claims = 0

    def claim(self, limit: int, lease: timedelta) -> list:
        self.claims += 1
        return super().claim(limit, lease)


async def test_wake_ups_close_together_share_a_claim(database_url, tmp_path):
    # Each claim is a transaction (a commit) that webhooks' commits wait behind: a sender woken by every
    # webhook claims at most once per CLAIM_INTERVAL_S, and still answers every one.
    database = await asyncio.to_thread(CountedClaims.open, database_url, tmp_path)
    platform = Platform()
    sender = sender_for(database, platform)
    sender.start()
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        for n in range(40):
            await click(database, f"77{n:02d}")
            sender.wake()
        elapsed, claims = loop.time() - started, database.claims
        await outbox_empty(database)
    finally:
        await sender.close(5)
        await asyncio.to_thread(database.close)
    assert len(platform.messages) == 40
    assert claims <= elapsed / CLAIM_INTERVAL_S + 2, (claims, elapsed)


async def test_an_outcome_the_store_refused_is_stored_later_and_the_reply_not_sent_again(
    tmp_path, monkeypatch, caplog
):
    # The outcome of a sent reply was dropped when the store refused it: the reply stayed claimed, and went
    # out a second time when its lease ran out.
    monkeypatch.setattr(engines, "BUSY_TIMEOUT_S", 0.2)  # another process's lock: refused sooner
    database = await asyncio.to_thread(Database.open, None, tmp_path)
    other_process = sqlite3.connect(tmp_path / SQLITE_FILE, isolation_level=None)

    class LockedAsItSends(Platform):
        def _send(self, body: dict) -> tuple[int, dict]:
            other_process.execute("BEGIN IMMEDIATE")  # holds the write lock as the reply goes out
            return super()._send(body)

    platform = LockedAsItSends()
    sender = sender_for(database, platform)
    sender.start()
    try:
        await click(database, "7010")
        sender.wake()
        async with asyncio.timeout(10):
            while "could not store the outcome" not in caplog.text:  # noqa: ASYNC110 - the sender's work
                await asyncio.sleep(0.02)
        other_process.execute("COMMIT")
        await outbox_empty(database)
    finally:
        await sender.close(5)
        other_process.close()

    assert len(platform.messages["7010"]) == 1
    stored = await asyncio.to_thread(buffered, database)
    assert [str(e.event) for e in stored] == ["conversation_started", "welcome_sent"]
    await asyncio.to_thread(database.close)
