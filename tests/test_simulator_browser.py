"""The Messenger simulator in real Chromium: customers click through the conversation in local mode."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import expect

import analytics
from bot.config import LOCAL_STAFF_PIN, Mode
from bot.events import message_digest
from tests.support.bot_process import BotProcess, stored_events
from tests.support.browser import ARTIFACTS, chromium_page
from tests.support.home import EXPIRES, make_home, single_use_home

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_three_customers_play_the_conversation_in_the_simulator(tmp_path):
    data = make_home(tmp_path)
    with BotProcess(data, "https://graph.invalid", Mode.LOCAL) as bot:
        assert "local mode" in bot.log()
        with chromium_page(offline_except=bot.url) as page:
            page.goto(bot.url + "/")

            # Ada: asks for the coupon and reveals it.
            page.fill("#name", "Ada")
            page.click("#get-started")
            page.get_by_text(re.compile("^Hi Ada! ")).wait_for()
            page.get_by_role("button", name="Yes! Show me coupon").click()
            page.get_by_role("button", name="Reveal the coupon").click()
            page.get_by_text("SPRING20", exact=True).wait_for()

            # Bob: comes from the QR code at the till, says no thanks, gets the thank-you image.
            page.fill("#name", "Bob")
            page.fill("#ref", "till-qr")
            page.click("#open-ref")
            page.get_by_text(re.compile("^Hi Bob! ")).wait_for()
            page.get_by_role("button", name="No, thanks").click()
            page.get_by_text("No problem, thanks for stopping by!").wait_for()
            image = page.locator("img.photo")
            image.wait_for()
            page.wait_for_function("document.querySelector('img.photo').naturalWidth > 0")

            # Cy: gets the welcome and never answers.
            page.fill("#name", "Cy")
            page.click("#get-started")
            page.get_by_text(re.compile("^Hi Cy! ")).wait_for()

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "simulator.png"))
            customers = {
                name: page.locator("#customers li", has_text=name).get_attribute("data-customer")
                for name in ("Ada", "Bob", "Cy")
            }
            assert page.outside_requests == []
            page.wait_for_function("window.simulatorIdle()")  # the last receipts acknowledged
            # What the platform (the stand-in) knows of each page message: its id and the platform's time.
            platform = {
                cid: httpx.get(f"{bot.url}/simulator/messages", params={"customer": cid}).json()
                for cid in customers.values()
            }
        assert bot.stop() == 0

    events = stored_events(data)
    journeys = {
        name: sorted({e["event"] for e in events if e["customer_id"] == cid})
        for name, cid in customers.items()
    }
    assert journeys["Ada"] == sorted(
        {
            "conversation_started",
            "welcome_sent",
            "coupon_requested",
            "coupon_sent",
            "coupon_revealed",
            "code_sent",
            "message_delivered",
            "message_read",
        }
    )
    assert journeys["Bob"] == sorted(
        {
            "conversation_started",
            "welcome_sent",
            "declined",
            "thanks_sent",
            "message_delivered",
            "message_read",
        }
    )
    assert journeys["Cy"] == sorted(
        {"conversation_started", "welcome_sent", "message_delivered", "message_read"}
    )
    # The analytics API sees exactly these journeys.
    journeys = {r["customer_id"]: r for r in analytics.open(data).journeys().to_pylist()}
    assert set(journeys) == set(customers.values())
    ada, bob, cy = (journeys[customers[name]] for name in ("Ada", "Bob", "Cy"))
    assert ada["coupon_revealed"] is not None
    assert ada["coupon_seen"] is not None
    assert ada["declined"] is None
    assert bob["declined"] is not None
    assert bob["coupon_requested"] is None
    assert cy["responded"] is None
    funnel = {r["step"]: r["customers"] for r in analytics.open(data).funnel().to_pylist()}
    assert funnel == {
        "reached": 3,
        "responded": 2,
        "coupon_requested": 1,
        "coupon_seen": 1,
        "coupon_revealed": 1,
        "redeemed": 0,  # a shared code: nothing is redeemed at the till
        "declined": 1,
    }
    for cid in customers.values():
        assert_receipts_carry_the_platforms_time(cid, platform[cid], events)
    bob_start = next(
        e for e in events if e["customer_id"] == customers["Bob"] and e["event"] == "conversation_started"
    )
    assert json.loads(bob_start["detail"])["ref"] == "till-qr"


def test_a_long_conversation_scrolls_and_keeps_every_message_whole(tmp_path):
    # The thread is a column that scrolls: once it overflowed, its messages were squeezed to fit, and a
    # welcome's card showed a sliver of its text and none of its buttons.
    data = make_home(tmp_path)
    with BotProcess(data, "https://graph.invalid", Mode.LOCAL) as bot:
        with chromium_page(offline_except=bot.url) as page:
            page.goto(bot.url + "/")
            page.fill("#name", "Ada")
            page.click("#get-started")
            page.get_by_text(re.compile("^Hi Ada! ")).wait_for()
            for n in range(6):  # each message a customer writes is answered with the welcome
                page.fill("#message", f"hello {n}")
                page.click("#send")
                expect(page.locator(".card")).to_have_count(n + 2)
            page.wait_for_function("window.simulatorIdle()")

            clipped = page.locator("#thread > *").evaluate_all(
                "items => items.filter(i => i.scrollHeight > i.clientHeight + 1).map(i => i.textContent)"
            )
            assert clipped == []
            thread = page.locator("#thread").evaluate("t => [t.scrollHeight, t.clientHeight]")
            assert thread[0] > thread[1]  # it overflows, and scrolls
            for card in page.locator(".card").all():
                assert card.get_by_role("button", name="No, thanks").bounding_box()["height"] > 20
        assert bot.stop() == 0


def test_a_single_use_codes_till_link_opens_the_till_page_from_the_simulator(tmp_path):
    data = single_use_home(tmp_path, ["SPR-7KQ4M9XH"])
    campaign = data / "campaign.toml"
    # A shop's own wording, the link ending a sentence; valid a month from the reveal, whatever the day.
    text = campaign.read_text().replace(
        EXPIRES,
        'valid_days = 30\ncode_text = "Your code {code} is valid until {expires}. At the till, open {link}."',
    )
    campaign.write_text(text)
    with BotProcess(data, "https://graph.invalid", Mode.LOCAL) as bot:
        with chromium_page(offline_except=bot.url) as page:
            page.goto(bot.url + "/")
            page.fill("#name", "Ada")
            page.click("#get-started")
            page.get_by_role("button", name="Yes! Show me coupon").click()
            page.get_by_role("button", name="Reveal the coupon").click()
            message = page.locator(".bubble.bot", has_text="SPR-7KQ4M9XH")
            link = message.get_by_role("link")
            href = link.get_attribute("href")
            assert re.fullmatch(re.escape(bot.url) + r"/redeem/[\w-]{22}", href)  # without the sentence's "."
            assert message.inner_text().endswith(f"At the till, open {href}.")

            with page.context.expect_page() as opened:
                link.click()
            till = opened.value  # a tab of its own: the conversation stays where it was
            till.get_by_label("Staff PIN").fill(LOCAL_STAFF_PIN)
            till.get_by_role("button", name="Sign in").click()
            expect(till.locator(".state h1")).to_have_text("Valid")
            assert till.locator(".code").inner_text() == "SPR-7KQ4M9XH"
            till.get_by_role("button", name="Redeem now").click()
            expect(till.locator(".state h1")).to_have_text("Redeemed")

            assert page.url == bot.url + "/"
            assert message.is_visible()
            assert page.outside_requests == []
            ada = page.locator("#customers li", has_text="Ada").get_attribute("data-customer")
        assert bot.stop() == 0

    redeemed = [row for row in stored_events(data) if row["event"] == "coupon_redeemed"]
    assert [row["customer_id"] for row in redeemed] == [ada]
    funnel = {r["step"]: r["customers"] for r in analytics.open(data).funnel().to_pylist()}
    assert (funnel["coupon_revealed"], funnel["redeemed"]) == (1, 1)


def assert_receipts_carry_the_platforms_time(customer: str, messages: list[dict], events: list[dict]) -> None:
    """Each receipt's watermark is the platform's time of the last page message it covers, earlier than the
    receipt and than the bot's own stamp of that message (taken once the Send API answered)."""
    platform_ms = {message_digest(m["message_id"]): m["timestamp"] for m in messages}
    mine = [e for e in events if e["customer_id"] == customer]
    stamped = {e["message_digest"]: micros(e["ts"]) for e in mine if e["event"].endswith("_sent")}
    assert set(stamped) == set(platform_ms)
    receipts = [e for e in mine if e["event"] in ("message_delivered", "message_read")]
    assert {e["event"] for e in receipts} == {"message_delivered", "message_read"}
    for receipt in receipts:
        mark = receipt["watermark"]
        if receipt["event"] == "message_delivered":
            assert mark == platform_ms[receipt["message_digest"]], receipt  # the last message delivered
        covered = [mid for mid, ms in platform_ms.items() if ms == mark]
        assert covered, f"{receipt} covers no page message"
        assert mark * 1000 < micros(receipt["ts"])
        assert all(mark * 1000 < stamped[mid] for mid in covered)


def micros(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
