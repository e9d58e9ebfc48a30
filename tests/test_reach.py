"""Reaching customers within Messenger's rules: opt-out and opt-in words and the menu's item, reactions,
staff taking over from the page's inbox, and the `customers` table the webhook's transaction keeps (both
engines)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from bot.config import Mode, Settings
from bot.customers import ACTION_GRAIN_US
from bot.database import Database
from bot.events import Event
from bot.facts import ButtonStep, EventName
from bot.flow import OPT_OUT_PAYLOAD, PageRules, ReplyKind, button_payload, plan_replies, record
from bot.messenger import TextMessage, parse_body
from tests.support import payloads
from tests.support.bot_process import BotProcess, stored_events, wait_until_idle
from tests.support.builders import BOT_T0
from tests.support.campaigns import CAMPAIGN
from tests.support.fake_graph import FakeGraph
from tests.support.home import PAGE_TOKEN, make_home
from tests.support.stores import Store

BOT_APP = "700000000000001"  # the bot's Meta app (FakeGraph's GET /app answers it)
PAGE_INBOX_APP = "263902037430900"  # the app that Meta Business Suite's inbox echoes carry
RULES = PageRules.of(app_id=BOT_APP)
# The platform's time of the customers' actions (ms): PLATFORM_T0; the bot's clock, BOT_T0, a little later.
T0_MS = 1_773_489_600_000  # 2026-03-14 12:00 UTC
YES = button_payload(CAMPAIGN, ButtonStep.YES)


def events_of(*messaging: dict, rules: PageRules = RULES) -> list[Event]:
    return [
        e for action in parse_body(payloads.envelope(*messaging)) for e in record(CAMPAIGN, action, rules)
    ]


def names(events: list[Event]) -> list[str]:
    return [str(e.event) for e in events]


# -- the flow: what a message, a menu item, a reaction or an echo becomes ------------------------------------


@pytest.mark.parametrize("words", ["stop", "Unsubscribe!", "STOP.", "  stop  ", "¡Stop!"])
def test_an_opt_out_word_alone_opts_out_and_asks_for_a_confirmation(words):
    events = events_of(payloads.text("42", words))

    assert names(events) == ["text_received", "opted_out"]
    assert [reply.kind for e in events for reply in plan_replies(e)] == [ReplyKind.OPTED_OUT]


@pytest.mark.parametrize("words", ["stop please", "don't stop", "stopp", "unsubscribe me", ""])
def test_a_message_that_only_holds_an_opt_out_word_does_not_opt_out(words):
    assert names(events_of(payloads.text("42", words))) == ["text_received", "conversation_started"]


@pytest.mark.parametrize("words", ["delete my data", "Delete my data!", "DELETE MY DATA."])
def test_delete_words_ask_for_the_customers_data_to_go_and_are_answered_even_when_opted_out(words):
    events = events_of(payloads.text("42", words))

    assert names(events) == ["text_received", "deletion_requested"]
    [answer] = [reply for e in events for reply in plan_replies(e)]
    assert answer.kind is ReplyKind.DELETED
    assert not answer.is_promotion
    assert names(events_of(payloads.text("42", "please delete my data"))) == [
        "text_received",
        "conversation_started",
    ]
    rules = PageRules.from_settings(
        Settings.from_env({"PROMOBOT_DELETE_WORDS": "forget me"}, mode=Mode.LOCAL)
    )
    assert names(events_of(payloads.text("42", "Forget me."), rules=rules)) == [
        "text_received",
        "deletion_requested",
    ]


def test_opt_out_and_opt_in_words_are_configurable():
    settings = Settings.from_env(
        {"PROMOBOT_OPT_OUT_WORDS": "Arrêt, opt out", "PROMOBOT_OPT_IN_WORDS": "reprendre"}, mode=Mode.LOCAL
    )
    rules = PageRules.from_settings(settings)

    assert names(events_of(payloads.text("42", "ARRÊT!"), rules=rules)) == ["text_received", "opted_out"]
    assert names(events_of(payloads.text("42", "Opt-out"), rules=rules)) == ["text_received", "opted_out"]
    assert names(events_of(payloads.text("42", "stop"), rules=rules)) == [
        "text_received",
        "conversation_started",
    ]
    assert names(events_of(payloads.text("42", "Reprendre."), rules=rules)) == [
        "text_received",
        "opted_in",
        "conversation_started",
    ]


def test_the_start_word_opts_in_and_starts_the_conversation():
    events = events_of(payloads.text("42", "Start"))

    assert names(events) == ["text_received", "opted_in", "conversation_started"]
    assert [r.kind for e in events for r in plan_replies(e)] == [ReplyKind.OPTED_IN, ReplyKind.WELCOME]


def test_the_menus_stop_item_opts_out():
    [event] = events_of(payloads.postback("42", OPT_OUT_PAYLOAD, title="Stop promotions"))

    assert event.event is EventName.OPTED_OUT
    assert json.loads(event.detail) == {"trigger": "menu"}


def test_the_customers_words_are_matched_but_never_recorded_nor_logged():
    secret = "stop"
    [message] = parse_body(payloads.envelope(payloads.text("42", secret)))
    events = events_of(payloads.text("42", secret))

    assert isinstance(message, TextMessage)
    assert message.text == secret
    assert secret not in repr(message)
    assert not any(
        secret in str(value) for e in events for value in e.to_dict().values() if value is not None
    )


def test_a_reaction_is_recorded_as_the_customers_action_and_not_answered():
    [event] = events_of(payloads.reaction("42", "m_welcome", ts=T0_MS))

    assert event.event is EventName.REACTION_RECEIVED
    assert event.ts == datetime(2026, 3, 14, 12, 0, tzinfo=UTC)  # the platform's time
    assert json.loads(event.detail) == {"action": "react", "reaction": "love"}
    assert plan_replies(event) == []


def test_an_echo_of_staff_writing_from_the_page_inbox_is_a_takeover_of_that_customer():
    [event] = events_of(payloads.echo("42", app_id=int(PAGE_INBOX_APP)))  # app ids come as numbers

    assert (event.event, event.customer_id, event.page_id) == (EventName.HANDED_OVER, "42", payloads.PAGE)
    assert json.loads(event.detail) == {"app_id": PAGE_INBOX_APP, "minutes": 30}
    assert plan_replies(event) == []


@pytest.mark.parametrize(
    ("app_id", "rules"),
    [(int(BOT_APP), RULES), (PAGE_INBOX_APP, PageRules.of()), (None, RULES)],
    ids=["the bot's own send", "the bot's app unknown", "an echo naming no app"],
)
def test_an_echo_the_bot_cannot_tell_from_its_own_is_no_takeover(app_id, rules):
    assert events_of(payloads.echo("42", app_id=app_id), rules=rules) == []


# -- the store: told once, no promotion after an opt-out, the takeover's pause -------------------------------


def deliver(database: Database, *messaging: dict) -> list[Event]:
    """A webhook through the flow into the store, as the bot's receiver does; the events that were new."""
    events = events_of(*messaging)
    return asyncio.run(database.record(events, [reply for e in events for reply in plan_replies(e)]))


def owed(store: Store, customer: str) -> list[str]:
    """The kinds of the replies owed to `customer`, in the order they were owed."""
    rows = store.rows(f"SELECT kind FROM outbox WHERE customer_id = '{customer}' ORDER BY due_at, event_id")
    return [kind for (kind,) in rows]


def recorded(store: Store, customer: str) -> list[str]:
    return [
        name
        for (name,) in store.rows(f"SELECT event FROM events WHERE customer_id = '{customer}' ORDER BY seq")
    ]


def customer_row(store: Store, customer: str) -> dict:
    columns = "last_action_at, ad_referral_at, opted_out_at, handed_over_until, unreachable_at"
    [row] = store.rows(f"SELECT {columns} FROM customers WHERE customer_id = '{customer}'")
    return dict(zip(columns.split(", "), row, strict=True))


def us(ms: int) -> int:
    return ms * 1000


def test_a_second_stop_records_no_second_opt_out_nor_confirmation(store, database):
    deliver(database, payloads.text("42", "stop", ts=T0_MS, mid="m1"))
    deliver(database, payloads.text("42", "STOP!", ts=T0_MS + 5000, mid="m2"))

    assert recorded(store, "42") == ["text_received", "opted_out", "text_received"]
    assert owed(store, "42") == ["opted_out"]
    assert customer_row(store, "42")["opted_out_at"] == us(T0_MS)


def test_an_opted_out_customer_gets_no_promotion_until_they_write_start(store, database):
    deliver(database, payloads.postback("42", OPT_OUT_PAYLOAD, ts=T0_MS))
    deliver(database, payloads.postback("42", "GET_STARTED", ts=T0_MS + 1000))
    deliver(database, payloads.postback("42", YES, ts=T0_MS + 2000))
    deliver(database, payloads.text("42", "hello", ts=T0_MS + 3000))
    assert owed(store, "42") == ["opted_out"]
    assert recorded(store, "42") == [
        "opted_out",
        "conversation_started",
        "coupon_requested",
        "text_received",
        "conversation_started",
    ]

    deliver(database, payloads.text("42", "start", ts=T0_MS + 4000, mid="m_start"))

    assert owed(store, "42") == ["opted_out", "opted_in", "welcome"]
    assert customer_row(store, "42")["opted_out_at"] is None


def test_start_from_a_customer_who_never_opted_out_is_only_a_conversation(store, database):
    deliver(database, payloads.text("42", "start", ts=T0_MS))

    assert recorded(store, "42") == ["text_received", "conversation_started"]
    assert owed(store, "42") == ["welcome"]


def test_a_stop_in_the_same_webhook_as_a_click_leaves_the_click_unanswered(store, database):
    deliver(database, payloads.postback("42", YES, ts=T0_MS), payloads.text("42", "stop", ts=T0_MS + 1))

    assert owed(store, "42") == ["opted_out"]


def test_staff_writing_by_hand_pause_the_bot_for_that_customer_for_thirty_minutes(store, database):
    deliver(database, payloads.echo("42", app_id=PAGE_INBOX_APP, ts=T0_MS))
    store.clock.advance(timedelta(minutes=29))
    deliver(database, payloads.postback("42", YES, ts=T0_MS + 29 * 60_000))
    deliver(database, payloads.postback("7", YES, ts=T0_MS + 29 * 60_000))  # another customer: answered
    assert recorded(store, "42") == ["handed_over", "coupon_requested"]
    assert owed(store, "42") == []
    assert owed(store, "7") == ["coupon"]

    store.clock.advance(timedelta(minutes=2))
    deliver(database, payloads.postback("42", YES, ts=T0_MS + 31 * 60_000, mid="m_later"))

    assert owed(store, "42") == ["coupon"]
    assert customer_row(store, "42")["handed_over_until"] == us(int(BOT_T0.timestamp() * 1000) + 30 * 60_000)


def test_staff_writing_seconds_after_the_customers_tap_still_pause_the_bot(store, database):
    # The customer's row was just written: the takeover must be written all the same.
    deliver(database, payloads.postback("42", YES, ts=T0_MS))
    deliver(database, payloads.echo("42", app_id=PAGE_INBOX_APP, ts=T0_MS + 5000))
    deliver(database, payloads.postback("42", YES, ts=T0_MS + 10_000, mid="m_again"))

    assert owed(store, "42") == ["coupon"]  # the first tap's answer only
    assert customer_row(store, "42")["handed_over_until"] is not None


def test_the_bots_own_echo_never_pauses_it(store, database):
    deliver(database, payloads.echo("42", app_id=BOT_APP, ts=T0_MS))
    deliver(database, payloads.postback("42", YES, ts=T0_MS + 1000))

    assert recorded(store, "42") == ["coupon_requested"]
    assert owed(store, "42") == ["coupon"]
    assert customer_row(store, "42")["handed_over_until"] is None


def test_a_stop_during_a_takeover_is_still_confirmed(store, database):
    deliver(database, payloads.echo("42", app_id=PAGE_INBOX_APP, ts=T0_MS))
    deliver(database, payloads.text("42", "stop", ts=T0_MS + 1000))

    assert owed(store, "42") == ["opted_out"]


# -- the store: the customers table --------------------------------------------------------------------------


def test_the_customers_row_follows_the_customers_own_actions_on_the_platforms_clock(store, database):
    deliver(database, payloads.postback("42", "GET_STARTED", ts=T0_MS))
    assert customer_row(store, "42") == {
        "last_action_at": us(T0_MS),
        "ad_referral_at": None,
        "opted_out_at": None,
        "handed_over_until": None,
        "unreachable_at": None,
    }

    store.clock.advance(timedelta(hours=1))  # the bot's clock never enters the customer's times
    deliver(
        database,
        payloads.ad_referral("42", ts=T0_MS + 10_000),
        payloads.delivery("42", ["m_welcome"], T0_MS + 20_000),
        payloads.read("42", T0_MS + 20_000, ts=T0_MS + 30_000),
    )
    row = customer_row(store, "42")
    assert (row["last_action_at"], row["ad_referral_at"]) == (us(T0_MS + 10_000), us(T0_MS + 10_000))

    deliver(database, payloads.delivery("42", ["m_coupon"], T0_MS + 40_000))  # receipts alone: no action
    assert customer_row(store, "42")["last_action_at"] == us(T0_MS + 10_000)

    # Within a minute of the time stored, a tap is not written again: the window it leaves is a little
    # shorter than the platform's, never longer.
    deliver(database, payloads.referral("42", "spring-sale.till", ts=T0_MS + 50_000))  # not an ad
    assert customer_row(store, "42")["last_action_at"] == us(T0_MS + 10_000)
    later = T0_MS + 10_000 + ACTION_GRAIN_US // 1000
    deliver(database, payloads.reaction("42", "m_coupon", ts=later))
    row = customer_row(store, "42")
    assert (row["last_action_at"], row["ad_referral_at"]) == (us(later), us(T0_MS + 10_000))


def test_an_older_action_delivered_late_does_not_move_the_last_action_back(store, database):
    deliver(database, payloads.postback("42", YES, ts=T0_MS + 60_000))
    deliver(database, payloads.text("42", "hi", ts=T0_MS, mid="m_early"))

    assert customer_row(store, "42")["last_action_at"] == us(T0_MS + 60_000)


def test_an_own_action_makes_an_unreachable_customer_reachable_and_an_echo_does_not(store, database):
    deliver(database, payloads.postback("42", "GET_STARTED", ts=T0_MS))
    store.execute("UPDATE customers SET unreachable_at = 1 WHERE customer_id = '42'")

    deliver(database, payloads.echo("42", app_id=PAGE_INBOX_APP, ts=T0_MS + 1000))
    assert customer_row(store, "42")["unreachable_at"] == 1

    deliver(database, payloads.reaction("42", "m_welcome", ts=T0_MS + 2000))
    assert customer_row(store, "42")["unreachable_at"] is None


def test_one_webhook_of_many_customers_writes_one_row_each(store, database):
    customers = [str(n) for n in range(1, 1201)]  # past one statement's worth of customers
    deliver(database, *(payloads.postback(c, "GET_STARTED", ts=T0_MS + int(c)) for c in customers))

    rows = dict(store.rows("SELECT customer_id, last_action_at FROM customers"))
    assert rows == {c: us(T0_MS + int(c)) for c in customers}


# -- end to end: a staff echo pauses the bot -----------------------------------------------------------------


@pytest.mark.e2e
def test_staff_answering_in_the_page_inbox_pause_the_running_bot_and_its_own_echoes_do_not(tmp_path):
    data = make_home(tmp_path)
    with FakeGraph(PAGE_TOKEN) as graph, BotProcess(data, graph.url, PROMOBOT_APP_ID=BOT_APP) as bot:
        now = payloads.now_ms()
        staff, own = "3001", "3002"
        assert bot.post(
            payloads.envelope(payloads.echo(staff, app_id=int(PAGE_INBOX_APP), ts=now))
        ).status_code
        assert bot.post(payloads.envelope(payloads.echo(own, app_id=int(BOT_APP), ts=now))).status_code
        bot.post(payloads.envelope(payloads.postback(staff, "GET_STARTED", ts=now + 1)))
        bot.post(payloads.envelope(payloads.postback(own, "GET_STARTED", ts=now + 1)))

        graph.wait_for(own, 1)  # answered: the bot's own echo did not pause it
        wait_until_idle(bot)  # and nothing is owed to the staff's customer
        assert graph.messages_to(staff) == []
        assert bot.stop() == 0
    events = stored_events(data)
    assert [e["event"] for e in events if e["customer_id"] == staff] == [
        "handed_over",
        "conversation_started",
    ]
    assert [e["event"] for e in events if e["customer_id"] == own] == ["conversation_started", "welcome_sent"]
