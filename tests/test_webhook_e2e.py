"""The bot end to end: `python -m bot serve` on a real port, signed webhooks over HTTP, a fake Graph API."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from bot.campaign import load_campaign
from bot.events import message_digest
from tests.support import payloads
from tests.support.bot_process import BotProcess, run_bot, stored_events, wait_until_idle
from tests.support.campaigns import customer_of
from tests.support.fake_graph import Answer, FakeGraph, graph_error
from tests.support.home import environment, make_home
from tests.support.paths import MESSENGER_FIXTURES

pytestmark = pytest.mark.e2e


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_home(tmp_path)


@pytest.fixture
def bot(data, graph):
    with BotProcess(data, graph.url) as running:
        yield running


def postbacks(message: dict) -> dict[str, str]:
    """title -> payload of a button template's buttons."""
    return {b["title"]: b["payload"] for b in message["attachment"]["payload"]["buttons"]}


def by_customer(events: list[dict], customer: str) -> list[str]:
    return [e["event"] for e in events if e["customer_id"] == customer]


# -- start-up refused -------------------------------------------------------------------------------------


def refused_start(data: Path, graph: FakeGraph) -> subprocess.CompletedProcess:
    """`python -m bot serve` on `data`, which must refuse to start: its exit and output."""
    result = run_bot("serve", "--port", "9", env=environment(data, PROMOBOT_GRAPH_URL=graph.url))
    assert result.returncode != 0
    return result


def test_a_bad_campaign_stops_start_up_naming_file_and_key(data, graph):
    campaign = data / "campaign.toml"
    campaign.write_text(
        campaign.read_text().replace('reveal = "Reveal the coupon"', 'reveal = "Reveal the coupon, please"')
    )
    result = refused_start(data, graph)

    assert f"{campaign}: coupon.reveal: 25 characters, Messenger allows 20" in result.stderr
    assert "Traceback" not in result.stderr


# -- the conversation --------------------------------------------------------------------------------------


def test_every_step_of_the_conversation(bot, graph, data):
    graph.names["1001"] = "Ada"

    # Ada comes from the QR code at the till, asks for the coupon and reveals it.
    assert (
        bot.post(payloads.envelope(payloads.postback("1001", "GET_STARTED", ref="till-qr"))).status_code
        == 200
    )
    [welcome] = graph.wait_for("1001", 1)
    assert welcome["attachment"]["payload"]["text"].startswith("Hi Ada! ")
    buttons = postbacks(welcome)
    assert list(buttons) == ["Yes! Show me coupon", "No, thanks"]

    bot.post(payloads.envelope(payloads.postback("1001", buttons["Yes! Show me coupon"], mid="m_click1")))
    coupon = graph.wait_for("1001", 2)[1]
    assert coupon["attachment"]["payload"]["text"] == "20% off anything in store until Sunday."
    coupon_sent_at = payloads.now_ms()
    bot.post(
        payloads.envelope(
            payloads.delivery("1001", [graph.sent[1]["message_id"]], coupon_sent_at),
            payloads.read("1001", coupon_sent_at + 1),
        )
    )

    bot.post(
        payloads.envelope(payloads.postback("1001", postbacks(coupon)["Reveal the coupon"], mid="m_click2"))
    )
    assert graph.wait_for("1001", 3)[2] == {"text": "SPRING20"}

    # Bob writes first, then declines: thank-you text and the image the bot serves itself.
    bot.post(payloads.envelope(payloads.text("1002", "hi")))
    no = postbacks(graph.wait_for("1002", 1)[0])["No, thanks"]
    bot.post(payloads.envelope(payloads.postback("1002", no)))
    thanks_text, thanks_image = graph.wait_for("1002", 3)[1:]
    assert thanks_text == {"text": "No problem, thanks for stopping by!"}
    image_url = thanks_image["attachment"]["payload"]["url"]
    assert image_url == f"{bot.url}/media/thanks.png"
    image = httpx.get(image_url)
    assert image.headers["content-type"] == "image/png"
    assert image.content == (data / "thanks.png").read_bytes()
    assert bot.client.get("/media/campaign.toml").status_code == 404

    assert all(s["body"]["messaging_type"] == "RESPONSE" for s in graph.sent)
    wait_until_idle(bot)
    assert bot.stop() == 0  # SIGTERM: events flushed, clean exit

    events = stored_events(data)
    # Sorted: inbound events carry the platform's clock, replies the bot's, so their order may differ.
    assert sorted(by_customer(events, "1001")) == sorted(
        [
            "conversation_started",
            "welcome_sent",
            "coupon_requested",
            "coupon_sent",
            "message_delivered",
            "message_read",
            "coupon_revealed",
            "code_sent",
        ]
    )
    assert sorted(by_customer(events, "1002")) == sorted(
        [
            "text_received",
            "conversation_started",
            "welcome_sent",
            "declined",
            "thanks_sent",
            "thanks_sent",
        ]
    )
    started = events[0]
    assert json.loads(started["detail"])["ref"] == "till-qr"
    sent_ids = {message_digest(s["message_id"]) for s in graph.sent}
    assert {e["message_digest"] for e in events if e["event"].endswith("_sent")} == sent_ids
    delivered = next(e for e in events if e["event"] == "message_delivered")
    assert delivered["message_digest"] == message_digest(graph.sent[1]["message_id"])  # the coupon
    assert not any("m_fake" in str(value) for e in events for value in e.values())  # digests, not the ids
    read = next(e for e in events if e["event"] == "message_read")
    assert (read["watermark"], read["detail"]) == (coupon_sent_at + 1, None)
    assert len({e["event_id"] for e in events}) == len(events)
    assert "Ada" not in bot.log()  # customers' names never reach the logs


def test_a_batched_body_answers_every_entry(bot, graph, data):
    batched = json.loads((MESSENGER_FIXTURES / "yoctol-bottender__batched_2entries.json").read_text())
    for entry in batched["entry"]:  # the real body, from 2017: made recent, or its replies are long expired
        for item in entry["messaging"]:
            item["timestamp"] = payloads.now_ms()
    body = json.dumps(batched).encode()

    assert bot.post(body).status_code == 200

    assert len(graph.wait_for("1412611362105802", 2)) == 2
    wait_until_idle(bot)
    assert bot.stop() == 0
    assert by_customer(stored_events(data), "1412611362105802").count("text_received") == 2


def test_a_redelivered_webhook_is_stored_and_answered_once(bot, graph, data):
    body = payloads.envelope(payloads.postback("1003", "GET_STARTED", mid="m_once"))

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: bot.post(body).status_code, range(4)))
    statuses.append(bot.post(body).status_code)

    assert statuses == [200] * 5
    graph.wait_for("1003", 1)
    wait_until_idle(bot)
    assert bot.stop() == 0
    events = stored_events(data)
    assert by_customer(events, "1003") == ["conversation_started", "welcome_sent"]
    assert len(graph.messages_to("1003")) == 1


def test_many_customers_at_once_are_answered_through_batch_requests(bot, graph, data):
    customers = [str(3000 + i) for i in range(40)]

    def start(customer: str) -> int:
        return bot.post(payloads.envelope(payloads.postback(customer, "GET_STARTED"))).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(start, customers))

    assert statuses == [200] * len(customers)
    welcomes = [graph.wait_for(customer, 1)[0] for customer in customers]
    wait_until_idle(bot)
    assert bot.stop() == 0
    assert max(graph.batches, default=0) > 1  # calls that waited together went out as one request
    # A welcome that went in a batch is the same message as one sent alone.
    assert len({json.dumps(welcome, sort_keys=True) for welcome in welcomes}) == 1
    events = stored_events(data)
    digests = {message_digest(s["message_id"]) for s in graph.sent}
    for customer in customers:
        assert by_customer(events, customer) == ["conversation_started", "welcome_sent"]
    assert {e["message_digest"] for e in events if e["event"] == "welcome_sent"} == digests
    assert len(digests) == len(customers)


def test_receipts_optins_echoes_and_standby_are_acknowledged_never_answered(bot, graph, data):
    for name in (
        "botman-driver-facebook__message_echo.json",
        "botman-driver-facebook__optin_user_ref_no_sender.json",
    ):
        assert bot.post((MESSENGER_FIXTURES / name).read_bytes()).status_code == 200
    standby = json.dumps(
        {"object": "page", "entry": [{"id": "1", "time": 1, "standby": [payloads.text("1004")]}]}
    )
    assert bot.post(standby.encode()).status_code == 200

    wait_until_idle(bot)
    assert bot.stop() == 0
    assert graph.sent == []
    assert stored_events(data) == []


# -- a failing, slow or rate-limiting Graph API ------------------------------------------------------------


def test_transient_graph_failures_are_retried(graph, data):
    graph.script_sends("2001", Answer(status=500, body={}), graph_error(2, status=503, transient=True))
    graph.script_sends("2002", Answer(status=429, body={"error": {"message": "slow down"}}), graph_error(613))
    graph.script_sends("2003", Answer(delay_s=2.5))  # longer than PROMOBOT_GRAPH_TIMEOUT: times out, retried

    # A call that hangs holds up the batch request it travels in: its batch-mates lose one timeout of their
    # deadline (4 timeouts) and still need room for three attempts and their backoff.
    with BotProcess(data, graph.url, PROMOBOT_GRAPH_TIMEOUT="1") as bot:
        for customer in ("2001", "2002", "2003"):
            bot.post(payloads.envelope(payloads.postback(customer, "GET_STARTED")))

        for customer in ("2001", "2002", "2003"):
            graph.wait_for(customer, 1)
        assert graph.attempts["2001"] == 3
        assert graph.attempts["2002"] == 3
        assert graph.attempts["2003"] >= 2
        wait_until_idle(bot)
        assert bot.stop() == 0
    events = stored_events(data)
    for customer in ("2001", "2002"):
        assert by_customer(events, customer) == ["conversation_started", "welcome_sent"]


def test_a_permanent_failure_is_recorded_with_code_and_subcode(bot, graph, data):
    graph.script_sends("2004", graph_error(551, 1545041))

    bot.post(payloads.envelope(payloads.postback("2004", "GET_STARTED")))

    wait_until_idle(bot)
    assert bot.stop() == 0
    assert graph.attempts["2004"] == 1
    [_started, failed] = [e for e in stored_events(data) if e["customer_id"] == "2004"]
    assert failed["event"] == "send_failed"
    assert json.loads(failed["detail"])["code"] == 551
    assert json.loads(failed["detail"])["subcode"] == 1545041


def test_a_failing_profile_falls_back_to_a_neutral_greeting(bot, graph):
    graph.names.update({"2005": "Grace", "2006": "Alan", "2007": "Edsger"})
    graph.script_profile("2005", *[Answer(status=500, body={})] * 100)  # down for good
    graph.script_profile("2006", *[Answer(delay_s=5)] * 100)  # hangs every time
    graph.script_profile("2007", Answer(body={"id": "2007"}))  # answers with no name

    bot.post(payloads.envelope(*(payloads.postback(c, "GET_STARTED") for c in ("2005", "2006", "2007"))))

    for customer in ("2005", "2006", "2007"):
        [welcome] = graph.wait_for(customer, 1)
        assert welcome["attachment"]["payload"]["text"].startswith("Hi there! ")


# -- crashes -----------------------------------------------------------------------------------------------


def test_a_reply_owed_when_the_bot_died_is_sent_after_restart(data, graph):
    # The Graph API hangs, so the clicks are acknowledged but not answered when the bot is killed.
    graph.script_sends("3001", Answer(delay_s=20))
    graph.script_sends("3002", Answer(delay_s=20))
    with BotProcess(data, graph.url, PROMOBOT_GRAPH_TIMEOUT="15") as first:
        assert first.post(payloads.envelope(payloads.postback("3001", "GET_STARTED"))).status_code == 200
        old = payloads.now_ms() - 30_000
        assert (
            first.post(payloads.envelope(payloads.postback("3002", "GET_STARTED", ts=old))).status_code == 200
        )
        first.kill()

    # Restarted with a 10-second limit: 3001's click is fresh and answered, 3002's is too old now.
    with BotProcess(data, graph.url, PROMOBOT_REPLY_MAX_AGE="10") as second:
        graph.wait_for("3001", 1)
        wait_until_idle(second)
        assert second.stop() == 0

    events = stored_events(data)
    assert by_customer(events, "3001") == ["conversation_started", "welcome_sent"]
    assert by_customer(events, "3002") == ["conversation_started", "send_failed"]
    failed = next(e for e in events if e["customer_id"] == "3002" and e["event"] == "send_failed")
    assert "expired" in json.loads(failed["detail"])["reason"]
    assert graph.messages_to("3002") == []


def test_the_server_wakes_its_sender_process_for_each_reply(bot, graph):
    # Left to itself the sender process looks for replies once a second; the server tells it when it has
    # recorded some, so each reply goes out at once. Five in a row all under half a second: by looking alone,
    # one chance in 32. The first reply is not timed: the sender process may still be starting (imports).
    assert bot.post(payloads.envelope(payloads.postback("6099", "GET_STARTED"))).status_code == 200
    graph.wait_for("6099", 1)
    waits = []
    for n in range(5):
        customer = f"60{n:02d}"
        posted = time.monotonic()
        assert bot.post(payloads.envelope(payloads.postback(customer, "GET_STARTED"))).status_code == 200
        graph.wait_for(customer, 1)
        waits.append(time.monotonic() - posted)
    assert max(waits) < 0.5, waits


def test_replies_go_on_when_the_sender_process_dies(bot, graph, data):
    # `python -m bot serve` sends replies from a process of its own; kill it and the server starts another.
    [sender] = psutil.Process(bot.process.pid).children()
    assert "bot.sender" in " ".join(sender.cmdline())
    graph.script_sends("5001", Answer(delay_s=2))  # in flight when the sender dies: sent by the next one
    bot.post(payloads.envelope(payloads.postback("5001", "GET_STARTED")))
    deadline = time.monotonic() + 15
    while graph.attempts.get("5001", 0) == 0:  # the sender is waiting on the Graph API
        assert time.monotonic() < deadline
        time.sleep(0.02)

    sender.kill()
    bot.post(payloads.envelope(payloads.postback("5002", "GET_STARTED")))

    graph.wait_for("5002", 1)
    graph.wait_for("5001", 1, timeout_s=60)  # once the dead sender's lease runs out
    wait_until_idle(bot)
    assert bot.stop() == 0
    assert not psutil.pid_exists(sender.pid) or psutil.Process(sender.pid).status() == psutil.STATUS_ZOMBIE
    events = stored_events(data)
    assert by_customer(events, "5001") == ["conversation_started", "welcome_sent"]
    assert by_customer(events, "5002") == ["conversation_started", "welcome_sent"]


# -- where customers come from, and which variant they see -------------------------------------------------

VARIANTS = """
[variants.A]

[variants.B]
welcome.text = "Hey {first_name}, a coupon is waiting for you. Shall we show it?"
thanks.image_url = "thanks-b.png"
"""


def test_an_ad_and_a_link_forcing_a_variant_are_recorded_and_answered_in_its_texts(data, graph):
    (data / "campaign.toml").write_text((data / "campaign.toml").read_text() + VARIANTS)
    (data / "thanks-b.png").write_bytes((data / "thanks.png").read_bytes() + b"B")
    campaign = load_campaign(data / "campaign.toml", data_dir=data)
    ad_customer, linked = customer_of("B", campaign), customer_of("A", campaign)
    graph.names.update({ad_customer: "Ada", linked: "Bob"})
    ad = {"source": "ADS", "type": "OPEN_THREAD", "ad_id": "6045246247433"}
    ad["ads_context_data"] = {"ad_title": "Spring sale", "photo_url": "https://scontent.example/1.jpg"}
    from_ad = payloads.postback(ad_customer, "GET_STARTED")
    from_ad["postback"]["referral"] = ad
    # Bob, whom the hash gives A, opens the till's link to variant B in the thread he already has.
    forced = payloads.referral(linked, "spring-sale.till.B")

    with BotProcess(data, graph.url) as bot:
        assert bot.post(payloads.envelope(from_ad, forced)).status_code == 200
        [ad_welcome] = graph.wait_for(ad_customer, 1)
        [linked_welcome] = graph.wait_for(linked, 1)
        bot.post(payloads.envelope(payloads.postback(linked, postbacks(linked_welcome)["No, thanks"])))
        thanks_text, thanks_image = graph.wait_for(linked, 3)[1:]
        image = httpx.get(thanks_image["attachment"]["payload"]["url"])
        wait_until_idle(bot)
        assert bot.stop() == 0

    assert (
        ad_welcome["attachment"]["payload"]["text"]
        == "Hey Ada, a coupon is waiting for you. Shall we show it?"
    )
    assert (
        linked_welcome["attachment"]["payload"]["text"]
        == "Hey Bob, a coupon is waiting for you. Shall we show it?"
    )
    assert set(postbacks(linked_welcome).values()) == {"spring-sale|B|yes", "spring-sale|B|no"}
    assert thanks_text == {"text": "No problem, thanks for stopping by!"}
    assert thanks_image["attachment"]["payload"]["url"] == f"{bot.url}/media/thanks-b.png"
    assert image.content == (data / "thanks-b.png").read_bytes()

    events = stored_events(data)
    rows = {(e["customer_id"], e["event"]): e for e in events}
    started, welcome = rows[ad_customer, "conversation_started"], rows[ad_customer, "welcome_sent"]
    assert (started["source"], started["variant"], welcome["source"], welcome["variant"]) == (
        "ad:6045246247433",
        "B",
        "ad:6045246247433",
        "B",
    )
    assert json.loads(started["detail"]) == {
        "trigger": "postback",
        "ref": None,
        "source": "ADS",
        "type": "OPEN_THREAD",
        "ad_id": "6045246247433",
        "ad_title": "Spring sale",
        "variants": [["A", 0.5], ["B", 0.5]],
    }
    started, welcome = rows[linked, "conversation_started"], rows[linked, "welcome_sent"]
    assert (started["source"], started["variant"], welcome["source"], welcome["variant"]) == (
        "till",
        "B",
        "till",
        "B",
    )
    assert json.loads(started["detail"]) == {
        "trigger": "referral",
        "ref": "spring-sale.till.B",
        "source": "SHORTLINK",
        "type": "OPEN_THREAD",
        "variant_forced": True,
        "variants": [["A", 0.5], ["B", 0.5]],
    }
    declined = rows[linked, "declined"]
    assert (declined["variant"], declined["button"], declined["source"]) == ("B", "spring-sale|B|no", None)
    assert {e["variant"] for e in events if e["customer_id"] == linked and e["event"] == "thanks_sent"} == {
        "B"
    }


def test_a_variants_missing_image_stops_start_up_naming_file_and_key(data, graph):
    campaign = data / "campaign.toml"
    campaign.write_text(campaign.read_text() + VARIANTS)  # thanks-b.png is not there
    result = refused_start(data, graph)

    assert f"{campaign}: variants.B.thanks.image_url: no file {data / 'thanks-b.png'}" in result.stderr
    assert "Traceback" not in result.stderr
