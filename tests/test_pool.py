"""Single-use codes in the store: handed out once each, the same to a customer every time, on both engines."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import threading
import time
from datetime import UTC, date, datetime, timedelta

import pytest

from bot import pool
from bot.campaign import parse_campaign
from bot.codes import ALPHABET, CodesError, generate, load_codes
from bot.database import Database
from bot.facts import EventName
from bot.flow import IssuedCode, ReplyKind, render_code
from bot.migrations import MIGRATIONS
from bot.redemption import pool_status
from tests.support.campaigns import CODES, reveal, single_use
from tests.support.campaigns import SINGLE_USE as CAMPAIGN

LEASE = timedelta(seconds=30)


def owed(database: Database) -> list:
    return database.claim(10_000, LEASE)


async def reveal_all(databases: list[Database], customers: list[str]) -> None:
    """Every customer's reveal at once, spread over the instances (`databases`)."""
    await asyncio.gather(
        *(databases[n % len(databases)].record(*reveal(customer)) for n, customer in enumerate(customers))
    )


def test_100_reveals_at_once_on_50_codes_hand_each_code_out_once(database_url, tmp_path) -> None:
    # Four instances on PostgreSQL (one SQLite file is one process's: one instance there).
    instances = 1 if database_url is None else 4
    databases = [Database.open(database_url, tmp_path) for _ in range(instances)]
    for database in databases:
        database.add_codes(CAMPAIGN.id, CODES, CAMPAIGN.code_expiry)
    customers = [str(7000 + n) for n in range(100)]

    asyncio.run(reveal_all(databases, customers))
    replies = owed(databases[0])

    codes = [reply.issued.code for reply in replies if reply.kind is ReplyKind.CODE]
    assert len(codes) == 50
    assert sorted(codes) == CODES  # every code handed out, none twice
    assert collections.Counter(reply.kind for reply in replies) == {
        ReplyKind.CODE: 50,
        ReplyKind.ALL_GONE: 50,
    }
    assert len({reply.issued.token for reply in replies if reply.issued}) == 50
    assert pool_status(databases[0], CAMPAIGN.id).free == 0
    batch = databases[0].next_batch(10_000)
    empty = [event for event in batch.events if event.event == EventName.COUPON_POOL_EMPTY]
    gone = {reply.customer_id for reply in replies if reply.kind is ReplyKind.ALL_GONE}
    assert {event.customer_id for event in empty} == gone
    for database in databases:
        database.close()


def test_a_customer_gets_the_same_code_on_every_reveal_and_redelivery(database_url, tmp_path) -> None:
    database = Database.open(database_url, tmp_path)
    database.add_codes(CAMPAIGN.id, CODES, CAMPAIGN.code_expiry)

    asyncio.run(database.record(*reveal("7001")))
    [first] = owed(database)
    redelivered = asyncio.run(database.record(*reveal("7001")))  # the same webhook again
    asyncio.run(database.record(*reveal("7001", mid="m_reveal_again")))  # a second click
    [again] = owed(database)
    database.close()

    assert redelivered == []
    assert again.issued == first.issued
    assert again.answers.event_id != first.answers.event_id


def test_a_code_another_instance_hands_the_customer_meanwhile_is_the_one_they_get(
    postgres_database_url, tmp_path
) -> None:
    # Two instances hand the same customer a code at once. The second's code waits on the unique index for
    # the first's transaction, and fails when it commits: the customer keeps the first's code, and the
    # second's goes back to the pool.
    first, second = (Database.open(postgres_database_url, tmp_path) for _ in range(2))
    for database in (first, second):
        database.add_codes(CAMPAIGN.id, CODES, CAMPAIGN.code_expiry)
    clicked = reveal("7001")
    events = clicked[0]
    answered: list = []
    with first.transaction() as cursor:
        issued = pool.issue(
            cursor,
            CAMPAIGN.id,
            "7001",
            page_id=events[0].page_id,
            variant=None,
            now_us=0,
            expires_us=None,
            engine=first.engine,
        )
        meanwhile = threading.Thread(target=lambda: answered.append(asyncio.run(second.record(*clicked))))
        meanwhile.start()
        deadline = time.monotonic() + 10
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event = 'transactionid'"
        )
        # Asked outside the transaction, whose view of pg_stat_activity would not change.
        while second.query(waiting) != [(1,)]:
            assert time.monotonic() < deadline, "the second instance's code never waited on the first's"
            time.sleep(0.01)
    meanwhile.join(10)

    assert answered == [events]
    [code] = [reply for reply in owed(second) if reply.kind is ReplyKind.CODE]
    assert issued is not None
    assert code.issued.code == issued[0]
    assert pool_status(second, CAMPAIGN.id).free == len(CODES) - 1
    for database in (first, second):
        database.close()


def test_codes_added_to_the_file_join_the_pool_after_those_it_had(database_url, tmp_path) -> None:
    database = Database.open(database_url, tmp_path)
    database.add_codes(CAMPAIGN.id, CODES[:2], CAMPAIGN.code_expiry)
    status = database.add_codes(CAMPAIGN.id, [*CODES[:2], "NEW-CODE"], CAMPAIGN.code_expiry)  # a restart
    for customer in ("7101", "7102", "7103"):
        asyncio.run(database.record(*reveal(customer)))
    replies = sorted(owed(database), key=lambda reply: reply.customer_id)
    database.close()

    assert (status.total, status.free) == (3, 3)
    assert [reply.issued.code for reply in replies] == [*CODES[:2], "NEW-CODE"]


def test_an_outbox_of_the_first_schema_is_sent_after_the_upgrade(tmp_path) -> None:
    path = tmp_path / "promobot.sqlite3"
    Database.open(f"sqlite:///{path}", tmp_path, migrations=MIGRATIONS[:1]).close()
    # A code reply the first release owed, as it wrote it.
    [event], _ = reveal("7201")
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO outbox (reply_id, kind, ordinal, due_at, event_id, ts, page_id, customer_id,"
            " campaign_id, event, button) VALUES (?, 'code', 0, 0, ?, 0, ?, ?, ?, ?, ?)",
            (
                f"{event.event_id}.k",
                event.event_id,
                event.page_id,
                "7201",
                event.campaign_id,
                "coupon_revealed",
                event.button,
            ),
        )

    database = Database.open(f"sqlite:///{path}", tmp_path)
    [reply] = owed(database)
    database.close()
    assert (reply.kind, reply.issued, reply.customer_id, reply.sent_id) == (
        ReplyKind.CODE,
        None,
        "7201",
        f"{event.event_id}.k",
    )


def test_a_code_is_valid_through_its_last_day_in_the_campaigns_time_zone() -> None:
    revealed = datetime(2026, 3, 14, 23, 30, tzinfo=UTC)  # already the 15th in Paris
    paris = parse_campaign({**single_use(valid_days=7), "timezone": "Europe/Paris"})
    fixed = parse_campaign(single_use(expires="2026-12-31"))

    assert paris.code_expiry(revealed) == datetime(2026, 3, 22, 23, 0, tzinfo=UTC)  # midnight in Paris, CET
    assert fixed.code_expiry(revealed) == datetime(2027, 1, 1, tzinfo=UTC)
    issued = IssuedCode("SPR-ABCD", "tok", paris.code_expiry(revealed))
    text = render_code(paris, issued, "https://bot.example")["text"]
    assert text == (
        "Your code: SPR-ABCD\nValid until: 22 March 2026\nAt the till, show this link: https://bot.example/redeem/tok"
    )


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (lambda c: c["coupon"].pop("all_gone"), "coupon.all_gone", "missing"),
        (lambda c: c["coupon"].update(code="SPRING20"), "coupon.codes", "not both"),
        (lambda c: c["coupon"].update(codes="../codes.csv"), "coupon.codes", "inside the data directory"),
        (lambda c: c["coupon"].update(valid_days=0), "coupon.valid_days", "from 1 to 366"),
        (lambda c: c["coupon"].update(valid_days=7, expires="2026-12-31"), "coupon.valid_days", "not both"),
        (lambda c: c["coupon"].update(expires="31/12/2026"), "coupon.expires", "is not a date"),
        (lambda c: c["coupon"].update(code_text="{coupon}"), "coupon.code_text", "unknown placeholder"),
        (lambda c: c.update(timezone="Mars/Olympus"), "timezone", "not a time zone"),
    ],
)
def test_a_bad_single_use_setting_is_refused_naming_the_key(change, key, reason) -> None:
    raw = single_use()
    change(raw)
    with pytest.raises(ValueError, match=key) as refused:
        parse_campaign(raw, where="data/campaign.toml")
    assert str(refused.value).startswith(f"data/campaign.toml: {key}: ")
    assert reason in str(refused.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("code\n", "no codes in it"),
        ("", "no codes in it"),
        ("code\nSPR-AAAA\nSPR-BBBB\nSPR-AAAA\n", "line 4: 'SPR-AAAA' repeats line 2"),
        ("code\nSPR-AAAA\nSPR BBBB\n", "line 3: 'SPR BBBB' is not a code"),
        ("code,value\nSPR-AAAA,1\n", "line 1: 'code,value' is not a code"),
    ],
)
def test_a_bad_codes_file_is_refused_naming_the_file_and_line(tmp_path, text, reason) -> None:
    path = tmp_path / "spring-codes.csv"
    path.write_text(text)
    with pytest.raises(CodesError) as refused:
        load_codes(path)
    assert str(refused.value).startswith(f"{path}: ")
    assert reason in str(refused.value)


def test_a_codes_file_saved_by_a_spreadsheet_with_a_byte_order_mark_is_read(tmp_path) -> None:
    # A spreadsheet's "CSV UTF-8" starts with a byte order mark, and ends its lines with CRLF.
    codes = tmp_path / "codes.csv"
    codes.write_bytes(b"\xef\xbb\xbfcode\r\nAAA-111\r\nBBB-222\r\n")

    assert load_codes(codes) == ["AAA-111", "BBB-222"]


def test_a_missing_codes_file_is_refused_naming_it(tmp_path) -> None:
    with pytest.raises(CodesError, match="no such codes file"):
        load_codes(tmp_path / "nope.csv")


def test_generated_codes_are_unique_and_free_of_look_alikes() -> None:
    codes = generate(20_000, prefix="SPR-", length=8)
    assert len(set(codes)) == 20_000
    assert all(code.startswith("SPR-") and len(code) == 12 for code in codes)
    assert set("".join(code[4:] for code in codes)) == set(ALPHABET)
    assert not set("O0I1L") & set(ALPHABET)
    assert date.today()  # the generator needs no clock
