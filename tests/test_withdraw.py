"""Promotions owed to a customer who then opts out, or whom staff then take over, are withdrawn when the
sender claims replies: never sent, each recorded as `reply_withdrawn` (both engines)."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta

import psycopg
import pytest

from bot.campaign import Campaign
from bot.database import Database
from bot.events import Event
from bot.facts import ButtonStep, EventName
from bot.flow import PageRules, Reply, ReplyKind, button_payload, plan_replies, record
from bot.messenger import parse_body
from bot.recipients import broadcast_results, create_broadcast, take_recipient
from bot.replies import Replier
from bot.sender import Sender
from tests.support import payloads
from tests.support.builders import BOT_T0, Clock
from tests.support.campaigns import CAMPAIGN, CODES, SINGLE_USE, reveal
from tests.support.mock_graph import Platform, graph_over
from tests.support.stores import Store

LEASE = timedelta(seconds=30)
T0_MS = 1_773_489_600_000  # the platform's time of the customers' actions: builders.PLATFORM_T0
PAGE_INBOX_APP = "263902037430900"  # the app of Meta Business Suite's inbox: staff writing by hand
RULES = PageRules.of(app_id="700000000000001")
YES = button_payload(CAMPAIGN, ButtonStep.YES)


def deliver(database: Database, *messaging: dict, campaign: Campaign = CAMPAIGN) -> list[Event]:
    """A webhook of `messaging`, recorded as the bot records it; its new events."""
    actions = parse_body(payloads.envelope(*messaging))
    events = [event for action in actions for event in record(campaign, action, RULES)]
    replies = [reply for event in events for reply in plan_replies(event)]
    return asyncio.run(database.record(events, replies))


def send_due(database: Database, clock: Clock, campaign: Campaign = CAMPAIGN) -> Platform:
    """Claim, send and store the outcome of everything due, as a sender does; the platform that got it."""
    platform = Platform()

    async def run() -> None:
        graph = graph_over(platform)
        replier = Replier(
            campaign, graph, image_url="https://shop.example/thanks.png", max_age_s=3600, clock=clock
        )
        await Sender(database, replier, lease=LEASE).send_due()
        await graph.aclose()

    asyncio.run(run())
    return platform


def stored(database: Database) -> list[Event]:
    """Every event the store holds, in the order it was stored."""
    database.next_batch(100_000)
    return [event for batch in database.pending_batches() for event in batch.events]


def withdrawn(events: list[Event]) -> list[tuple[str, dict]]:
    return [(e.event_id, json.loads(e.detail or "")) for e in events if e.event is EventName.REPLY_WITHDRAWN]


def texts(platform: Platform, customer: str) -> list[str]:
    """What each message the customer got says (a template's text)."""
    return [m.get("text") or m["attachment"]["payload"]["text"] for m in platform.messages.get(customer, [])]


def test_a_coupon_owed_when_the_customer_opts_out_is_withdrawn_and_the_opt_out_confirmed(store, database):
    (tap,) = deliver(database, payloads.postback("42", YES, ts=T0_MS))
    store.clock.advance(timedelta(seconds=1))  # the Graph API is slow: the coupon waits in the outbox
    deliver(database, payloads.text("42", "stop", ts=T0_MS + 1000))
    assert [kind for (kind,) in store.rows("SELECT kind FROM outbox ORDER BY event_id")] == [
        "coupon",
        "opted_out",
    ]

    platform = send_due(database, store.clock)

    assert texts(platform, "42") == [CAMPAIGN.opt_out_text]
    assert database.owed() == 0
    events = stored(database)
    assert [str(e.event) for e in events] == [
        "coupon_requested",
        "text_received",
        "opted_out",
        "reply_withdrawn",
        "thanks_sent",
    ]
    assert withdrawn(events) == [(f"{tap.event_id}.c.d", {"reply": "coupon", "reason": "opted_out"})]
    (event,) = (e for e in events if e.event is EventName.REPLY_WITHDRAWN)
    assert (event.ts, event.customer_id, event.campaign_id) == (store.clock.now, "42", CAMPAIGN.id)


def test_a_claim_whose_replies_were_all_withdrawn_claims_the_next_ones(store, database):
    deliver(database, payloads.postback("41", YES, ts=T0_MS))
    deliver(database, payloads.postback("42", YES, ts=T0_MS + 1000))
    deliver(database, payloads.echo("41", app_id=PAGE_INBOX_APP, ts=T0_MS + 2000))

    (claimed,) = database.claim(1, LEASE)  # the oldest, 41's, is withdrawn: the claim goes on to 42's

    assert (claimed.kind, claimed.customer_id) == (ReplyKind.COUPON, "42")
    assert [reason["reason"] for _, reason in withdrawn(stored(database))] == ["handed_over"]


def test_a_coupon_owed_when_staff_take_over_is_withdrawn(store, database):
    (tap,) = deliver(database, payloads.postback("42", YES, ts=T0_MS))
    deliver(database, payloads.echo("42", app_id=PAGE_INBOX_APP, ts=T0_MS + 1000))

    platform = send_due(database, store.clock)

    assert platform.messages == {}
    assert database.owed() == 0
    events = stored(database)
    assert [str(e.event) for e in events] == ["coupon_requested", "handed_over", "reply_withdrawn"]
    assert withdrawn(events) == [(f"{tap.event_id}.c.d", {"reply": "coupon", "reason": "handed_over"})]


def test_a_coupon_owed_during_a_takeover_over_by_the_claim_is_sent(store, database):
    deliver(database, payloads.postback("42", YES, ts=T0_MS))
    deliver(database, payloads.echo("42", app_id=PAGE_INBOX_APP, ts=T0_MS + 1000))
    store.clock.advance(timedelta(minutes=31))  # the Graph API was down; staff's 30 minutes are over

    platform = send_due(database, store.clock)

    assert texts(platform, "42") == [CAMPAIGN.coupon_text]
    assert withdrawn(stored(database)) == []


def test_an_opt_out_then_an_opt_in_before_the_claim_leaves_the_coupon_to_be_sent(store, database):
    deliver(database, payloads.postback("42", YES, ts=T0_MS))
    deliver(database, payloads.text("42", "stop", ts=T0_MS + 1000, mid="m_stop"))
    deliver(database, payloads.text("42", "start", ts=T0_MS + 2000, mid="m_start"))

    platform = send_due(database, store.clock)

    assert texts(platform, "42")[:3] == [CAMPAIGN.coupon_text, CAMPAIGN.opt_out_text, CAMPAIGN.opt_in_text]
    assert len(platform.messages["42"]) == 4  # and the welcome the start word calls for
    events = stored(database)
    assert withdrawn(events) == []
    assert [str(e.event) for e in events].count("coupon_sent") == 1


def test_a_reply_in_flight_when_the_customer_opts_out_is_not_withdrawn(store, database):
    (tap,) = deliver(database, payloads.postback("42", YES, ts=T0_MS))
    (coupon,) = database.claim(10, LEASE)  # on its way to the platform
    deliver(database, payloads.text("42", "stop", ts=T0_MS + 1000))

    (confirmation,) = database.claim(10, LEASE)
    assert confirmation.kind is ReplyKind.OPTED_OUT
    assert database.owed() == 2  # the coupon is still owed its outcome
    store.clock.advance(timedelta(seconds=1))
    sent = coupon.sent("m_42_1", store.clock.now)
    assert database.complete_many([(coupon.sent_id, sent)]) == 1

    events = stored(database)
    assert withdrawn(events) == []
    assert [e.event_id for e in events if e.event is EventName.COUPON_SENT] == [f"{tap.event_id}.c"]


def test_a_withdrawn_single_use_code_stays_the_customers(store, database):
    database.add_codes(SINGLE_USE.id, CODES, lambda at: at + timedelta(days=7))
    asyncio.run(database.record(*reveal("4201")))
    [(code,)] = store.rows("SELECT code FROM codes WHERE customer_id = '4201'")
    deliver(database, payloads.text("4201", "stop", ts=T0_MS + 4500), campaign=SINGLE_USE)

    platform = send_due(database, store.clock, SINGLE_USE)

    assert texts(platform, "4201") == [SINGLE_USE.opt_out_text]
    assert [detail["reply"] for _, detail in withdrawn(stored(database))] == ["code", "code_qr"]
    assert store.rows(f"SELECT customer_id FROM codes WHERE code = '{code}'") == [("4201",)]

    # Back in, they reveal again: the same code, and no other customer's.
    deliver(database, payloads.text("4201", "start", ts=T0_MS + 5000), campaign=SINGLE_USE)
    asyncio.run(database.record(*reveal("4201", mid="m_reveal_again")))  # a second later
    platform = send_due(database, store.clock, SINGLE_USE)
    shown = [m["text"] for m in platform.messages["4201"] if m.get("text", "").startswith("Your code: ")]
    assert [text.splitlines()[0] for text in shown] == [f"Your code: {code}"]


def test_a_broadcast_welcome_withdrawn_skips_its_recipient(store, database):
    # A customer who reacted an hour ago (their window is open); a broadcast takes them, and its process
    # dies (or pauses for the platform's rate limit) with their welcome leased in the outbox.
    deliver(database, payloads.reaction("42", "m_page_1", ts=T0_MS))
    store.clock.advance(timedelta(hours=1))
    number = create_broadcast(database, CAMPAIGN.id, 60)
    welcome = take_recipient(
        database, number, payloads.PAGE, "42", campaign_id=CAMPAIGN.id, variant=None, lease=LEASE
    )
    assert isinstance(welcome, Reply)
    deliver(database, payloads.text("42", "stop", ts=T0_MS + 3_600_000))

    (confirmation,) = database.claim(10, LEASE)  # the welcome's lease has not run out: not touched
    assert confirmation.kind is ReplyKind.OPTED_OUT
    assert database.owed() == 2  # the welcome and the confirmation
    assert database.complete(confirmation.sent_id, confirmation.sent("m_42_1", store.clock.now))
    store.clock.advance(LEASE)
    assert database.claim(10, LEASE) == []

    assert database.owed() == 0
    (result,) = broadcast_results(database, CAMPAIGN.id)
    assert (result.sent, result.pending, result.skipped) == (0, 0, {"opted_out": 1})
    events = stored(database)
    assert withdrawn(events) == [(f"{welcome.sent_id}.d", {"reply": "welcome", "reason": "opted_out"})]
    (skipped,) = (e for e in events if e.event is EventName.BROADCAST_SKIPPED)
    assert json.loads(skipped.detail or "") == {"broadcast": number, "reason": "opted_out"}
    assert skipped.source == f"broadcast:{number}"


# -- PostgreSQL: several senders share one outbox --------------------------------------------------------


@pytest.fixture
def postgres_store(postgres_database_url: str, tmp_path) -> Store:
    return Store(postgres_database_url, tmp_path / "data", Clock(BOT_T0))


def opt_everyone_out(database: Database, customers: list[str]) -> list[str]:
    """Each customer taps *Yes*, then writes "stop" before the coupon is claimed; the coupons' ids."""
    taps = [deliver(database, payloads.postback(customer, YES, ts=T0_MS))[0] for customer in customers]
    for customer in customers:
        deliver(database, payloads.text(customer, "stop", ts=T0_MS + 1000))
    return [Reply(ReplyKind.COUPON, tap).sent_id for tap in taps]


def test_two_senders_claiming_at_once_withdraw_each_reply_once(postgres_store):
    customers = [f"90{n:02d}" for n in range(40)]
    first, second = postgres_store.open(), postgres_store.open()
    try:
        coupons = opt_everyone_out(first, customers)
        together = threading.Barrier(2)
        claimed: list[list[Reply]] = [[], []]

        def claim(index: int, database: Database) -> None:
            together.wait(timeout=10)
            claimed[index] = database.claim(1000, LEASE)

        threads = [threading.Thread(target=claim, args=pair) for pair in enumerate((first, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        confirmations = [reply.sent_id for replies in claimed for reply in replies]
        assert len(set(confirmations)) == len(confirmations) == len(customers)  # each claimed once
        events = stored(first)
        assert sorted(event_id for event_id, _ in withdrawn(events)) == sorted(f"{c}.d" for c in coupons)
        assert first.owed() == len(customers)  # the confirmations, leased
    finally:
        first.close()
        second.close()


def test_a_reply_another_sender_holds_is_passed_over_not_waited_for(postgres_store):
    database = postgres_store.open()
    try:
        opt_everyone_out(database, ["9101"])
        with psycopg.connect(postgres_store.url, autocommit=False) as other:  # another sender, mid-claim
            other.execute("SELECT reply_id FROM outbox WHERE kind = 'coupon' FOR UPDATE")
            done = threading.Event()
            claimed: list[Reply] = []

            def claim() -> None:
                claimed.extend(database.claim(10, LEASE))
                done.set()

            threading.Thread(target=claim, daemon=True).start()
            finished = done.wait(timeout=10)
            other.rollback()
        assert finished, "the claim waited for the reply another sender holds"
        assert [reply.kind for reply in claimed] == [ReplyKind.OPTED_OUT]
        assert withdrawn(stored(database)) == []
        assert database.claim(10, LEASE) == []  # released: withdrawn now
        assert len(withdrawn(stored(database))) == 1
    finally:
        database.close()
