"""The till page in real Chromium at a phone's size, against `python -m bot serve`: a cashier opens the
customer's link, signs in with the staff PIN, redeems the code once; with JavaScript off, and nothing loaded
from anywhere but the bot.

PROMOBOT_SCREENSHOTS=1 also rewrites docs/till.png, the README's picture of the *Valid* card.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bot.campaign import load_campaign
from bot.facts import ButtonStep
from bot.flow import button_payload
from bot.till import CLIENT_FAILURES
from tests.support import payloads
from tests.support.bot_process import BotProcess, stored_events
from tests.support.browser import ARTIFACTS, CHROMIUM, FLAGS
from tests.support.fake_graph import FakeGraph
from tests.support.home import EXPIRES, single_use_home
from tests.support.paths import REPO

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

PIN = "58293107"
CODE = "SPR-7KQ4M9XH"
PHONE = {"width": 390, "height": 844}
SCREENSHOT = REPO / "docs" / "till.png"


@pytest.fixture
def bot(tmp_path: Path, graph: FakeGraph) -> Iterator[BotProcess]:
    data = single_use_home(tmp_path, [CODE, "SPR-3HWN8PTD"])
    campaign = data / "campaign.toml"
    # Valid for a month from the reveal, so that the card reads *Valid* whatever day the tests run.
    campaign.write_text(campaign.read_text().replace(EXPIRES, "valid_days = 30"))
    with BotProcess(data, graph.url, PROMOBOT_STAFF_PIN=PIN) as running:
        yield running


def till_link(bot: BotProcess, graph: FakeGraph, customer: str) -> str:
    """Reveal the coupon as `customer` (a signed webhook); returns the till link of the message they got."""
    reveal = button_payload(load_campaign(bot.data / "campaign.toml"), ButtonStep.REVEAL)
    body = payloads.envelope(payloads.postback(customer, reveal, mid=f"m_reveal_{customer}"))
    assert bot.post(body).status_code == 200
    message, _qr_code = graph.wait_for(customer, 2)
    [link] = re.findall(r"https?://\S+/redeem/\S+", message["text"])
    return link


@contextmanager
def phone() -> Iterator:
    """A page in a fresh Chromium with a phone's screen and JavaScript off; `page.requests` lists every URL
    the browser asked for."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = browser.new_context(
                viewport=PHONE,
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
                java_script_enabled=False,
            )
            requests: list[str] = []
            context.on("request", lambda request: requests.append(request.url))
            page = context.new_page()
            page.requests = requests
            yield page
        finally:
            browser.close()


def shows(page, state: str) -> None:
    """Wait (a few seconds at most) until the page's card says `state`."""
    expect(page.locator(".state h1")).to_have_text(state)


def test_a_cashier_opens_the_customers_link_signs_in_and_redeems_the_code_once(bot, graph):
    link = till_link(bot, graph, "9401")
    assert link.startswith(bot.url + "/redeem/")

    with phone() as page:
        page.goto(link)
        page.get_by_label("Staff PIN").fill(PIN)
        page.get_by_role("button", name="Sign in").click()
        shows(page, "Valid")
        assert page.locator(".code").inner_text() == CODE
        page.wait_for_load_state("load")  # laid out at the phone's width, not mid-way
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "till.png"))
        if os.environ.get("PROMOBOT_SCREENSHOTS"):
            page.screenshot(path=str(SCREENSHOT))

        page.get_by_role("button", name="Redeem now").click()
        shows(page, "Redeemed")
        page.reload()  # sends the form again: the code is not redeemed twice
        shows(page, "Already used")
        page.goto(link)  # the link again, later: someone else showing a screenshot of the customer's
        shows(page, "Already used")
        assert re.search(r"Used at \d\d:\d\d on ", page.locator(".state").inner_text())

        assert page.locator("script").count() == 0
        assert page.requests
        assert [url for url in page.requests if not url.startswith(bot.url + "/")] == []
    assert bot.stop() == 0

    redeemed = [row for row in stored_events(bot.data) if row["event"] == "coupon_redeemed"]
    assert [row["customer_id"] for row in redeemed] == ["9401"]
    assert PIN not in bot.log()


def test_a_wrong_pin_is_refused_and_five_lock_the_till_for_a_while(bot, graph):
    link = till_link(bot, graph, "9402")

    with phone() as page:
        page.goto(link)
        answers = [sign_in(page, bot, "0000") for _ in range(CLIENT_FAILURES)]
        assert answers == [(403, ["Wrong PIN."])] * CLIENT_FAILURES
        status, errors = sign_in(page, bot, PIN)  # even the right one, for a while
        assert status == 429, errors
        [error] = errors
        assert re.fullmatch(r"Too many wrong PINs: try again in \d+ minutes\.", error)
        page.goto(link)
        expect(page.get_by_label("Staff PIN")).to_be_visible()  # still not signed in
        assert [url for url in page.requests if not url.startswith(bot.url + "/")] == []


def sign_in(page, bot: BotProcess, pin: str) -> tuple[int, list[str]]:
    """Type `pin` on the sign-in page and press *Sign in*; the answer's status and the errors it shows."""
    page.get_by_label("Staff PIN").fill(pin)
    with page.expect_response(bot.url + "/redeem/pin") as answer:
        page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state("load")
    return answer.value.status, page.locator(".error").all_inner_texts()
