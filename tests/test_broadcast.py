"""The audience and the broadcast (issue 19): who may be sent a campaign now, and its welcome sent to them
at a steady pace, never twice, with the fake Graph API and the real store (SQLite, and PostgreSQL where it
matters). The `customers` table is filled directly, as the webhook's transaction keeps it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.audience import Reason
from bot.broadcast import Broadcaster, Pacer, Tally, TokenRejected
from bot.broadcast_command import audience_command, broadcast_command, sending_time
from bot.campaign import load_campaign
from bot.config import Mode, Settings
from bot.database import Database
from bot.events import Event
from bot.facts import EventName
from bot.flow import Reply, ReplyKind
from bot.graph_errors import RetryPolicy
from bot.recipients import audience_now, broadcast_results, create_broadcast
from bot.startup import build_sender
from tests.support.fake_graph import Answer, FakeGraph, graph_error
from tests.support.home import environment, make_home
from tests.support.paths import REPO
from tests.support.stores import opened

PAGE = "100000000000001"
CAMPAIGN_ID = "spring-sale"
GRAPH_TIMEOUT_S = 0.5
# Transient failures are tried again by the Graph client for a moment only: the broadcast's pause is what
# the tests watch.
QUICK_RETRY = RetryPolicy(deadline_s=0.3, first_backoff_s=0.2, max_backoff_s=0.2, request_timeout_s=2.0)
# The Graph client tries once (a retry's random pause, up to 1,000 s, fits in the 0.5 s deadline once in
# 2,000 sends): how many of a customer's scripted refusals one send takes is then known.
ONE_ATTEMPT = RetryPolicy(deadline_s=0.5, first_backoff_s=1000.0, max_backoff_s=1000.0, request_timeout_s=2.0)


def environ(data: Path, graph: FakeGraph, url: str | None) -> dict[str, str]:
    """The bot's variables, its store at `url` (None: the SQLite file in `data`)."""
    store = {} if url is None else {"PROMOBOT_DATABASE_URL": url}
    return environment(
        data, PROMOBOT_GRAPH_URL=graph.url, PROMOBOT_GRAPH_TIMEOUT=str(GRAPH_TIMEOUT_S), **store
    )


def put_customer(database: Database, customer: str, **times: datetime | None) -> None:
    """A row of `customers` as the webhook's transaction keeps it: times in µs since the epoch."""
    columns = ("last_action_at", "ad_referral_at", "opted_out_at", "handed_over_until", "unreachable_at")
    values = [None if times.get(c) is None else int(times[c].timestamp() * 1_000_000) for c in columns]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
    with contextlib.closing(database.engine.connect()) as connection:
        connection.execute(
            f"INSERT INTO customers (page_id, customer_id, {', '.join(columns)}) VALUES (?, ?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT (page_id, customer_id) DO UPDATE SET {updates}",
            (PAGE, customer, *values),
        )


def unreachable_at(database: Database, customer: str) -> object:
    with contextlib.closing(database.engine.connect()) as connection:
        rows = connection.execute(
            "SELECT unreachable_at FROM customers WHERE customer_id = ?", (customer,)
        ).fetchall()
    return rows[0][0]


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def settings_for(data: Path, graph: FakeGraph, url: str | None) -> Settings:
    return Settings.from_env(environ(data, graph, url), mode=Mode.SERVER)


def buffered(database: Database) -> list[Event]:
    return [event for batch in [database.next_batch(100_000)] if batch for event in batch.events]


async def run_broadcast(
    database: Database,
    graph: FakeGraph,
    data: Path,
    url: str | None,
    *,
    rate: int = 600,
    first_backoff_s: float = 1.0,
    report: Callable[[Tally], None] | None = None,
    retry: RetryPolicy = QUICK_RETRY,
) -> Tally:
    """One broadcast of the campaign, in this process, to its end."""
    settings = settings_for(data, graph, url)
    campaign = load_campaign(settings.campaign, data_dir=data)
    sender = build_sender(settings, campaign, database, retry=retry)
    broadcaster = Broadcaster(database, sender, campaign, first_backoff_s=first_backoff_s, report=report)
    number = await asyncio.to_thread(create_broadcast, database, campaign.id, rate)
    try:
        return await broadcaster.run(number, rate, asyncio.Event())
    finally:
        await sender.replier.graph.aclose()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_home(tmp_path)


@pytest.fixture
async def database(database_url: str | None, data: Path) -> AsyncIterator[Database]:
    database = await asyncio.to_thread(Database.open, database_url, data)
    yield database
    await asyncio.to_thread(database.close)


pytestmark = pytest.mark.anyio


# -- the audience --------------------------------------------------------------------------------------------


async def test_each_customer_counts_under_the_first_reason_that_applies(
    database, graph, data, database_url, capsys
):
    # Given a customer a broadcast of this campaign already reached...
    put_customer(database, "already", last_action_at=ago(hours=2))
    await run_broadcast(database, graph, data, database_url)
    # ...and customers whose last own action (platform time) was 1 h, 23 h, 25 h and 6 days ago, from an ad
    # or not, and others the campaign may not be sent to.
    put_customer(database, "1h", last_action_at=ago(hours=1))
    put_customer(database, "23h", last_action_at=ago(hours=23))
    put_customer(database, "25h", last_action_at=ago(hours=25))
    put_customer(database, "6d", last_action_at=ago(days=6))
    put_customer(database, "ad-25h", last_action_at=ago(hours=25), ad_referral_at=ago(hours=25))
    put_customer(database, "ad-6d", last_action_at=ago(days=6), ad_referral_at=ago(days=6))
    put_customer(database, "ad-8d", last_action_at=ago(days=8), ad_referral_at=ago(days=8))
    put_customer(database, "stopped", last_action_at=ago(hours=1), opted_out_at=ago(hours=1))
    put_customer(database, "blocked", last_action_at=ago(hours=1), unreachable_at=ago(minutes=5))
    put_customer(database, "staff", last_action_at=ago(hours=1), handed_over_until=ago(minutes=-20))
    put_customer(database, "staff-done", last_action_at=ago(hours=1), handed_over_until=ago(minutes=1))
    # Several reasons: the first in the order counts.
    put_customer(database, "closed-stopped", last_action_at=ago(hours=30), opted_out_at=ago(hours=30))
    put_customer(database, "stopped-blocked", last_action_at=ago(hours=1), opted_out_at=ago(hours=1),
                 unreachable_at=ago(minutes=1))  # fmt: skip
    put_customer(database, "never")  # no own action known

    counts = await asyncio.to_thread(audience_now, database, CAMPAIGN_ID)

    expected = {
        "eligible": 5,  # 1h, 23h, ad-25h, ad-6d, staff-done
        "skipped": {
            "window_closed": 5,
            "opted_out": 2,
            "unreachable": 1,
            "already_sent": 1,
            "handed_over": 1,
        },
    }
    assert counts.as_dict() == expected
    assert list(counts.as_dict()["skipped"]) == [str(reason) for reason in Reason]
    # The command prints exactly that object with --json, and explains the reasons without it.
    assert audience_command(CAMPAIGN_ID, True, environ=environ(data, graph, database_url)) == 0
    assert json.loads(capsys.readouterr().out) == expected
    assert audience_command(CAMPAIGN_ID, False, environ=environ(data, graph, database_url)) == 0
    human = capsys.readouterr().out
    assert "5 customers can be sent the welcome now" in human
    assert "window_closed: no own action in the last 24 hours (7 days after an ad)" in human


# -- the broadcast -----------------------------------------------------------------------------------------


async def test_the_welcome_goes_to_the_eligible_as_an_update_with_the_broadcast_as_its_source(
    database, graph, data, database_url
):
    graph.names["1001"] = "Ada"
    for customer in ("1001", "1002"):
        put_customer(database, customer, last_action_at=ago(hours=3))
    put_customer(database, "1003", last_action_at=ago(days=2))

    tally = await run_broadcast(database, graph, data, database_url)

    assert (tally.sent, tally.skipped) == (2, {Reason.WINDOW_CLOSED: 1})
    bodies = [send["body"] for send in graph.sent]
    assert [body["recipient"]["id"] for body in bodies] == ["1001", "1002"]
    # Sent of the page's own accord, not in answer to a message: an UPDATE, never a tag (no promotions).
    assert all(body["messaging_type"] == "UPDATE" and "tag" not in body for body in bodies)
    first = bodies[0]["message"]["attachment"]["payload"]
    assert first["text"].startswith("Hi Ada! We have a little gift")
    assert [button["payload"] for button in first["buttons"]] == ["spring-sale||yes", "spring-sale||no"]
    events = await asyncio.to_thread(buffered, database)
    by_customer = {(e.customer_id, str(e.event)): e for e in events}
    assert set(by_customer) == {
        ("1001", "welcome_sent"),
        ("1001", "broadcast_sent"),
        ("1002", "welcome_sent"),
        ("1002", "broadcast_sent"),
        ("1003", "broadcast_skipped"),
    }
    assert {e.source for e in events} == {"broadcast:1"}
    assert json.loads(by_customer[("1003", "broadcast_skipped")].detail) == {
        "broadcast": 1,
        "reason": "window_closed",
    }
    assert json.loads(by_customer[("1001", "broadcast_sent")].detail) == {"broadcast": 1}
    (result,) = await asyncio.to_thread(broadcast_results, database, CAMPAIGN_ID)
    assert (result.sent, result.skipped, result.pending) == (2, {"window_closed": 1}, 0)


async def test_the_broadcast_keeps_to_its_rate(graph, data):
    rate = 240  # one every 0.25 s
    with opened(None, data) as database:
        for n in range(8):
            put_customer(database, f"20{n:02d}", last_action_at=ago(hours=1))
        await run_broadcast(database, graph, data, None, rate=rate)

    times = [at for at, _, status in graph.send_log if status == 200]
    assert len(times) == 8
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) > 60 / rate - 0.05, gaps  # tolerance: a timer firing early, the fake's threads


def test_the_pacer_spaces_sends_evenly_and_never_waits_past_the_next_slot():
    now = [100.0]
    pacer = Pacer(240, clock=lambda: now[0])  # one every 0.25 s
    assert pacer.due_in() == 0.0  # the first send goes at once
    pacer.sent()
    assert pacer.due_in() == 0.25
    now[0] += 0.1
    assert pacer.due_in() == pytest.approx(0.15)
    now[0] += 1.0  # a slow send: the next slot has passed, nothing to make up
    assert pacer.due_in() == 0.0
    pacer.sent()
    assert pacer.due_in() == 0.25


@pytest.mark.parametrize(
    "slow_down",
    [
        pytest.param(graph_error(613), id="the app's rate limit"),
        pytest.param(graph_error(80006), id="the page's Messenger business use case limit"),
        pytest.param(dataclasses.replace(graph_error(613), delay_s=0.1), id="no answer at all"),
    ],
)
async def test_the_broadcast_pauses_when_the_platform_asks_to_slow_down_then_goes_on(graph, data, slow_down):
    with opened(None, data) as database:
        for customer in ("3001", "3002", "3003"):
            put_customer(database, customer, last_action_at=ago(hours=1))
        # The Graph client tries once (its own retries, with their random pauses, could outlast any number of
        # refusals): its send fails for now, and the broadcast, not the client, must try again.
        graph.script_sends("3002", slow_down)

        tally = await run_broadcast(
            database, graph, data, None, rate=600, first_backoff_s=1.0, retry=ONE_ATTEMPT
        )
        (result,) = broadcast_results(database, CAMPAIGN_ID)

    assert tally.sent == 3
    assert result.sent == 3
    assert Counter(send["recipient"] for send in graph.sent) == {"3001": 1, "3002": 1, "3003": 1}
    log = graph.send_log
    first_refusal = next(at for at, customer, status in log if customer == "3002" and status != 200)
    accepted = {customer: at for at, customer, status in log if status == 200}
    # Paused at least the first backoff before trying again, and sent no one else meanwhile.
    assert accepted["3002"] - first_refusal >= 1.0
    assert accepted["3001"] < first_refusal < accepted["3002"] < accepted["3003"]


async def test_a_rejected_page_token_stops_the_broadcast_and_fails_no_one(database, graph, data):
    for customer in ("3101", "3102"):
        put_customer(database, customer, last_action_at=ago(hours=1))
    graph.script_sends("3101", graph_error(190, 460))  # the page's token expired

    async with asyncio.timeout(30):
        with pytest.raises(TokenRejected, match="reconnect the page"):
            await run_broadcast(database, graph, data, None, retry=ONE_ATTEMPT)

    assert graph.sent == []  # nobody after the first either
    events = await asyncio.to_thread(buffered, database)
    assert [str(e.event) for e in events if e.customer_id == "3101"] == []  # not recorded as failed
    assert await asyncio.to_thread(database.owed) == 0


async def test_a_customer_whose_window_closes_or_who_opts_out_meanwhile_is_skipped(
    database, graph, data, database_url
):
    for customer in ("4001", "4002", "4003", "4004"):
        put_customer(database, customer, last_action_at=ago(hours=1))

    def change_after_the_first(tally: Tally) -> None:
        if tally.done == 1:  # while the broadcast runs: the store changes under it
            put_customer(database, "4002", last_action_at=ago(hours=24, seconds=1))
            put_customer(database, "4003", last_action_at=ago(hours=1), opted_out_at=ago(seconds=1))

    tally = await run_broadcast(database, graph, data, database_url, report=change_after_the_first)

    assert [send["recipient"] for send in graph.sent] == ["4001", "4004"]
    assert tally.skipped == {Reason.WINDOW_CLOSED: 1, Reason.OPTED_OUT: 1}


async def test_a_customer_who_cannot_be_messaged_is_marked_unreachable(database, graph, data, database_url):
    for customer in ("5001", "5002", "5003"):
        put_customer(database, customer, last_action_at=ago(hours=1))
    graph.script_sends("5001", graph_error(551))  # "This person isn't available right now"
    graph.script_sends("5002", graph_error(10, 1545041))  # the customer blocked the page

    tally = await run_broadcast(database, graph, data, database_url)

    assert (tally.sent, tally.skipped) == (1, {"unreachable": 2})
    assert unreachable_at(database, "5001") is not None
    assert unreachable_at(database, "5002") is not None
    assert unreachable_at(database, "5003") is None
    counts = await asyncio.to_thread(audience_now, database, CAMPAIGN_ID)
    assert counts.as_dict()["skipped"]["unreachable"] == 2
    (result,) = await asyncio.to_thread(broadcast_results, database, CAMPAIGN_ID)
    assert result.skipped == {"unreachable": 2}


async def test_any_reply_refused_with_551_marks_the_customer_unreachable(database):
    put_customer(database, "6001", last_action_at=ago(hours=1))
    started = Event(
        event_id="m_6001",
        ts=ago(minutes=1),
        page_id=PAGE,
        customer_id="6001",
        campaign_id=CAMPAIGN_ID,
        event=EventName.CONVERSATION_STARTED,
    )
    await database.record([started], [Reply(ReplyKind.WELCOME, started)])
    refused = Reply(ReplyKind.WELCOME, started).failed(
        datetime.now(UTC), code=551, subcode=None, reason="not available"
    )

    assert await asyncio.to_thread(database.complete_many, [(f"{started.event_id}.w", refused)]) == 1
    assert unreachable_at(database, "6001") is not None


async def test_a_dry_run_sends_nothing_and_records_nothing(graph, data, capsys):
    with opened(None, data) as database:
        put_customer(database, "7001", last_action_at=ago(hours=1))
        put_customer(database, "7002", last_action_at=ago(days=3))

    status = broadcast_command(CAMPAIGN_ID, 30, True, environ=environ(data, graph, None))

    assert status == 0
    assert graph.send_log == []
    assert graph.profile_calls == []
    with opened(None, data) as database:
        assert broadcast_results(database) == []
        assert buffered(database) == []
        assert database.owed() == 0
    out = capsys.readouterr().out
    assert "1 customer can be sent the welcome now" in out
    assert "at 30 a minute: under a minute." in out
    assert "nothing was sent or recorded" in out


@pytest.mark.parametrize(
    ("customers", "rate", "words"),
    [
        (0, 60, "under a minute"),
        (59, 60, "under a minute"),
        (60, 60, "about 1 min"),
        (600, 30, "about 20 min"),
        (5_340, 60, "about 89 min"),
        (5_400, 60, "about 1.5 h"),
    ],
)
def test_the_dry_run_says_how_long_the_sending_takes(customers, rate, words):
    assert sending_time(customers, rate) == words


# -- crashes: real processes -------------------------------------------------------------------------------


class BroadcastProcess:
    """`python -m bot broadcast` in its own process, as an operator runs it."""

    def __init__(self, env: dict[str, str], rate: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot", "broadcast", "--campaign", CAMPAIGN_ID, "--rate", str(rate)],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def finish(self, timeout_s: float = 60) -> tuple[int, str]:
        out, _ = self.process.communicate(timeout=timeout_s)
        return self.process.returncode, out


def poll(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def accepted(graph: FakeGraph) -> Counter[str]:
    return Counter(send["recipient"] for send in list(graph.sent))


@pytest.mark.e2e
def test_a_broadcast_stopped_or_killed_resumes_without_sending_anyone_twice(database_url, graph, data):
    customers = [f"80{n:02d}" for n in range(8)]
    with opened(database_url, data) as database:
        for customer in customers:
            put_customer(database, customer, last_action_at=ago(hours=1))
    env = environ(data, graph, database_url)
    # The sixth customer's first send hangs: the process is killed with that welcome on its way.
    graph.script_sends(customers[5], Answer(delay_s=30))

    # Ctrl-C after two welcomes: the send under way ends, then the broadcast stops, saying how to resume.
    first = BroadcastProcess(env, rate=120)
    poll(lambda: len(accepted(graph)) >= 2)
    first.process.send_signal(signal.SIGINT)
    status, out = first.finish()
    assert status == 130, out
    assert f"python -m bot broadcast --campaign {CAMPAIGN_ID}` again to resume" in out

    # Run again: it resumes; kill -9 while a welcome hangs on its way to the platform.
    second = BroadcastProcess(env, rate=120)
    poll(lambda: graph.attempts.get(customers[5], 0) >= 1)
    second.process.kill()
    second.process.wait()

    # Run again: it waits for the dead run's lease, then finishes.
    status, out = BroadcastProcess(env, rate=120).finish()
    assert status == 0, out
    assert "Resuming broadcast 1" in out

    assert accepted(graph) == dict.fromkeys(customers, 1)
    with opened(database_url, data) as database:
        (result,) = broadcast_results(database, CAMPAIGN_ID)
        assert (result.sent, result.pending, result.state) == (8, 0, "finished")
        assert database.owed() == 0
