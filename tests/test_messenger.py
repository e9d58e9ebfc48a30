"""The platform's wire format: signatures, webhook bodies as they arrive, Send API bodies as expected."""

from __future__ import annotations

import json

import pytest

from bot.messenger import (
    Delivery,
    MalformedBody,
    Postback,
    Read,
    ReferralEvent,
    TextMessage,
    button_template,
    image_message,
    parse_body,
    send_body,
    sign,
    text_message,
    verify_signature,
)
from tests.support import payloads
from tests.support.paths import MESSENGER_FIXTURES

SEND = MESSENGER_FIXTURES / "send"
VECTOR = "sha256=bcc5bd9f45ededb77ddccb00da4b5f17db1469378185692ca58b6240c6efa167"


def fixture(name: str) -> bytes:
    return (MESSENGER_FIXTURES / name).read_bytes()


# -- signatures --------------------------------------------------------------------------------------------


def test_the_published_signature_vector_verifies():
    body = fixture("botman-driver-facebook__message_text.json")

    assert sign("Bar", body) == VECTOR
    assert verify_signature("Bar", body, VECTOR)
    assert verify_signature("Bar", body, VECTOR.upper().replace("SHA256=", "sha256="))


@pytest.mark.parametrize(
    "header",
    [None, "", VECTOR[:-1] + "0", VECTOR.replace("sha256=", "sha1="), "sha256=", "sha256=zz", "sha256=é"],
)
def test_a_wrong_or_missing_signature_is_rejected(header):
    body = fixture("botman-driver-facebook__message_text.json")

    assert not verify_signature("Bar", body, header)


def test_a_signature_covers_every_byte_of_the_body():
    body = fixture("botman-driver-facebook__message_text.json")

    assert not verify_signature("Bar", body + b" ", VECTOR)
    assert not verify_signature("Baz", body, VECTOR)


# -- parsing real webhook bodies ---------------------------------------------------------------------------


def test_a_text_message_is_parsed_without_keeping_its_words():
    [message] = parse_body(fixture("botman-driver-facebook__message_text.json"))

    assert isinstance(message, TextMessage)
    assert (message.page_id, message.customer_id, message.ts_ms) == (
        "111899832631525",
        "1433960459967306",
        1480279487147,
    )
    assert "Hi" not in repr(message)


def test_a_batched_body_yields_every_entry_with_distinct_ids():
    actions = parse_body(fixture("yoctol-bottender__batched_2entries.json"))

    assert [type(a) for a in actions] == [TextMessage, TextMessage]
    assert actions[0].ts_ms == actions[1].ts_ms  # same customer, same millisecond ...
    assert actions[0].event_id != actions[1].event_id  # ... still two events


def test_a_redelivered_body_yields_the_same_ids():
    body = fixture("botman-driver-facebook__postback.json")

    assert [a.event_id for a in parse_body(body)] == [a.event_id for a in parse_body(body)]


def test_a_postback_carries_its_payload():
    [click] = parse_body(fixture("botman-driver-facebook__postback.json"))

    assert isinstance(click, Postback)
    assert click.payload == "MY_PAYLOAD"
    assert click.referral is None


def test_a_quick_reply_is_a_click():
    [click] = parse_body(fixture("meta-docs__quick_reply.json"))

    assert isinstance(click, Postback)
    assert click.payload == "DEVELOPER_DEFINED_PAYLOAD_FOR_PICKING_GREEN"
    assert click.customer_id == "1254459154682919"


def test_a_referral_in_an_existing_thread():
    [action] = parse_body(fixture("botman-driver-facebook__referral.json"))

    assert isinstance(action, ReferralEvent)
    assert action.referral.ref == "MY_REF"


def test_get_started_from_an_m_me_link_carries_the_ref():
    body = payloads.envelope(payloads.postback("42", "GET_STARTED", ref="till-qr"))

    [click] = parse_body(body)

    assert click.referral.ref == "till-qr"
    assert click.referral.source == "SHORTLINK"


def ad_referral(customer: str, **referral: object) -> dict:
    """A Click-to-Messenger ad opened in an existing thread, shaped as the messaging_referrals reference shows
    it (ref only if the ad sets one)."""
    return {
        "sender": {"id": customer},
        "recipient": {"id": payloads.PAGE},
        "timestamp": payloads.now_ms(),
        "referral": {"source": "ADS", "type": "OPEN_THREAD", **referral},
    }


def test_the_fixture_referral_keeps_its_raw_source_and_type_and_has_no_ad():
    [action] = parse_body(fixture("botman-driver-facebook__referral.json"))

    assert (action.referral.source, action.referral.type) == ("MY_SOURCE", "MY_TYPE")
    assert (action.referral.ad_id, action.referral.ad_title) == (None, None)


def test_an_ad_referral_carries_the_ad_id_and_title():
    item = ad_referral(
        "42",
        ad_id="6045246247433",
        ads_context_data={"ad_title": "Spring sale", "photo_url": "https://scontent.example/1.jpg"},
    )

    [action] = parse_body(payloads.envelope(item))

    assert isinstance(action, ReferralEvent)
    assert action.referral.ref is None
    assert (action.referral.ad_id, action.referral.ad_title, action.referral.source) == (
        "6045246247433",
        "Spring sale",
        "ADS",
    )


def test_get_started_from_an_ad_carries_the_ad_id_and_title():
    item = payloads.postback("42", "GET_STARTED")
    ad = ad_referral("42", ad_id="77", ads_context_data={"ad_title": "Ad"})
    item["postback"]["referral"] = ad["referral"]

    [click] = parse_body(payloads.envelope(item))

    assert (click.referral.ad_id, click.referral.ad_title) == ("77", "Ad")


def ad_message(customer: str, referral: dict) -> dict:
    """A customer's first message after a Click-to-Messenger ad, shaped as the `messages` reference's
    "Message with Ads referral information" shows it."""
    item = payloads.text(customer, "Is the sale still on?")
    item["message"]["referral"] = referral
    return item


def test_a_message_after_an_ad_carries_the_ads_referral():
    referral = {
        "ref": "spring.ad",
        "ad_id": "6045246247433",
        "source": "ADS",
        "type": "OPEN_THREAD",
        "ads_context_data": {"ad_title": "Spring sale", "post_id": "1", "product_id": "2"},
    }

    [message] = parse_body(payloads.envelope(ad_message("42", referral)))

    assert isinstance(message, TextMessage)
    assert (message.referral.ref, message.referral.ad_id, message.referral.ad_title) == (
        "spring.ad",
        "6045246247433",
        "Spring sale",
    )
    assert (message.referral.source, message.referral.type) == ("ADS", "OPEN_THREAD")


@pytest.mark.parametrize("referral", [{"product": {"id": "123"}}, None, "ADS", []])
def test_a_message_referral_naming_no_origin_is_none(referral):
    [message] = parse_body(payloads.envelope(ad_message("42", referral)))

    assert isinstance(message, TextMessage)
    assert message.referral is None


@pytest.mark.parametrize(
    "odd",
    [
        {"ad_id": 6045246247433, "ads_context_data": {"ad_title": 7}},
        {"ad_id": ["1"], "ads_context_data": "Spring sale"},
        {"ad_id": "", "ads_context_data": None},
        {"ad_id": None, "ads_context_data": [{"ad_title": "x"}]},
    ],
)
def test_an_ad_id_or_title_that_is_not_a_string_is_ignored(odd):
    [action] = parse_body(payloads.envelope(ad_referral("42", **odd)))

    assert (action.referral.ad_id, action.referral.ad_title, action.referral.source) == (None, None, "ADS")


def test_optins_without_a_sender_are_not_customer_actions():
    assert parse_body(fixture("botman-driver-facebook__optin_user_ref_no_sender.json")) == []


def test_unknown_keys_are_tolerated():
    [message] = parse_body(fixture("botman-driver-facebook__message_with_nlp.json"))

    assert isinstance(message, TextMessage)


def test_standby_changes_and_unknown_kinds_are_skipped():
    body = json.dumps(
        {
            "object": "page",
            "entry": [
                {"id": "1", "time": 1, "standby": [payloads.text("7")]},
                {"id": "1", "time": 1, "changes": [{"field": "feed", "value": {}}]},
                {
                    "id": "1",
                    "time": 1,
                    "messaging": [
                        {
                            **payloads.text("7"),
                            "message": None,
                            "pass_thread_control": {"new_owner_app_id": "9"},
                        },
                        "not an object",
                        {
                            "sender": {"id": "7"},
                            "recipient": {"id": "1"},
                            "timestamp": "soon",
                            "message": {"text": "x"},
                        },
                        payloads.text("8"),
                    ],
                },
            ],
        }
    ).encode()

    actions = parse_body(body)

    assert [a.customer_id for a in actions] == ["8"]


def test_receipts_carry_their_watermarks():
    body = payloads.envelope(
        payloads.delivery("5", ["m_a", "m_b"], 1_700_000_000_123), payloads.read("5", 1_700_000_000_456)
    )

    delivered, read = parse_body(body)

    assert isinstance(delivered, Delivery)
    assert delivered.watermark == 1_700_000_000_123
    assert delivered.mids == ("m_a", "m_b")
    assert isinstance(read, Read)
    assert read.watermark == 1_700_000_000_456


def test_timestamps_in_seconds_or_strings_become_milliseconds():
    item = payloads.text("5")
    item["timestamp"] = "1527459824"

    [message] = parse_body(payloads.envelope(item))

    assert message.ts_ms == 1_527_459_824_000


@pytest.mark.parametrize("timestamp", [10**20, -5, "inf", "nan", "1e400", "soon"])
def test_an_action_whose_timestamp_is_no_time_is_skipped(timestamp):
    # Skipped as a messaging event that does not parse; the others of the body are kept.
    bad = payloads.text("5")
    bad["timestamp"] = timestamp
    good = payloads.text("6")

    [message] = parse_body(payloads.envelope(bad, good))

    assert message.customer_id == good["sender"]["id"]


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"object": "page"}', b'{"entry": 3}', b"\xff\xfe"]
)
def test_a_body_that_is_not_a_notification_is_malformed(body):
    with pytest.raises(MalformedBody):
        parse_body(body)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"entry": ' + b"[" * 1_100 + b"]" * 1_100 + b"}",
        # Below orjson's limit, but a NaN sends it to the standard library, which recurses once a level.
        b'{"entry": [], "x": ' + b"[" * 600 + b"NaN" + b"]" * 600 + b"}",
    ],
    ids=["100,000 deep", "1,100 deep", "600 deep with a NaN"],
)
def test_a_body_nested_too_deeply_is_malformed(body):
    with pytest.raises(MalformedBody, match="nested too deeply"):
        parse_body(body)


@pytest.mark.parametrize("customer", [["42"], {"id": "42"}, True, 4.2, float("nan"), "", None])
def test_a_sender_id_that_is_no_id_names_nobody(customer):
    bad = payloads.text("5")
    bad["sender"]["id"] = customer
    good = payloads.text("6")

    [message] = parse_body(payloads.envelope(bad, good))

    assert message.customer_id == "6"


def test_a_numeric_sender_id_is_read_as_its_digits():
    item = payloads.text("5")
    item["sender"]["id"] = 1254459154682919

    [message] = parse_body(payloads.envelope(item))

    assert message.customer_id == "1254459154682919"


@pytest.mark.parametrize("mids", ["m_a", {"m_a": 1}, 3, None, [1, None, "m_b"]])
def test_a_receipt_with_mids_of_the_wrong_type_keeps_its_watermark(mids):
    item = payloads.delivery("5", [], 1_700_000_000_123)
    item["delivery"]["mids"] = mids

    [delivered] = parse_body(payloads.envelope(item))

    assert delivered.watermark == 1_700_000_000_123
    assert delivered.mids == (("m_b",) if isinstance(mids, list) else ())


def test_json_beyond_the_fast_parser_is_still_read():
    # A lone surrogate escape, an integer beyond 64 bits and NaN: valid for Python's json, refused by
    # orjson. The events are kept, the lone surrogate made U+FFFD so they can be stored as UTF-8.
    body = (
        b'{"object": "page", "entry": [{"id": "7", "messaging": [{"sender": {"id": "42"}, '
        b'"recipient": {"id": "7"}, "timestamp": 1527459824000, "huge": 1180591620717411303424, '
        b'"n": NaN, "postback": {"title": "Yes", "payload": "PAYLOAD_\\ud83d", "mid": "m_1"}}]}]}'
    )
    [click] = parse_body(body)
    assert click == Postback(
        page_id="7",
        customer_id="42",
        ts_ms=1_527_459_824_000,
        payload="PAYLOAD_\ufffd",
        title="Yes",
        mid="m_1",
    )


# -- rendering: compared with real Send API bodies ---------------------------------------------------------


def shape(value):
    """The keys and types of a JSON value, recursively: what the platform parses."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return type(value).__name__


def send_fixture(name: str) -> dict:
    return json.loads((SEND / name).read_text())


def test_a_button_template_of_postbacks_is_shaped_like_the_platforms():
    real = send_fixture("meta-docs__button_template_three_postbacks_private_reply.json")["message"]

    ours = button_template("Want to see it?", [("Yes! Show me coupon", "a|b|yes"), ("No, thanks", "a|b|no")])

    assert shape(ours) == shape(real)


def test_a_text_message_is_shaped_like_the_platforms():
    real = send_fixture("fbsamples-messenger-platform-samples__text.json")

    ours = send_body("123", text_message("Hello!"))

    assert ours["message"] == real["message"]
    assert shape(ours["recipient"]) == shape(real["recipient"])
    assert ours["messaging_type"] == "RESPONSE"


def test_an_image_by_url_is_shaped_like_the_platforms():
    real = send_fixture("fbsamples-messenger-platform-samples__image_attachment_url.json")["message"]

    ours = image_message("https://example.com/thanks.png")

    assert shape(ours) == shape(real)
    assert ours["attachment"]["payload"]["url"] == "https://example.com/thanks.png"


def test_every_body_sets_messaging_type_like_the_platforms_own_clients():
    real = send_fixture("botman-driver-facebook__text_response_body.json")

    ours = send_body("1234567890", text_message("Test"))

    assert {k: v for k, v in real.items() if k != "access_token"} == ours
