"""The till page, in-process: the staff PIN, CSRF, the code's state at a glance, redeeming once."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request

from bot.app import create_app
from bot.campaign import load_campaign
from bot.database import Database
from bot.facts import ButtonStep, EventName
from bot.flow import button_payload
from bot.redemption import find_code, redeem
from bot.till import (
    ALL_FAILURES,
    CLIENT_FAILURES,
    CSRF_COOKIE,
    DEVICE_COOKIE,
    SESSION_COOKIE,
    client_address,
)
from tests.support import payloads
from tests.support.bot_process import run_bot, stored_events
from tests.support.builders import Clock
from tests.support.campaigns import CODES, reveal
from tests.support.campaigns import SINGLE_USE as CAMPAIGN
from tests.support.home import EXPIRES, LAST_DAY, shown_day, single_use_home
from tests.support.in_process import post, running, settings_for
from tests.support.mock_graph import Platform

HANDED_OUT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # the bot's clock when a test's codes are handed out

pytestmark = pytest.mark.anyio
PIN = "482613"


def csrf(page: httpx.Response) -> str:
    """The CSRF token of the page's forms (the same as its cookie)."""
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


async def handed_out(client: httpx.AsyncClient, platform: Platform, data, customer: str) -> str:
    """Reveal the coupon as `customer`; returns the path of the till link they got."""
    reveal = button_payload(load_campaign(data / "campaign.toml"), ButtonStep.REVEAL)
    body = payloads.envelope(payloads.postback(customer, reveal, mid=f"m_reveal_{customer}"))
    assert (await post(client, body)).status_code == 200
    message, _qr_code = await platform.wait_for(customer, 2)
    return "/redeem/" + message["text"].rsplit("/redeem/", 1)[1]


async def sign_in(client: httpx.AsyncClient, path: str, pin: str = PIN) -> httpx.Response:
    form = await client.get(path)
    return await client.post(
        "/redeem/pin", data={"pin": pin, "csrf": csrf(form), "next": path}, follow_redirects=True
    )


def till_app(data: Path, **env: str) -> tuple[Starlette, Platform]:
    """The bot on `data` with the staff PIN (and `env`), and the Graph API it sends to."""
    platform = Platform()
    settings = settings_for(data, PROMOBOT_STAFF_PIN=PIN, **env)
    return create_app(settings, graph_transport=httpx.MockTransport(platform)), platform


async def test_the_thanks_goes_out_as_soon_as_the_code_is_redeemed(tmp_path):
    # Left to itself the sender looks for replies once a second; a redemption tells it of the thanks. Three
    # in a row all under half a second: by looking alone, one chance in 8.
    codes = ["SPR-AAAA2222", "SPR-BBBB3333", "SPR-CCCC4444"]
    home = single_use_home(tmp_path, codes)
    campaign = home / "campaign.toml"
    campaign.write_text(campaign.read_text().replace("[thanks]", 'redeemed_text = "Enjoy!"\n\n[thanks]'))
    app, platform = till_app(home)
    waits = []
    async with running(app) as client:
        for customer in ("9321", "9322", "9323"):
            link = await handed_out(client, platform, home, customer)
            page = await sign_in(client, link)
            used = time.monotonic()
            await client.post(
                "/redeem/use", data={"token": link.removeprefix("/redeem/"), "csrf": csrf(page)}
            )
            await platform.wait_for(customer, 3)
            waits.append(time.monotonic() - used)
    assert max(waits) < 0.5, waits


@pytest.fixture
def till(tmp_path):
    data = single_use_home(tmp_path, ["SPR-AAAA2222", "SPR-BBBB3333"])
    return *till_app(data), data


async def test_a_cashier_signs_in_sees_the_code_valid_redeems_it_then_sees_it_used(till, caplog):
    app, platform, data = till
    caplog.set_level(logging.DEBUG)
    async with running(app) as client:
        link = await handed_out(client, platform, data, "9301")

        asked = await client.get(link)
        assert "Staff PIN" in asked.text
        assert asked.headers["cache-control"] == "no-store"
        valid = await sign_in(client, link)
        assert valid.status_code == 200
        assert "<h1>Valid</h1>" in valid.text
        assert "SPR-AAAA2222" in valid.text
        assert f"Valid until {shown_day(LAST_DAY)}" in valid.text

        token = link.removeprefix("/redeem/")
        redeemed = await client.post("/redeem/use", data={"token": token, "csrf": csrf(valid)})
        assert "<h1>Redeemed</h1>" in redeemed.text
        again = await client.post("/redeem/use", data={"token": token, "csrf": csrf(valid)})
        assert "<h1>Already used</h1>" in again.text
        typed = await client.get("/redeem", params={"code": "spr-aaaa2222"})  # typed, in lower case
        assert "<h1>Already used</h1>" in typed.text

        database = app.state.runtime.database
        events = await asyncio.to_thread(lambda: database.next_batch(1000).events)
    redemptions = [event for event in events if event.event == EventName.COUPON_REDEEMED]
    assert [(event.customer_id, event.campaign_id) for event in redemptions] == [("9301", "spring-sale")]
    assert PIN not in caplog.text


async def test_a_code_never_handed_out_and_a_made_up_link_are_unknown(till):
    app, _, _ = till
    async with running(app) as client:
        assert "<h1>Unknown code</h1>" in (await sign_in(client, "/redeem?code=SPR-BBBB3333")).text
        assert "<h1>Unknown code</h1>" in (await client.get("/redeem/not-a-token")).text
        assert "<h1>Unknown code</h1>" in (await client.get("/redeem", params={"code": "NOPE-1234"})).text


async def test_an_expired_code_is_shown_expired_and_cannot_be_redeemed(tmp_path):
    data = single_use_home(tmp_path, ["SPR-AAAA2222"])
    text = (data / "campaign.toml").read_text().replace(EXPIRES, 'expires = "2020-01-31"')
    (data / "campaign.toml").write_text(text)
    app, platform = till_app(data)
    async with running(app) as client:
        link = await handed_out(client, platform, data, "9302")
        page = await sign_in(client, link)
        assert "<h1>Expired</h1>" in page.text
        assert "valid until 31 January 2020" in page.text
        token, token_csrf = link.removeprefix("/redeem/"), client.cookies[CSRF_COOKIE]
        refused = await client.post("/redeem/use", data={"token": token, "csrf": token_csrf})
        assert "<h1>Expired</h1>" in refused.text


async def test_wrong_pins_are_refused_then_rate_limited(till):
    app, _, _ = till
    async with running(app) as client:
        for _ in range(CLIENT_FAILURES):
            wrong = await sign_in(client, "/redeem", pin="0000")
            assert wrong.status_code == 403
            assert "Wrong PIN." in wrong.text
        limited = await sign_in(client, "/redeem", pin=PIN)  # even the right one, for a while
        assert limited.status_code == 429
        assert "Too many wrong PINs" in limited.text


def client_at(app: Starlette, address: str, forwarded_for: str | None = None) -> httpx.AsyncClient:
    """A client of `app` (already started) from `address`; `forwarded_for`: the X-Forwarded-For header
    that reaches the bot, as the proxies in front made it."""
    transport = httpx.ASGITransport(app=app, client=(address, 40_000))
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for is not None else None
    return httpx.AsyncClient(transport=transport, base_url="http://promobot.test", headers=headers)


async def signed_in(client: httpx.AsyncClient, pin: str = PIN) -> int:
    """Sign in to the till afresh (a new shift); the status of the answer, 200 once signed in."""
    client.cookies.delete(SESSION_COOKIE)
    answer = await sign_in(client, "/redeem", pin=pin)
    assert (answer.status_code == 200) == ("Staff sign-in" not in answer.text)
    return answer.status_code


async def guess_from_everywhere(app: Starlette) -> None:
    """Wrong PINs from many addresses, up to the limit for every address together."""
    for n in range(ALL_FAILURES // CLIENT_FAILURES):
        async with client_at(app, f"203.0.113.{n}") as guesser:
            for _ in range(CLIENT_FAILURES):
                assert await signed_in(guesser, pin="000000") == 403


async def test_wrong_pins_from_everywhere_do_not_lock_out_a_phone_that_signed_in_before(till):
    # Whoever tried thirty PINs from six addresses (or five from behind the proxy the shop's phones share)
    # locked every member of staff out of the till, again and again.
    app, _, _ = till
    started = app.router.lifespan_context(app)
    async with started, client_at(app, "198.51.100.7") as phone, client_at(app, "198.51.100.8") as forged:
        assert await signed_in(phone) == 200  # yesterday's shift: the phone is known since
        device = phone.cookies[DEVICE_COOKIE]
        forged.cookies.set(DEVICE_COOKIE, device.split(".")[0] + "." + "0" * 64, path="/redeem")
        await guess_from_everywhere(app)
        async with client_at(app, "198.51.100.9") as new_phone:
            assert await signed_in(new_phone) == 429  # an unknown device waits
        assert await signed_in(forged) == 429  # and so does one with a device cookie not ours
        assert await signed_in(phone) == 200
        assert phone.cookies[DEVICE_COOKIE] == device  # the same device still


ROUTER = "10.1.2.3"  # the proxy in front (Heroku's router): every request's connection comes from it


@pytest.mark.parametrize(("proxies", "new_phone_waits"), [("0", True), ("1", False)])
async def test_behind_a_proxy_wrong_pins_count_against_the_address_it_was_reached_from(
    tmp_path, proxies, new_phone_waits
):
    # On Heroku every request came from the router's address: five wrong PINs from anyone kept every new
    # phone out of the till for five minutes. With PROMOBOT_PROXIES=1 the guesser waits alone, whatever
    # they put in X-Forwarded-For themselves (the router adds the address it was reached from after it).
    app, _ = till_app(single_use_home(tmp_path, ["SPR-AAAA2222"]), PROMOBOT_PROXIES=proxies)
    async with app.router.lifespan_context(app):
        for n in range(CLIENT_FAILURES):
            async with client_at(app, ROUTER, f"192.0.2.{n}, 203.0.113.66") as guesser:
                assert await signed_in(guesser, pin="000000") == 403
        async with client_at(app, ROUTER, "192.0.2.99, 203.0.113.66") as guesser:
            assert await signed_in(guesser) == 429
        async with client_at(app, ROUTER, "198.51.100.20") as new_phone:
            assert await signed_in(new_phone) == (429 if new_phone_waits else 200)


def test_the_client_address_is_the_one_the_first_proxy_was_reached_from():
    def address(proxies: int, *forwarded_for: str) -> str:
        headers = [(b"x-forwarded-for", value.encode()) for value in forwarded_for]
        scope = {"type": "http", "headers": headers, "client": ("10.1.2.3", 40_000)}
        return client_address(Request(scope), proxies)

    assert address(0, "192.0.2.1") == "10.1.2.3"  # no proxy in front: the header is the client's own
    assert address(1) == "10.1.2.3"  # not through the proxy
    assert address(1, "192.0.2.1, 203.0.113.66") == "203.0.113.66"
    assert address(1, "192.0.2.1", "203.0.113.66") == "203.0.113.66"  # headers in the order they came
    assert address(2, "192.0.2.1, 203.0.113.66 , 10.9.9.9") == "203.0.113.66"
    assert address(2, "10.9.9.9") == "10.1.2.3"  # shorter than the proxies make it: not believed


async def test_a_known_phone_has_its_own_limit_and_a_new_pin_makes_it_unknown(tmp_path):
    data = single_use_home(tmp_path, ["SPR-AAAA2222"])
    app, _ = till_app(data)
    async with app.router.lifespan_context(app), client_at(app, "198.51.100.7") as phone:
        assert await signed_in(phone) == 200
        for _ in range(CLIENT_FAILURES):
            assert await signed_in(phone, pin="000000") == 403
        assert await signed_in(phone) == 429  # its own wrong PINs still count
        device = phone.cookies[DEVICE_COOKIE]
    new_pin = create_app(
        settings_for(data, PROMOBOT_STAFF_PIN="905132"), graph_transport=httpx.MockTransport(Platform())
    )
    async with new_pin.router.lifespan_context(new_pin):
        await guess_from_everywhere(new_pin)
        async with client_at(new_pin, "198.51.100.7") as phone:
            phone.cookies.set(DEVICE_COOKIE, device, path="/redeem")
            assert await signed_in(phone, pin="905132") == 429  # known to the old PIN only


async def test_a_form_without_its_csrf_token_is_refused(till):
    app, platform, data = till
    async with running(app) as client:
        link = await handed_out(client, platform, data, "9303")
        await client.get(link)
        forged = await client.post("/redeem/pin", data={"pin": PIN, "next": link})
        assert forged.status_code == 403
        page = await sign_in(client, link)
        forged_use = await client.post(
            "/redeem/use", data={"token": link.removeprefix("/redeem/"), "csrf": "x"}
        )
        assert forged_use.status_code == 403
        assert "<h1>Valid</h1>" in (await client.get(link)).text  # still unused
        assert page.status_code == 200


@pytest.mark.parametrize(
    "session",
    [
        pytest.param("\u00b2.0" * 2, id="a digit int() cannot read"),
        pytest.param("1" * 5_000 + ".0", id="more digits than int() reads"),
        pytest.param("99999999999999999999.0", id="a year past any clock"),
    ],
)
async def test_a_forged_session_cookie_is_the_sign_in_page_not_a_server_error(till, session):
    app, platform, data = till
    async with running(app) as client:
        link = await handed_out(client, platform, data, "9304")
        # Sent as raw bytes: a cookie's value is whatever a client puts there.
        cookie = {"Cookie": f"{SESSION_COOKIE}={session}".encode("latin-1")}
        for path in ("/redeem", link):
            answer = await client.get(path, headers=cookie)  # type: ignore[arg-type]
            assert answer.status_code == 200
            assert "Staff sign-in" in answer.text


async def test_without_a_staff_pin_the_till_is_off(tmp_path):
    data = single_use_home(tmp_path, ["SPR-AAAA2222"])
    app = create_app(settings_for(data), graph_transport=httpx.MockTransport(Platform()))
    async with running(app) as client:
        off = await client.get("/redeem")
    assert off.status_code == 503
    assert "PROMOBOT_STAFF_PIN" in off.text


def test_two_tills_pressing_at_once_redeem_a_code_once(postgres_database_url, tmp_path):
    tills = [Database.open(postgres_database_url, tmp_path) for _ in range(2)]
    tills[0].add_codes(CAMPAIGN.id, CODES, lambda revealed_at: None)  # codes that never expire
    asyncio.run(tills[0].record(*reveal("7401")))
    token = find_code(tills[0], campaign_id=CAMPAIGN.id, code=CODES[0]).token
    start = threading.Barrier(2)
    results = []

    def press(database: Database) -> None:
        start.wait()
        results.append(redeem(database, token))

    threads = [threading.Thread(target=press, args=(database,)) for database in tills]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    redeemed = tills[0].next_batch(1000).events
    for database in tills:
        database.close()

    assert sum(result is not None for result in results) == 1
    assert [event.event for event in redeemed].count(EventName.COUPON_REDEEMED) == 1


def test_a_till_export_marks_codes_used_once_and_says_what_it_did(tmp_path):
    data = single_use_home(tmp_path, ["SPR-AAAA2222", "SPR-BBBB3333", "SPR-CCCC4444"])
    database = Database.open(None, data, clock=Clock(HANDED_OUT))
    campaign = load_campaign(data / "campaign.toml")
    database.add_codes(campaign.id, ["SPR-AAAA2222", "SPR-BBBB3333", "SPR-CCCC4444"], lambda at: None)
    for customer in ("7501", "7502"):  # two codes handed out, the third not
        asyncio.run(database.record(*reveal(customer)))
    redeem(database, find_code(database, campaign_id=campaign.id, code="SPR-BBBB3333").token)  # at the till
    database.close()
    export = tmp_path / "till-export.csv"
    export.write_text(
        "code,redeemed_at,amount\nSPR-AAAA2222,2026-11-28T15:02:00+01:00,12.50\nSPR-BBBB3333,,9\n"
        "SPR-CCCC4444,,3\nNOPE-0000,,1\n"
    )
    env = {"PROMOBOT_DATA": str(data), "PROMOBOT_CAMPAIGN": str(data / "campaign.toml")}

    first = run_bot("redeem", "--csv", str(export), env=env)
    again = run_bot("redeem", "--csv", str(export), env=env)

    assert first.stdout.strip() == "1 redeemed now, 1 already redeemed, 2 unknown", first.stderr
    assert again.stdout.strip() == "0 redeemed now, 2 already redeemed, 2 unknown"
    redeemed = [row for row in stored_events(data) if row["event"] == "coupon_redeemed"]
    assert sorted((row["customer_id"], row["ts"].isoformat()) for row in redeemed)[0] == (
        "7501",
        "2026-11-28T14:02:00+00:00",
    )
    assert len(redeemed) == 2  # the till's and the export's


def export_of(tmp_path: Path, *times: str) -> tuple[Path, dict[str, str]]:
    """A store whose codes were handed out at HANDED_OUT to 7601, 7602…, and a till's export of them used
    at `times`, in order; the export's path and the environment of `python -m bot redeem`."""
    codes = [f"SPR-{n:04d}AAAA" for n in range(len(times))]
    data = single_use_home(tmp_path, codes)
    database = Database.open(None, data, clock=Clock(HANDED_OUT))
    database.add_codes(load_campaign(data / "campaign.toml").id, codes, lambda at: None)
    for n in range(len(times)):
        asyncio.run(database.record(*reveal(str(7601 + n))))
    database.close()
    export = tmp_path / "till-export.csv"
    export.write_text("code,redeemed_at\n" + "".join(f"{c},{t}\n" for c, t in zip(codes, times, strict=True)))
    return export, {"PROMOBOT_DATA": str(data), "PROMOBOT_CAMPAIGN": str(data / "campaign.toml")}


def redeemed_at(env: dict[str, str]) -> list[str]:
    rows = stored_events(Path(env["PROMOBOT_DATA"]))
    return sorted(row["ts"].isoformat() for row in rows if row["event"] == "coupon_redeemed")


def test_a_till_export_in_local_time_without_a_zone_is_refused_then_read_in_the_zone_given(tmp_path):
    # A till in New York writes 08:30 for 13:30 UTC, an hour and a half after the code was handed out. Read
    # as UTC, it is before the code existed: stored, it would never count as used at the till.
    export, env = export_of(tmp_path, "2026-11-28T08:30:00")

    refused = run_bot("redeem", "--csv", str(export), env=env)
    assert refused.returncode == 1
    assert "SPR-0000AAAA at 2026-11-28T08:30:00+00:00 (before the code was handed out)" in refused.stderr
    assert "--tz" in refused.stderr
    assert redeemed_at(env) == []

    read = run_bot("redeem", "--csv", str(export), "--tz", "America/New_York", env=env)
    assert read.stdout.strip() == "1 redeemed now, 0 already redeemed, 0 unknown", read.stderr
    assert redeemed_at(env) == ["2026-11-28T13:30:00+00:00"]


def test_a_till_export_with_a_time_to_come_is_refused_and_records_nothing(tmp_path):
    # A till east of UTC writing local times without a zone: its latest redemptions read as hours ahead.
    export, env = export_of(tmp_path, "2026-11-28T13:00:00Z", "2099-01-01T09:00:00")

    refused = run_bot("redeem", "--csv", str(export), env=env)

    assert refused.returncode == 1
    assert "SPR-0001AAAA at 2099-01-01T09:00:00+00:00 (later than now)" in refused.stderr
    assert redeemed_at(env) == []  # not even the first, whose time is right


def test_a_till_clock_minutes_behind_counts_the_code_used_when_it_was_handed_out(tmp_path):
    export, env = export_of(tmp_path, "2026-11-28T11:58:00Z")  # 2 minutes before the hand-out

    read = run_bot("redeem", "--csv", str(export), env=env)

    assert read.stdout.strip() == "1 redeemed now, 0 already redeemed, 0 unknown", read.stderr
    assert redeemed_at(env) == [HANDED_OUT.isoformat()]


def test_a_till_export_without_a_code_column_is_refused_naming_the_file(tmp_path):
    data = single_use_home(tmp_path, ["SPR-AAAA2222"])
    export = tmp_path / "export.csv"
    export.write_text("voucher,when\nSPR-AAAA2222,\n")
    env = {"PROMOBOT_DATA": str(data), "PROMOBOT_CAMPAIGN": str(data / "campaign.toml")}
    result = run_bot("redeem", "--csv", str(export), env=env)
    assert result.returncode == 1
    assert f"{export}: line 1: no `code` column" in result.stderr


async def test_redeeming_thanks_the_customer_only_when_the_campaign_says_so(tmp_path):
    outcomes = {}
    for says in (False, True):
        home = single_use_home(tmp_path / str(says), ["SPR-AAAA2222"])
        if says:
            campaign = home / "campaign.toml"
            campaign.write_text(
                campaign.read_text().replace(
                    "[thanks]", 'redeemed_text = "Enjoy, and see you soon!"\n\n[thanks]'
                )
            )
        app, platform = till_app(home)
        async with running(app) as client:
            link = await handed_out(client, platform, home, "9311")
            page = await sign_in(client, link)
            await client.post(
                "/redeem/use", data={"token": link.removeprefix("/redeem/"), "csrf": csrf(page)}
            )
            if says:
                await platform.wait_for("9311", 3)
            else:
                await asyncio.sleep(0.5)  # time enough for a message that should not come
        outcomes[says] = platform.messages["9311"][2:]
    assert outcomes == {False: [], True: [{"text": "Enjoy, and see you soon!"}]}
