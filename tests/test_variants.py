"""Where journeys come from and which variant a customer sees (issue 18): the source of a journey, sticky
variants by a hash of campaign and customer, variants forced by entry links, replies in a variant's texts."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from urllib.parse import parse_qsl

import httpx
import pytest

from bot.campaign import Campaign, parse_campaign
from bot.events import Event
from bot.facts import Button, ButtonStep, EventName
from bot.flow import Reply, ReplyKind, plan_replies, record, render
from bot.graph_batch import read_batch
from bot.messenger import Postback, Read, Referral, ReferralEvent, TextMessage
from bot.replies import Replier
from tests.support.campaigns import CAMPAIGN, customer_of, example, hashed_variant
from tests.support.mock_graph import graph_over

PAGE = "111899832631525"
IMAGE = "https://bot.example.com/media/thanks.png"
IMAGE_B = "https://cdn.example.com/thanks-b.jpg"
TS = 1_767_000_000_000


def ab_campaign(**weights: float) -> Campaign:
    """The example campaign with variants A (the reference, the campaign's own texts) and B (its own texts
    and image), or the variants and weights given."""
    raw = example()
    raw["variants"] = (
        {name: {"weight": weight} for name, weight in weights.items()}
        if weights
        else {
            "A": {},
            "B": {
                "welcome": {"text": "Hey {first_name}, fancy a coupon?"},
                "coupon": {"text": "Yours: 25% off until Sunday."},
                "thanks": {"text": "Maybe next time!", "image_url": IMAGE_B},
            },
        }
    )
    return parse_campaign(raw, data_dir=None)


AB = ab_campaign()


def get_started(customer: str = "42", referral: Referral | None = None, ts: int = TS) -> Postback:
    return Postback(PAGE, customer, ts, payload="GET_STARTED", referral=referral)


def link(ref: str | None, source: str | None = "SHORTLINK", **ad: str) -> Referral:
    return Referral(ref=ref, source=source, type="OPEN_THREAD", **ad)


def started(campaign: Campaign, inbound) -> Event:
    [event] = [e for e in record(campaign, inbound) if e.event == EventName.CONVERSATION_STARTED]
    return event


def detail(event: Event) -> dict:
    return json.loads(event.detail)


# -- the source of a journey ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("referral", "source"),
    [
        (link("spring-sale.till"), "till"),  # an entry link of this campaign
        (link("spring-sale.flyer.B"), "flyer"),  # … naming a variant
        (link("autumn_fair.story-2"), "story-2"),  # an entry link's form, another campaign's
        (link("till-qr"), "till-qr"),  # any other ref, as it is
        (link("spring sale.till"), "spring sale.till"),  # a space: not an entry link's form
        (link("a.b.c.d"), "a.b.c.d"),
        (link("x" * 100), "x" * 64),  # cut to 64 characters
        (link(None, "ADS", ad_id="6045246247433", ad_title="Spring sale"), "ad:6045246247433"),
        (link("spring-sale.ad1", "ADS", ad_id="6045246247433"), "ad1"),  # an ad's ref comes first
        (link(None, "CUSTOMER_CHAT_PLUGIN"), "CUSTOMER_CHAT_PLUGIN"),  # the platform's source, raw
        (link("", "SHORT-URL"), "SHORT-URL"),
        (link(None, None), "direct"),
        (None, "direct"),  # Get Started with no referral (or a ref the client dropped)
    ],
)
def test_the_source_of_a_journey_is_the_first_rule_that_applies(referral, source):
    for campaign in (CAMPAIGN, AB):
        assert started(campaign, get_started(referral=referral)).source == source


def test_a_typed_message_and_an_unknown_button_start_a_direct_journey():
    text = TextMessage(PAGE, "42", TS, mid="m_1")
    unknown = Postback(PAGE, "42", TS, payload="old-sale||yes")

    assert started(AB, text).source == "direct"
    assert started(AB, unknown).source == "direct"


def test_an_entry_link_opened_in_an_existing_thread_starts_a_new_journey_from_there():
    first = record(AB, get_started("42", link("spring-sale.till"), ts=TS))
    again = record(AB, ReferralEvent(PAGE, "42", TS + 86_400_000, link("spring-sale.flyer")))

    [event] = again
    assert event.event == EventName.CONVERSATION_STARTED
    assert event.source == "flyer"
    assert detail(event)["trigger"] == "referral"
    assert event.event_id != first[0].event_id
    assert [reply.kind for reply in plan_replies(event)] == [ReplyKind.WELCOME]
    # The welcome that answers it carries the journey's source and variant.
    welcome = plan_replies(event)[0].sent("m_w", event.ts)
    assert (welcome.event, welcome.source, welcome.variant) == ("welcome_sent", "flyer", event.variant)


def test_an_ad_in_an_existing_thread_records_its_id_title_and_type():
    ad = link(None, "ADS", ad_id="6045246247433", ad_title="Spring sale")

    event = started(AB, ReferralEvent(PAGE, "42", TS, ad))

    assert event.source == "ad:6045246247433"
    assert detail(event) == {
        "trigger": "referral",
        "ref": None,
        "source": "ADS",
        "type": "OPEN_THREAD",
        "ad_id": "6045246247433",
        "ad_title": "Spring sale",
        "variants": [["A", 0.5], ["B", 0.5]],
    }


def test_details_carry_only_the_keys_that_are_present():
    plain = started(CAMPAIGN, get_started())
    text = started(CAMPAIGN, TextMessage(PAGE, "42", TS, mid="m_1"))
    shortlink = started(CAMPAIGN, get_started(referral=Referral("till-qr", "SHORTLINK", None)))

    assert detail(plain) == {"trigger": "postback"}
    assert detail(text) == {"trigger": "text"}
    assert detail(shortlink) == {"trigger": "postback", "ref": "till-qr", "source": "SHORTLINK"}


def test_only_the_journeys_start_carries_a_source():
    events = record(AB, TextMessage(PAGE, "42", TS, mid="m_1"))
    click = record(AB, Postback(PAGE, "42", TS, payload=Button("spring-sale", "B", ButtonStep.YES).payload))

    assert [(e.event, e.source) for e in events] == [
        ("text_received", None),
        ("conversation_started", "direct"),
    ]
    assert click[0].source is None


# -- sticky variants -----------------------------------------------------------------------------------------


def test_a_customer_sees_the_same_variant_at_every_entry_and_every_event_carries_it():
    for customer in ("42", "1433960459967306", "7"):
        expected = hashed_variant(AB, customer)
        events = [
            *record(AB, get_started(customer)),
            *record(AB, get_started(customer, link("spring-sale.till"), ts=TS + 1)),
            *record(AB, ReferralEvent(PAGE, customer, TS + 2, link("till-qr"))),
            *record(AB, TextMessage(PAGE, customer, TS + 3, mid="m_1")),
            *record(AB, Read(PAGE, customer, TS + 4, watermark=TS + 3)),
        ]

        assert {e.variant for e in events} == {expected}
        assert AB.assigned_variant(customer) == expected


def test_both_variants_are_assigned_and_the_hash_is_the_contracts():
    customers = [str(n) for n in range(200)]

    assigned = [AB.assigned_variant(c) for c in customers]

    assert assigned == [hashed_variant(AB, c) for c in customers]
    assert set(assigned) == {"A", "B"}


@pytest.mark.parametrize("weights", [{"A": 1, "B": 1}, {"A": 1, "B": 3}, {"ctrl": 2, "x": 1, "y": 1.5}])
def test_over_many_customers_the_shares_follow_the_weights(weights):
    campaign = ab_campaign(**weights)
    total = sum(weights.values())

    counts = Counter(campaign.assigned_variant(f"psid-{n}") for n in range(20_000))

    for name, weight in weights.items():
        assert abs(counts[name] / 20_000 - weight / total) < 0.02, (name, counts)


def test_the_planned_shares_are_recorded_in_file_order_rounded():
    campaign = ab_campaign(ctrl=1, x=1, y=1)

    assert detail(started(campaign, get_started()))["variants"] == [
        ["ctrl", 0.3333],
        ["x", 0.3333],
        ["y", 0.3333],
    ]


def test_a_campaign_without_variants_keeps_its_label_and_records_no_variants():
    labelled = dataclasses.replace(CAMPAIGN, variant="spring-2")

    event = started(labelled, get_started(referral=link("spring-sale.till.B")))

    assert event.variant == "spring-2"
    assert started(CAMPAIGN, get_started()).variant is None
    assert "variants" not in detail(event)
    assert "variant_forced" not in detail(event)


# -- forced by an entry link ---------------------------------------------------------------------------------


def test_an_entry_link_naming_a_variant_forces_it():
    customer = customer_of("A", AB)

    event = started(AB, get_started(customer, link("spring-sale.till.B")))
    in_thread = started(AB, ReferralEvent(PAGE, customer, TS, link("spring-sale.till.B")))

    assert (event.variant, event.source, detail(event)["variant_forced"]) == ("B", "till", True)
    assert (in_thread.variant, detail(in_thread)["variant_forced"]) == ("B", True)
    # Its welcome is B's, and so are the buttons of the welcome: the clicks that follow carry B.
    [welcome] = plan_replies(event)
    message = render(AB.for_variant(welcome.answers.variant), welcome.kind, first_name="Ada", image_url=IMAGE)
    assert message["attachment"]["payload"]["text"] == "Hey Ada, fancy a coupon?"
    assert {b["payload"] for b in message["attachment"]["payload"]["buttons"]} == {
        "spring-sale|B|yes",
        "spring-sale|B|no",
    }


@pytest.mark.parametrize("ref", ["spring-sale.till.Z", "autumn-fair.till.B", "spring-sale.till"])
def test_a_ref_naming_no_variant_of_this_campaign_leaves_the_hash_to_choose(ref):
    customer = customer_of("A", AB)

    event = started(AB, get_started(customer, link(ref)))

    assert event.variant == "A"
    assert event.source == "till"
    assert "variant_forced" not in detail(event)


# -- replies in the texts of the variant they answer ---------------------------------------------------------


def click(variant: str | None, step: ButtonStep, customer: str = "42") -> Event:
    [event] = record(AB, Postback(PAGE, customer, TS, payload=Button("spring-sale", variant, step).payload))
    return event


def rendered(reply: Reply) -> dict:
    return render(AB.for_variant(reply.answers.variant), reply.kind, first_name="Ada", image_url=IMAGE)


def test_each_reply_is_in_the_texts_of_the_variant_of_the_event_it_answers():
    [coupon_b] = plan_replies(click("B", ButtonStep.YES))
    [coupon_a] = plan_replies(click("A", ButtonStep.YES))
    thanks_b = plan_replies(click("B", ButtonStep.NO))

    assert rendered(coupon_b)["attachment"]["payload"]["text"] == "Yours: 25% off until Sunday."
    assert rendered(coupon_b)["attachment"]["payload"]["buttons"][0]["payload"] == "spring-sale|B|reveal"
    assert rendered(coupon_a)["attachment"]["payload"]["text"] == CAMPAIGN.coupon_text
    assert rendered(coupon_a)["attachment"]["payload"]["buttons"][0]["payload"] == "spring-sale|A|reveal"
    assert [rendered(reply) for reply in thanks_b] == [
        {"text": "Maybe next time!"},
        {"attachment": {"type": "image", "payload": {"url": IMAGE, "is_reusable": True}}},
    ]  # (the image URL is the Replier's to choose: see below)


@pytest.mark.parametrize("variant", ["Z", None])
def test_a_click_of_a_variant_the_campaign_no_longer_has_gets_the_first_variants_texts(variant):
    event = click(variant, ButtonStep.YES)
    [coupon] = plan_replies(event)

    assert event.variant == variant  # recorded as the button says
    assert rendered(coupon)["attachment"]["payload"]["text"] == CAMPAIGN.coupon_text
    assert AB.for_variant(variant).variant == "A"


def test_a_campaign_without_variants_renders_its_own_texts_whatever_the_button_says():
    assert CAMPAIGN.for_variant("B") is CAMPAIGN


# -- through the Replier, as sent ----------------------------------------------------------------------------


class Platform:
    """The Send and User Profile APIs, answering alone or in batches; keeps what was sent to whom."""

    def __init__(self) -> None:
        self.sent: dict[str, list[dict]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/me/messages"):
            return httpx.Response(200, json=self._send(json.loads(request.content)))
        if request.method == "GET":
            return httpx.Response(200, json={"id": request.url.path.rsplit("/", 1)[-1], "first_name": "Ada"})
        answers = []
        for entry in read_batch(dict(parse_qsl(request.content.decode()))):
            if entry.method == "GET":
                body = {"id": entry.path.strip("/").rsplit("/", 1)[-1], "first_name": "Ada"}
            else:
                body = self._send(entry.body)
            answers.append({"code": 200, "body": json.dumps(body)})
        return httpx.Response(200, json=answers)

    def _send(self, body: dict) -> dict:
        customer = body["recipient"]["id"]
        self.sent.setdefault(customer, []).append(body["message"])
        return {"recipient_id": customer, "message_id": f"m_{customer}_{len(self.sent[customer])}"}


@pytest.mark.anyio
async def test_the_replier_sends_each_variants_texts_and_thank_you_image():
    platform = Platform()
    replier = Replier(
        AB,
        graph_over(platform),
        image_url=IMAGE,
        image_urls={"A": IMAGE, "B": IMAGE_B},
        max_age_s=1e12,
    )
    a, b = customer_of("A", AB), customer_of("B", AB)
    events = [
        started(AB, get_started(a)),
        started(AB, get_started(b)),
        click("B", ButtonStep.YES, customer="c1"),
        click("B", ButtonStep.NO, customer="c2"),
        click("A", ButtonStep.NO, customer="c3"),
        click("Z", ButtonStep.NO, customer="c4"),
    ]
    outcomes: list[Event] = []

    await replier.send(
        [r for e in events for r in plan_replies(e)], lambda reply, event: outcomes.append(event)
    )
    await replier.graph.aclose()

    def text(message: dict) -> str:
        """What a message shows: its text, or its image's URL."""
        return (
            message.get("text")
            or message["attachment"]["payload"].get("text")
            or message["attachment"]["payload"].get("url")
        )

    assert text(platform.sent[a][0]).startswith("Hi Ada! ")
    assert text(platform.sent[b][0]) == "Hey Ada, fancy a coupon?"
    assert text(platform.sent["c1"][0]) == "Yours: 25% off until Sunday."
    assert [text(m) for m in platform.sent["c2"]] == ["Maybe next time!", IMAGE_B]
    assert [text(m) for m in platform.sent["c3"]] == [CAMPAIGN.thanks_text, IMAGE]
    assert [text(m) for m in platform.sent["c4"]] == [CAMPAIGN.thanks_text, IMAGE]
    assert {(e.customer_id, e.variant) for e in outcomes if e.event == "welcome_sent"} == {(a, "A"), (b, "B")}
