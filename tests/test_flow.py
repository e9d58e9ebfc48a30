"""The conversation as pure functions: customer actions in, events and replies out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bot.campaign import Campaign
from bot.events import EventName, message_digest
from bot.facts import ButtonStep, parse_payload
from bot.flow import ReplyKind, button_payload, render
from tests.support import payloads
from tests.support.campaigns import CAMPAIGN, act

IMAGE = "https://bot.example.com/media/thanks.png"


def names(events) -> list[str]:
    return [str(e.event) for e in events]


def buttons(message: dict) -> list[tuple[str, str]]:
    return [(b["title"], b["payload"]) for b in message["attachment"]["payload"]["buttons"]]


def test_get_started_is_welcomed_by_first_name_with_two_buttons():
    events, [reply] = act(payloads.postback("42", "GET_STARTED"))

    message = render(CAMPAIGN, reply.kind, first_name="Ada", image_url=IMAGE)

    assert names(events) == ["conversation_started"]
    assert reply.kind is ReplyKind.WELCOME
    assert message["attachment"]["payload"]["text"].startswith("Hi Ada! ")
    assert buttons(message) == [
        ("Yes! Show me coupon", button_payload(CAMPAIGN, ButtonStep.YES)),
        ("No, thanks", button_payload(CAMPAIGN, ButtonStep.NO)),
    ]


def test_without_a_first_name_the_greeting_is_neutral():
    _, [reply] = act(payloads.postback("42", "GET_STARTED"))

    message = render(CAMPAIGN, reply.kind, first_name=None, image_url=IMAGE)

    assert message["attachment"]["payload"]["text"].startswith("Hi there! ")


def test_a_very_long_first_name_keeps_the_text_within_the_platform_limit():
    _, [reply] = act(payloads.postback("42", "GET_STARTED"))

    message = render(CAMPAIGN, reply.kind, first_name="A" * 500, image_url=IMAGE)

    assert len(message["attachment"]["payload"]["text"]) <= 640


def test_yes_sends_the_coupon_with_a_reveal_button():
    events, [reply] = act(payloads.postback("42", button_payload(CAMPAIGN, ButtonStep.YES), mid="m_yes"))

    message = render(CAMPAIGN, reply.kind, first_name=None, image_url=IMAGE)

    assert names(events) == ["coupon_requested"]
    assert events[0].button == "spring-sale||yes"
    assert message["attachment"]["payload"]["text"] == CAMPAIGN.coupon_text
    assert buttons(message) == [("Reveal the coupon", button_payload(CAMPAIGN, ButtonStep.REVEAL))]


def test_a_customers_action_keeps_its_platform_id_only_as_a_digest_in_its_event_id():
    same_ms = 1_700_000_000_000
    yes = button_payload(CAMPAIGN, ButtonStep.YES)

    events, _ = act(
        payloads.postback("42", yes, mid="m_first", ts=same_ms),
        payloads.postback("42", yes, mid="m_second", ts=same_ms),
        payloads.postback("43", "GET_STARTED", mid="m_start"),
        payloads.text("44", "hello", mid="m_text"),
    )

    assert [e.message_digest for e in events] == [None] * len(events)
    assert not any(mid in repr(events) for mid in ("m_first", "m_second", "m_start", "m_text"))
    assert events[0].event_id != events[1].event_id  # two clicks in one millisecond stay two events


def test_reveal_click_shows_the_code_and_counts_as_a_redemption():
    events, [reply] = act(payloads.postback("42", button_payload(CAMPAIGN, ButtonStep.REVEAL)))

    assert names(events) == ["coupon_revealed"]
    assert render(CAMPAIGN, reply.kind, first_name=None, image_url=IMAGE) == {"text": "SPRING20"}
    assert reply.sent("m_code", datetime.now(UTC)).event == EventName.CODE_SENT


def test_no_thanks_sends_the_thank_you_text_then_the_image():
    events, replies = act(payloads.postback("42", button_payload(CAMPAIGN, ButtonStep.NO)))

    messages = [render(CAMPAIGN, r.kind, first_name=None, image_url=IMAGE) for r in replies]

    assert names(events) == ["declined"]
    assert messages == [
        {"text": CAMPAIGN.thanks_text},
        {"attachment": {"type": "image", "payload": {"url": IMAGE, "is_reusable": True}}},
    ]


def test_a_referral_starts_the_conversation_and_records_the_ref():
    for item in (payloads.postback("42", "GET_STARTED", ref="till-qr"), payloads.referral("42", "till-qr")):
        events, [reply] = act(item)

        assert names(events) == ["conversation_started"]
        assert json.loads(events[0].detail)["ref"] == "till-qr"
        assert json.loads(events[0].detail)["source"] == "SHORTLINK"
        assert reply.kind is ReplyKind.WELCOME


def test_a_first_message_after_an_ad_starts_a_journey_from_the_ad():
    item = payloads.text("42", "Is the sale still on?")
    item["message"]["referral"] = payloads.ad_referral("42", ad_id="77")["referral"]

    events, [reply] = act(item)

    assert names(events) == ["text_received", "conversation_started"]
    started = events[1]
    assert started.source == "ad:77"
    assert json.loads(started.detail)["source"] == "ADS"  # what opens the 7-day window of an ad
    assert json.loads(started.detail)["ad_id"] == "77"
    assert reply.kind is ReplyKind.WELCOME


def test_free_text_starts_the_conversation():
    events, [reply] = act(payloads.text("42", "do you have coupons?"))

    assert names(events) == ["text_received", "conversation_started"]
    assert "coupons" not in repr(events)  # what customers write is not kept
    assert reply.kind is ReplyKind.WELCOME


@pytest.mark.parametrize("payload", ["SOMETHING_ELSE", "old-sale||yes", "spring-sale||dance", "a|b|c|d", ""])
def test_a_button_the_bot_no_longer_knows_starts_over(payload):
    events, [reply] = act(payloads.postback("42", payload))

    assert names(events) == ["conversation_started"]
    assert reply.kind is ReplyKind.WELCOME


def test_receipts_are_recorded_and_never_answered():
    events, replies = act(
        payloads.delivery("42", ["m_1"], 1_700_000_000_000), payloads.read("42", 1_700_000_000_500)
    )

    assert names(events) == ["message_delivered", "message_read"]
    assert [e.message_digest for e in events] == [message_digest("m_1"), None]
    assert [(e.watermark, e.detail) for e in events] == [(1_700_000_000_000, None), (1_700_000_000_500, None)]
    assert replies == []


def test_the_payload_carries_campaign_variant_and_step():
    variant = Campaign(**{**CAMPAIGN.__dict__, "variant": "B"})

    events, _ = act(payloads.postback("42", button_payload(variant, ButtonStep.YES)), campaign=variant)

    assert parse_payload(button_payload(variant, ButtonStep.YES)).variant == "B"
    assert (events[0].campaign_id, events[0].variant) == ("spring-sale", "B")


def test_payloads_and_titles_fit_the_platform_limits():
    for step in ButtonStep:
        assert len(button_payload(CAMPAIGN, step)) <= 1000
    for title in (CAMPAIGN.yes, CAMPAIGN.no, CAMPAIGN.reveal):
        assert len(title) <= 20


def test_outcomes_extend_the_id_of_the_event_they_answer():
    events, [reply] = act(payloads.postback("42", "GET_STARTED"))
    later = events[0].ts + timedelta(seconds=1)

    sent = reply.sent("m_w", later)
    failed = reply.failed(later, code=551, subcode=1545041, reason="unavailable")

    assert sent.event_id == f"{events[0].event_id}.w"
    assert sent.message_digest == message_digest("m_w")
    assert "m_w" not in repr(sent)  # the history keeps the digest, not the platform's id
    assert failed.event == EventName.SEND_FAILED
    assert json.loads(failed.detail) == {
        "reply": "welcome",
        "code": 551,
        "subcode": 1545041,
        "reason": "unavailable",
    }


def test_each_send_keeps_the_digest_of_the_id_the_platform_gave_it():
    events, [thanks_text, thanks_image] = act(
        payloads.postback("42", button_payload(CAMPAIGN, ButtonStep.NO))
    )
    later = events[0].ts + timedelta(seconds=1)

    text, image = thanks_text.sent("m_text", later), thanks_image.sent("m_image", later)
    unanswered = thanks_text.sent(None, later)  # a Send API answer that named no message

    assert (text.message_digest, image.message_digest) == (
        message_digest("m_text"),
        message_digest("m_image"),
    )
    assert text.message_digest != image.message_digest
    assert unanswered.message_digest is None
