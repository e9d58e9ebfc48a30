"""Forgetting a customer: the transactional store (SQLite, PostgreSQL) and the event files (a local directory,
S3) keep nothing of theirs, everyone else's rows stay as they were, analytics stop counting them; Meta's data
deletion callback, and `python -m bot forget`."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

import analytics
from bot import privacy
from bot.app import create_app
from bot.database import Database
from bot.deletions import FORGOTTEN_PREFIX, deletion_request
from bot.events import Event
from bot.facts import EventName
from bot.flow import ReplyKind
from bot.flusher import DELETION_DELAY, Flusher, flush_once
from bot.recipients import create_broadcast
from bot.redemption import pool_status
from bot.rows import RequestStatus
from bot.store import FileStore, write_events
from tests.support import payloads
from tests.support.bot_process import run_bot
from tests.support.campaigns import CODES, act, reveal
from tests.support.campaigns import SINGLE_USE as CAMPAIGN
from tests.support.home import APP_SECRET, make_home
from tests.support.in_process import running, settings_for
from tests.support.mock_graph import platform
from tests.support.stores import opened

VICTIM = "7001"
# "70011" starts with the victim's id: only the victim's own rows may go.
OTHERS = ("7002", "7003", "70011")
DAY_1 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
DAY_2 = DAY_1 + timedelta(days=1)
AUTUMN = "autumn-sale"


def stored_event(customer: str, n: int, name: EventName, ts: datetime, campaign: str) -> Event:
    return Event(
        event_id=f"{customer}.{int(ts.timestamp() * 1000) + n}.{name}",
        ts=ts + timedelta(seconds=n),
        page_id="111899832631525",
        customer_id=customer,
        campaign_id=campaign,
        event=name,
    )


def journey(customer: str, campaign: str) -> list[Event]:
    """Reached, requested and was sent the coupon on day 1; revealed it on day 2."""
    return [
        stored_event(customer, 0, EventName.WELCOME_SENT, DAY_1, campaign),
        stored_event(customer, 5, EventName.COUPON_REQUESTED, DAY_1, campaign),
        stored_event(customer, 6, EventName.COUPON_SENT, DAY_1, campaign),
        stored_event(customer, 1, EventName.COUPON_REVEALED, DAY_2, campaign),
    ]


def write_history(files: FileStore) -> None:
    """Five event files: two days of two campaigns (two writers), each with the victim's rows; and one
    file of others only."""
    everyone = (VICTIM, *OTHERS)
    write_events(files, [e for c in everyone for e in journey(c, CAMPAIGN.id)], "writer-a-00000001")
    write_events(files, [e for c in everyone for e in journey(c, AUTUMN)], "writer-b-00000001")
    write_events(files, [e for c in OTHERS for e in journey(c, "winter-sale")[:1]], "writer-c-00000001")


def file_rows(files: FileStore) -> collections.Counter:
    """Every stored row (event files, duplicates counted), as tuples of its values."""
    rows: collections.Counter = collections.Counter()
    for relative in files.list("events"):
        for row in files.read_table(relative).to_pylist():
            rows[tuple(row.values())] += 1
    return rows


def customer_of(row: tuple) -> str:
    return row[3]  # FILE_SCHEMA's fourth column


def rows_naming(database: Database, customer: str) -> dict[str, int]:
    """How many rows of each table of the transactional store name the customer."""
    prefix = f"{customer}.%"
    counts = {}
    for table in ("events", "outbox", "customers", "codes", "deletion_requests", "broadcast_recipients"):
        ((counts[table],),) = database.query(
            f"SELECT count(*) FROM {table} WHERE customer_id = ?", (customer,)
        )
    ((counts["seen"],),) = database.query("SELECT count(*) FROM seen WHERE event_id LIKE ?", (prefix,))
    return counts


def funnel(events: analytics.Events, campaign: str) -> dict[str, int]:
    table = events.funnel(campaign=campaign, start=DAY_1.date(), end=DAY_2.date())
    return dict(zip(table.column("step").to_pylist(), table.column("customers").to_pylist(), strict=True))


@dataclass
class Shop:
    """A shop's two stores with the victim and the others in every place promobot keeps customers."""

    database: Database
    files: FileStore

    async def fill(self) -> None:
        self.database.add_codes(CAMPAIGN.id, CODES, CAMPAIGN.code_expiry)
        write_history(self.files)
        for customer in (VICTIM, *OTHERS):
            # seen marks, buffered events, codes, replies owed, their row of customers
            await self.database.record(*reveal(customer))
        # A broadcast took them all in its audience.
        create_broadcast(self.database, CAMPAIGN.id, 60)
        # A flusher numbered the first events (the victim's among them) and has not written them yet.
        assert self.database.next_batch(3) is not None


@pytest.fixture
def database(database_url: str | None, tmp_path: Path) -> Iterator[Database]:
    with opened(database_url, tmp_path / "state") as database:
        yield database


@pytest.fixture(params=["local", "s3"])
def files(request: pytest.FixtureRequest, tmp_path: Path) -> FileStore:
    if request.param == "s3":
        return FileStore(f"s3://{request.getfixturevalue('bucket')}/shop")
    return FileStore(str(tmp_path / "data"))


def test_a_forgotten_customer_is_nowhere_and_everyone_else_is_as_before(database, files):
    # Given the victim in the buffer (numbered and not), the outbox, seen marks, a code, five event files
    shop = Shop(database, files)
    asyncio.run(shop.fill())
    kept = ("events", "outbox", "customers", "codes", "seen", "broadcast_recipients")
    assert all(rows_naming(database, VICTIM)[t] for t in kept)
    others_before = {t: rows_naming(database, c)[t] for c in OTHERS for t in ("events", "outbox", "seen")}
    before = file_rows(files)
    untouched = {r: files.read_bytes(r) for r in files.list("events") if "writer-c" in r}
    [(victims_code,)] = database.query("SELECT code FROM codes WHERE customer_id = ?", (VICTIM,))
    free_before = pool_status(database, CAMPAIGN.id).free
    events = analytics.open(files.data)
    funnel_before = {campaign: funnel(events, campaign) for campaign in (CAMPAIGN.id, AUTUMN)}
    assert [steps["reached"] for steps in funnel_before.values()] == [1 + len(OTHERS)] * 2

    # When they are forgotten
    removal = privacy.forget(database, files, VICTIM, settle_s=0)

    # Then no row of theirs is left in the transactional store
    assert rows_naming(database, VICTIM) == dict.fromkeys((*kept, "deletion_requests"), 0)
    assert (removal.rows["customers"], removal.rows["codes"], removal.rows["seen"]) == (1, 1, 1)
    assert {
        t: rows_naming(database, c)[t] for c in OTHERS for t in ("events", "outbox", "seen")
    } == others_before
    # their code stays handed out, to nobody
    [(holder,)] = database.query(
        "SELECT customer_id FROM codes WHERE campaign_id = ? AND code = ?", (CAMPAIGN.id, victims_code)
    )
    assert holder.startswith(FORGOTTEN_PREFIX)
    assert pool_status(database, CAMPAIGN.id).free == free_before
    # nor in the event files, where everyone else's rows are the same, once each
    after = file_rows(files)
    assert after == collections.Counter({row: n for row, n in before.items() if customer_of(row) != VICTIM})
    assert removal.file_rows == sum(n for row, n in before.items() if customer_of(row) == VICTIM) == 8
    assert removal.files == 4
    assert {r: files.read_bytes(r) for r in untouched} == untouched  # a file without them is not rewritten
    # analytics count exactly one customer fewer at every step they had reached (everyone's journey is alike)
    if files.is_local:
        assert events.changed()  # the listing sees the rewritten files
    else:
        events.refresh()
    for campaign, steps in funnel_before.items():
        assert funnel(events, campaign) == {
            step: n - 1 if n == 1 + len(OTHERS) else n for step, n in steps.items()
        }

    # And the buffered events, flushed later, bring none of theirs back
    flush_once(database, files)
    flushed = file_rows(files)
    assert not [row for row in flushed if customer_of(row) == VICTIM]
    assert {customer_of(row) for row in flushed - after} == set(OTHERS)

    # And forgetting again finds nothing
    again = privacy.forget(database, files, VICTIM, settle_s=0)
    assert (again.total, again.files) == (0, 0)


class Crash(Exception):
    pass


def crash_after_first(relative: str) -> None:
    raise Crash(relative)


@pytest.mark.parametrize("files", ["local", "s3"], indirect=True)
def test_a_forget_that_crashes_midway_and_runs_again_leaves_every_row_once(tmp_path, files):
    with opened(None, tmp_path / "state") as database:
        asyncio.run(Shop(database, files).fill())
        before = file_rows(files)

        with pytest.raises(Crash):
            privacy.forget(database, files, VICTIM, settle_s=0, after_file=crash_after_first)
        midway = file_rows(files)
        assert [row for row in midway if customer_of(row) == VICTIM]  # some files still hold their rows
        assert max(midway.values()) == 1

        privacy.forget(database, files, VICTIM, settle_s=0)

    assert file_rows(files) == collections.Counter(
        {row: n for row, n in before.items() if customer_of(row) != VICTIM}
    )


def test_a_request_is_done_later_and_keeps_no_trace_of_whose_it_was(tmp_path):
    files = FileStore(str(tmp_path / "data"))
    with opened(None, tmp_path / "state") as database:
        asyncio.run(Shop(database, files).fill())

        code = privacy.request(database, VICTIM, privacy.Reason.CUSTOMER)
        pending = deletion_request(database, code)
        assert pending is not None
        assert pending.status is RequestStatus.PENDING
        unknown = privacy.request(database, "9999", privacy.Reason.OPERATOR)

        assert privacy.process_pending(database, files, settle_s=0) == 2
        done, nothing = deletion_request(database, code), deletion_request(database, unknown)
        assert database.query("SELECT customer_id FROM deletion_requests") == [(None,), (None,)]
    assert done is not None
    assert done.status is RequestStatus.DONE
    assert done.done_at is not None
    assert json.loads(done.removed or "{}")["file_rows"] == 8
    assert nothing is not None
    assert nothing.status is RequestStatus.NOT_FOUND
    assert not [row for row in file_rows(files) if customer_of(row) == VICTIM]


def test_the_flusher_carries_out_a_request_a_crash_left_pending(tmp_path):
    files = FileStore(str(tmp_path / "data"))
    with opened(None, tmp_path / "state") as database:
        asyncio.run(Shop(database, files).fill())
        code = privacy.request(database, VICTIM, privacy.Reason.OPERATOR)  # and the process died
        database.clock = lambda: datetime.now(UTC) + DELETION_DELAY

        Flusher(database, files, prune_every_s=3600).close()  # a new process's first round

        done = deletion_request(database, code)
    assert done is not None
    assert done.status is RequestStatus.DONE
    assert not [row for row in file_rows(files) if customer_of(row) == VICTIM]


def test_a_customer_who_writes_delete_my_data_is_answered_then_forgotten(tmp_path):
    files = FileStore(str(tmp_path / "data"))
    with opened(None, tmp_path / "state") as database:
        asyncio.run(Shop(database, files).fill())
        events, replies = act(payloads.text(VICTIM, "Delete my data!", mid="m_delete"), campaign=CAMPAIGN)
        assert [event.event for event in events][-1] is EventName.DELETION_REQUESTED

        asyncio.run(database.record(events, replies))

        # the request is recorded with the words' events, and the answer owed
        [(code, status)] = database.query("SELECT code, status FROM deletion_requests")
        assert status == RequestStatus.PENDING
        owed = database.query("SELECT kind FROM outbox WHERE customer_id = ?", (VICTIM,))
        assert (str(ReplyKind.DELETED),) in owed
        # a flush right away leaves them: their answer is on its way
        Flusher(database, files, prune_every_s=3600).close()
        assert deletion_request(database, code).status is RequestStatus.PENDING
        # once it has had time to go out, they are forgotten
        database.clock = lambda: datetime.now(UTC) + DELETION_DELAY
        Flusher(database, files, prune_every_s=3600).close()
        assert deletion_request(database, code).status is RequestStatus.DONE
        assert rows_naming(database, VICTIM)["events"] == 0
    assert not [row for row in file_rows(files) if customer_of(row) == VICTIM]


# -- Meta's data deletion callback ---------------------------------------------------------------------------


def signed(user_id: str, secret: str = APP_SECRET) -> dict[str, str]:
    payload = {"algorithm": "HMAC-SHA256", "expires": 0, "issued_at": int(time.time()), "user_id": user_id}
    return {"signed_request": privacy.sign_request(payload, secret)}


@pytest.mark.anyio
async def test_the_deletion_callback_answers_a_status_url_and_code_and_deletes(tmp_path):
    data = make_home(tmp_path)
    files = FileStore(str(data))
    write_history(files)
    app = create_app(
        settings_for(data, PROMOBOT_PUBLIC_URL="https://shop.example"),
        graph_transport=httpx.MockTransport(platform),
    )
    async with running(app) as client:
        answer = await client.post("/data-deletion", data=signed(VICTIM))
        assert answer.status_code == 200
        body = answer.json()
        code = body["confirmation_code"]
        assert code.isalnum()
        assert len(code) >= 16
        assert body["url"] == f"https://shop.example/privacy/deletion/{code}"

        deadline = time.monotonic() + 30
        while "Done" not in (page := (await client.get(f"/privacy/deletion/{code}")).text):
            assert time.monotonic() < deadline, page
            await asyncio.sleep(0.05)
        assert VICTIM not in page
        assert "events in the event files: 8" in page
        assert (await client.get("/privacy/deletion/NOSUCHCODE")).status_code == 404
    assert not [row for row in file_rows(files) if customer_of(row) == VICTIM]


@pytest.mark.anyio
async def test_a_forged_deletion_callback_is_refused_and_deletes_nothing(tmp_path):
    data = make_home(tmp_path)
    files = FileStore(str(data))
    write_history(files)
    before = file_rows(files)
    app = create_app(settings_for(data), graph_transport=httpx.MockTransport(platform))
    genuine = signed(VICTIM)["signed_request"]
    signature, payload = genuine.split(".")
    other_payload = signed(OTHERS[0])["signed_request"].split(".")[1]
    async with running(app) as client:
        for form in (
            signed(VICTIM, secret="not-the-app-secret"),
            {"signed_request": f"{signature}.{other_payload}"},  # another user under the victim's signature
            {"signed_request": payload},
            {"signed_request": "%%%.%%%"},
            {},
        ):
            answer = await client.post("/data-deletion", data=form)
            assert answer.status_code == 400, form
        recorded = app.state.runtime.database.query("SELECT count(*) FROM deletion_requests")
    assert recorded == [(0,)]
    assert file_rows(files) == before


@pytest.mark.anyio
async def test_a_deletion_callback_nested_too_deeply_is_400_signed_or_not(tmp_path):
    data = make_home(tmp_path)
    app = create_app(settings_for(data), graph_transport=httpx.MockTransport(platform))
    nested = base64.urlsafe_b64encode(b"[" * 40_000).rstrip(b"=").decode()
    forged = f"{nested[:43]}.{nested}"
    genuine = privacy.sign_request({}, APP_SECRET).split(".")[0]  # a signature of something else
    proof = hmac.new(APP_SECRET.encode(), nested.encode(), hashlib.sha256).digest()
    signed_nested = f"{base64.urlsafe_b64encode(proof).rstrip(b'=').decode()}.{nested}"
    async with running(app) as client:
        for signed_request in (forged, f"{genuine}.{nested}", signed_nested):
            answer = await client.post("/data-deletion", data={"signed_request": signed_request})
            assert answer.status_code == 400, answer.text
        assert (await client.get("/healthz")).status_code == 200


@pytest.mark.anyio
async def test_an_oversized_deletion_callback_is_413_before_it_is_read_whole(tmp_path):
    # The route is public: anyone can post to it, so a body is cut off at the limit, never held whole.
    data = make_home(tmp_path)
    app = create_app(settings_for(data), graph_transport=httpx.MockTransport(platform))
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(256):  # 256 MiB, if nothing stops it
            read += 1 << 20
            yield b"a" * (1 << 20)

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with running(app) as client:
        streamed = await client.post("/data-deletion", content=endless(), headers=form)
        declared = await client.post(
            "/data-deletion", content=b"signed_request=x", headers={**form, "Content-Length": str(1 << 30)}
        )
    assert streamed.status_code == 413
    assert read <= 2 << 20
    assert declared.status_code == 413


@pytest.mark.anyio
async def test_a_callback_for_an_id_the_bot_never_kept_says_so(tmp_path):
    data = make_home(tmp_path)
    app = create_app(settings_for(data), graph_transport=httpx.MockTransport(platform))
    async with running(app) as client:
        code = (await client.post("/data-deletion", data=signed("10158000000000001"))).json()[
            "confirmation_code"
        ]
        deadline = time.monotonic() + 30
        while "Done" not in (page := (await client.get(f"/privacy/deletion/{code}")).text):
            assert time.monotonic() < deadline, page
            await asyncio.sleep(0.05)
    assert "nothing was kept under the id this request named" in page


# -- the command line ----------------------------------------------------------------------------------------


def forget_command(data: Path, *args: str, answer: str = "") -> subprocess.CompletedProcess:
    return run_bot("forget", *args, env={"PROMOBOT_DATA": str(data)}, answer=answer)


def test_forget_from_the_command_line_asks_first_then_prints_what_went(tmp_path):
    data = tmp_path / "data"
    database = Database.open(None, data)
    try:
        asyncio.run(Shop(database, FileStore(str(data))).fill())
    finally:
        database.close()

    declined = forget_command(data, VICTIM, answer="n\n")
    assert declined.returncode == 1
    assert "nothing deleted" in declined.stdout
    unanswered = forget_command(data, VICTIM, answer="")  # input closed: a script that forgot --yes
    assert unanswered.returncode == 1
    assert "nothing deleted" in unanswered.stdout
    assert "Traceback" not in unanswered.stderr, unanswered.stderr
    assert [row for row in file_rows(FileStore(str(data))) if customer_of(row) == VICTIM]

    done = forget_command(data, VICTIM, "--yes")
    assert done.returncode == 0, done.stderr
    counts = {
        line.split(maxsplit=1)[1]: int(line.split(maxsplit=1)[0]) for line in done.stdout.strip().splitlines()
    }
    assert counts["events in the event files"] == 8
    assert counts["event files rewritten"] == 4
    assert counts["single-use codes handed out, no longer naming their customer"] == 1
    assert not [row for row in file_rows(FileStore(str(data))) if customer_of(row) == VICTIM]
