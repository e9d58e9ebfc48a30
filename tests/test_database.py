"""The transactional store (bot.database), on SQLite and on PostgreSQL: every test runs on both engines."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from bot.database import Batch, Database, DatabaseError, out_of_room
from bot.events import Event, detail_json, message_digest
from bot.facts import EventName
from bot.flow import Reply, ReplyKind, plan_replies
from bot.migrations import MIGRATIONS, Migration, MigrationError
from tests.support import builders
from tests.support.builders import BOT_T0, PLATFORM_T0, Clock
from tests.support.paths import REPO
from tests.support.stores import Store

PAGE, CAMPAIGN = builders.PAGE, builders.CAMPAIGN
LEASE = timedelta(seconds=30)

# Two more schema steps, as a later release would add them: the second needs the first's table.
NEXT = max(step.version for step in MIGRATIONS) + 1
STEP_TWO = Migration(NEXT, "tills", ("CREATE TABLE tills (till_id TEXT PRIMARY KEY, name TEXT NOT NULL)",))
STEP_THREE = Migration(
    NEXT + 1, "first till", ("INSERT INTO tills (till_id, name) VALUES ('t1', 'front desk')",)
)
# A step that takes a while, so that processes opening together overlap while it runs.
SLOW_STEP = Migration(
    NEXT,
    "numbers",
    (
        "CREATE TABLE numbers (n INTEGER NOT NULL)",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 50000)"
        " INSERT INTO numbers SELECT n FROM r",
    ),
)


customer_event = functools.partial(builders.customer_event, start=PLATFORM_T0)


def webhook(customer: str, n: int = 0) -> list[Event]:
    """A Get Started click, and a read receipt in the same notification (a receipt calls for no reply)."""
    return [
        customer_event(customer, n, detail=detail_json(trigger="postback"), source="till"),
        customer_event(customer, n + 1, EventName.MESSAGE_READ, watermark=1773489600000 + n * 1000),
    ]


def replies_to(events: list[Event]) -> list[Reply]:
    return [reply for event in events for reply in plan_replies(event)]


async def record(database: Database, events: list[Event]) -> list[Event]:
    return await database.record(events, replies_to(events))


# -- migrations ----------------------------------------------------------------------------------------------


def test_an_empty_database_gets_the_whole_schema(store: Store) -> None:
    store.open().close()

    every_step = [(step.version,) for step in MIGRATIONS]
    assert store.rows("SELECT version FROM schema_migrations ORDER BY version") == every_step
    database = store.open()  # and opening again applies nothing twice
    database.close()
    assert store.rows("SELECT version FROM schema_migrations ORDER BY version") == every_step
    assert len(database.store_id) == 12


def test_a_later_release_upgrades_the_schema_once_and_in_order(store: Store) -> None:
    store.open().close()  # a database of the first release

    store.open(migrations=(*MIGRATIONS, STEP_THREE, STEP_TWO)).close()  # listed out of order
    store.open(migrations=(*MIGRATIONS, STEP_TWO, STEP_THREE)).close()

    versions = [
        version for (version,) in store.rows("SELECT version FROM schema_migrations ORDER BY version")
    ]
    assert versions == [*(step.version for step in MIGRATIONS), NEXT, NEXT + 1]
    assert store.rows("SELECT till_id, name FROM tills") == [("t1", "front desk")]


def test_a_database_of_a_newer_release_is_refused(store: Store) -> None:
    store.open(migrations=(*MIGRATIONS, STEP_TWO)).close()

    with pytest.raises(MigrationError, match=f"schema version {NEXT}"):
        store.open()


OPEN_AT_THE_SIGNAL = """
import sys, time
from pathlib import Path
from bot.database import Database
from bot.migrations import MIGRATIONS, Migration

url, data_dir, gate = (sys.argv[1] or None), Path(sys.argv[2]), Path(sys.argv[3])
step = Migration(max(s.version for s in MIGRATIONS) + 1, sys.argv[4], tuple(sys.argv[5:]))
print("ready", flush=True)
deadline = time.monotonic() + 60
while not gate.exists():
    if time.monotonic() > deadline:
        sys.exit("no start signal")
Database.open(url, data_dir, migrations=(*MIGRATIONS, step)).close()
"""


def test_processes_opening_at_once_apply_a_step_once(store: Store, tmp_path: Path) -> None:
    store.open().close()  # at the current version
    gate = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                OPEN_AT_THE_SIGNAL,
                store.url or "",
                str(store.data_dir),
                str(gate),
                SLOW_STEP.name,
                *SLOW_STEP.statements,
            ],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    assert [process.stdout.readline() for process in processes] == ["ready\n"] * 4
    gate.touch()  # all four are past their imports: they open within a millisecond or so
    outcomes = [(process.wait(timeout=120), process.stderr.read()) for process in processes]

    assert outcomes == [(0, "")] * 4
    assert store.rows("SELECT count(*) FROM numbers") == [(50000,)]
    versions = [
        version for (version,) in store.rows("SELECT version FROM schema_migrations ORDER BY version")
    ]
    assert versions == [*(step.version for step in MIGRATIONS), NEXT]


def test_an_unknown_database_url_is_refused_naming_its_scheme(tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="'mysql' is not supported"):
        Database.open("mysql://shop@db/promobot", tmp_path)


# -- recording webhooks --------------------------------------------------------------------------------------


def test_a_webhook_is_recorded_once_and_answered_once(store: Store, database: Database) -> None:
    events = webhook("c1")

    first = asyncio.run(record(database, events))
    again = asyncio.run(record(database, events))  # the platform redelivers it
    other = store.open()  # another process
    elsewhere = asyncio.run(record(other, events))
    other.close()

    assert (first, again, elsewhere) == (events, [], [])
    assert [reply.sent_id for reply in database.claim(10, LEASE)] == [f"{events[0].event_id}.w"]
    assert store.rows("SELECT count(*) FROM events") == [(2,)]


def test_a_webhook_partly_seen_before_records_only_its_new_events(database: Database) -> None:
    earlier, later = webhook("c1", 0), webhook("c1", 10)

    asyncio.run(record(database, earlier))
    new = asyncio.run(record(database, [earlier[1], *later]))

    assert new == later
    assert [reply.answers for reply in database.claim(10, LEASE)] == [earlier[0], later[0]]


def test_concurrent_webhooks_share_transactions_and_each_returns_once_committed(store: Store) -> None:
    database = store.open()
    committed_when_returned = []

    async def one(customer: str) -> list[Event]:
        events = webhook(customer)
        new = await record(database, events)
        ids = store.rows(f"SELECT event_id FROM seen WHERE event_id = '{events[0].event_id}'")
        committed_when_returned.append(ids == [(events[0].event_id,)])
        return new

    async def hundred() -> list[list[Event]]:
        return await asyncio.gather(*(one(f"c{n}") for n in range(100)))

    news = asyncio.run(hundred())
    database.close()

    assert news == [webhook(f"c{n}") for n in range(100)]
    assert all(committed_when_returned)
    assert database.commits < 10  # 100 webhooks, a handful of transactions
    assert store.rows("SELECT count(*) FROM events") == [(200,)]
    assert store.rows("SELECT count(*) FROM outbox") == [(100,)]


def test_one_webhook_delivered_to_two_instances_at_once_is_recorded_once(store: Store) -> None:
    first, second = store.open(), store.open()
    events = [event for n in range(50) for event in webhook(f"c{n}")]

    async def both() -> list[list[Event]]:
        return await asyncio.gather(record(first, events), record(second, events))

    news = asyncio.run(both())
    first.close()
    second.close()

    assert sorted(news, key=len) == [[], events]
    assert store.rows("SELECT count(*) FROM events") == [(100,)]
    assert store.rows("SELECT count(*) FROM outbox") == [(50,)]


def refuse_an_event_id(store: Store, event_id: str) -> None:
    """A trigger that fails a transaction buffering this event: a stand-in for a full disk, a lost server."""
    if store.url is None:
        store.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.event_id = '{event_id}'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    else:
        store.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" IF NEW.event_id = '{event_id}' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$",
            "CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse()",
        )


def test_a_webhook_whose_transaction_fails_leaves_nothing_so_its_redelivery_counts(
    store: Store, database: Database
) -> None:
    events = webhook("c1")
    refuse_an_event_id(store, events[1].event_id)

    with pytest.raises(DatabaseError, match="refused"):
        asyncio.run(record(database, events))
    assert store.rows("SELECT count(*) FROM seen") == [(0,)]
    assert store.rows("SELECT count(*) FROM outbox") == [(0,)]

    store.execute("DROP TRIGGER refuse" if store.url is None else "DROP TRIGGER refuse ON events")
    assert asyncio.run(record(database, events)) == events  # the platform's redelivery


def test_every_column_of_an_event_comes_back_as_it_was_recorded(database: Database) -> None:
    clicked = customer_event(
        "c1",
        5,
        EventName.DECLINED,
        variant="B",
        button=f"{CAMPAIGN}|B|no",
        detail=detail_json(ref="till-qr", source="SHORTLINK"),
    )
    delivered = customer_event(
        "c1", 6, EventName.MESSAGE_DELIVERED, message_digest=message_digest("m_1"), watermark=1773489605000
    )

    asyncio.run(record(database, [clicked, delivered]))

    assert database.next_batch(10).events == (clicked, delivered)
    assert [reply.answers for reply in database.claim(10, LEASE)] == [clicked]


def test_seen_marks_are_kept_for_the_retention_then_pruned(store: Store, database: Database) -> None:
    old, recent = webhook("c1"), webhook("c2")
    asyncio.run(record(database, old))
    store.clock.advance(timedelta(days=7, seconds=1))
    asyncio.run(record(database, recent))
    store.clock.advance(timedelta(hours=1))

    assert database.prune_seen(timedelta(days=7)) == 2

    assert asyncio.run(record(database, recent)) == []
    assert store.rows("SELECT count(*) FROM seen") == [(2,)]


# -- the outbox ----------------------------------------------------------------------------------------------


def test_concurrent_claimers_never_get_the_same_reply(store: Store, database: Database) -> None:
    asyncio.run(record(database, [event for n in range(400) for event in webhook(f"c{n}")]))
    claimers = [store.open() for _ in range(6)]  # several instances, each claiming from several threads
    claimed: list[str] = []
    start = threading.Barrier(12)

    def claim_until_none_left(claimer: Database) -> None:
        start.wait()
        deadline = time.monotonic() + 60
        while (replies := claimer.claim(7, LEASE)) and time.monotonic() < deadline:
            claimed.extend(reply.sent_id for reply in replies)

    threads = [threading.Thread(target=claim_until_none_left, args=(c,), daemon=True) for c in claimers * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    for claimer in claimers:
        claimer.close()

    assert len(claimed) == 400
    assert len(set(claimed)) == 400


def test_a_reply_whose_sender_died_is_claimed_again_once_its_lease_runs_out(
    store: Store, database: Database
) -> None:
    asyncio.run(record(database, webhook("c1")))
    (reply,) = database.claim(10, LEASE)

    store.clock.advance(LEASE - timedelta(seconds=1))
    assert database.claim(10, LEASE) == []
    store.clock.advance(timedelta(seconds=1))
    assert database.claim(10, LEASE) == [reply]
    assert store.rows("SELECT claims FROM outbox") == [(2,)]


def test_a_completed_reply_is_never_claimed_again_and_its_outcome_is_buffered_once(
    store: Store, database: Database
) -> None:
    asyncio.run(record(database, webhook("c1")))
    (reply,) = database.claim(10, LEASE)
    outcome = reply.sent("m_sent_1", store.clock())

    assert database.complete(reply.sent_id, outcome) is True
    assert database.complete(reply.sent_id, outcome) is False  # a second sender, whose lease had run out
    store.clock.advance(timedelta(days=1))
    assert database.claim(10, LEASE) == []
    buffered = database.next_batch(10).events
    assert [event for event in buffered if event.event_id == outcome.event_id] == [outcome]


def test_a_reply_to_retry_is_claimed_again_from_the_time_given(store: Store, database: Database) -> None:
    asyncio.run(record(database, webhook("c1")))
    (reply,) = database.claim(10, LEASE)

    database.retry(reply.sent_id, store.clock() + timedelta(seconds=5))

    assert database.claim(10, LEASE) == []
    store.clock.advance(timedelta(seconds=5))
    assert database.claim(10, LEASE) == [reply]


def test_the_replies_to_one_event_go_out_in_order(store: Store, database: Database) -> None:
    declined = customer_event("c1", 5, EventName.DECLINED, button=f"{CAMPAIGN}||no")
    asyncio.run(record(database, [declined]))

    (text,) = database.claim(10, LEASE)
    assert database.claim(10, LEASE) == []  # the image waits for the text, whoever claims it
    database.complete(text.sent_id, text.sent("m_sent_1", store.clock()))
    (image,) = database.claim(10, LEASE)

    assert (text.kind, image.kind) == (ReplyKind.THANKS_TEXT, ReplyKind.THANKS_IMAGE)


# -- flush batches -------------------------------------------------------------------------------------------


FLUSH_AND_DIE = """
import json, os, sys
from pathlib import Path
from bot.database import Database

database = Database.open(sys.argv[1] or None, Path(sys.argv[2]))
batch = database.next_batch(int(sys.argv[4]))
rows = [event.event_id for event in batch.events]
name = Path(sys.argv[3]) / f"{database.store_id}-{batch.number}.json"
name.write_text(json.dumps(rows))
os._exit(9)  # killed after writing the file, before `flushed`
"""


def write_batch(directory: Path, store_id: str, batch: Batch) -> None:
    """What the flusher does with a batch: one file, named by the batch."""
    name = directory / f"{store_id}-{batch.number}.json"
    name.write_text(json.dumps([event.event_id for event in batch.events]))


def test_a_flush_killed_after_writing_its_file_writes_the_same_file_again(
    store: Store, database: Database, tmp_path: Path
) -> None:
    early = [event for n in range(5) for event in webhook(f"c{n}")]
    asyncio.run(record(database, early))
    files = tmp_path / "files"
    files.mkdir()

    died = subprocess.run(
        [sys.executable, "-c", FLUSH_AND_DIE, store.url or "", str(store.data_dir), str(files), "5"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert died.returncode == 9
    (written,) = files.iterdir()
    late = webhook("c9")
    asyncio.run(record(database, late))  # events that arrive after the crash

    (pending,) = database.pending_batches()
    assert pending.events == tuple(early[:5])
    assert written.name == f"{database.store_id}-{pending.number}.json"
    write_batch(files, database.store_id, pending)
    database.flushed(pending.number)
    while (batch := database.next_batch(5)) is not None:
        write_batch(files, database.store_id, batch)
        database.flushed(batch.number)

    rows = [row for name in sorted(files.iterdir()) for row in json.loads(name.read_text())]
    assert len(list(files.iterdir())) == 3
    assert sorted(rows) == sorted(event.event_id for event in early + late)
    assert database.pending_batches() == []


def test_a_batch_number_is_never_used_twice(database: Database) -> None:
    asyncio.run(record(database, webhook("c1")))
    first = database.next_batch(10)
    database.flushed(first.number)  # the events table is empty again
    asyncio.run(record(database, webhook("c2")))

    second = database.next_batch(10)

    assert second.number > first.number
    assert database.next_batch(10) is None


def test_a_batch_is_read_again_with_the_same_rows_until_flushed(database: Database) -> None:
    asyncio.run(record(database, [event for n in range(3) for event in webhook(f"c{n}")]))
    batch = database.next_batch(4)

    assert database.pending_batches() == [batch]
    assert database.pending_batches() == [batch]
    database.flushed(batch.number)
    assert database.pending_batches() == []


# -- PostgreSQL only -----------------------------------------------------------------------------------------


def test_a_lost_postgresql_connection_fails_one_transaction_then_is_opened_again(
    postgres_database_url: str, tmp_path: Path
) -> None:
    store = Store(postgres_database_url, tmp_path, Clock(BOT_T0))
    database = store.open()
    asyncio.run(record(database, webhook("c1")))
    # What a server restart or a failover does to every connection the bot holds.
    store.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )

    with pytest.raises(DatabaseError, match=r"^PostgreSQL .* failed"):
        asyncio.run(record(database, webhook("c2")))
    assert asyncio.run(record(database, webhook("c2"))) == webhook("c2")  # the platform's redelivery
    database.close()


def test_a_webhook_whose_commit_fails_is_not_acknowledged(postgres_database_url: str, tmp_path: Path) -> None:
    # The webhook's transaction is pipelined: the commit's answer is the last one read, and its error must
    # still reach the caller. A constraint checked only at commit makes the commit fail.
    store = Store(postgres_database_url, tmp_path, Clock(BOT_T0))
    database = store.open()
    store.execute(
        "CREATE TABLE one_read (customer_id TEXT UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        "CREATE FUNCTION one_read() RETURNS trigger AS $$ BEGIN INSERT INTO one_read"
        " VALUES (NEW.customer_id), (NEW.customer_id); RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER one_read AFTER INSERT ON events FOR EACH ROW WHEN (NEW.event = 'message_read')"
        " EXECUTE FUNCTION one_read()",
    )
    events = webhook("c1")

    with pytest.raises(DatabaseError, match="one_read"):
        asyncio.run(record(database, events))
    assert store.rows("SELECT count(*) FROM seen") == [(0,)]

    store.execute("DROP TRIGGER one_read ON events")
    assert asyncio.run(record(database, events)) == events  # the platform's redelivery
    database.close()


def test_only_a_commit_refused_for_want_of_room_holds_the_health_check_at_failing() -> None:
    # SQLite's full disk is tests/test_outages.py's, on a real filesystem; PostgreSQL's by its SQLSTATE.
    import psycopg

    def failed(cause: Exception) -> DatabaseError:
        try:
            raise DatabaseError("PostgreSQL 127.0.0.1:5432/promobot failed") from cause
        except DatabaseError as error:
            return error

    assert out_of_room(failed(psycopg.errors.DiskFull("could not extend file: No space left on device")))
    assert not out_of_room(failed(psycopg.OperationalError("server closed the connection unexpectedly")))
    assert not out_of_room(failed(psycopg.errors.AdminShutdown("terminating connection")))


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_migrate_brings_the_schema_up_to_date_without_the_platforms_secrets(
    engine, request, tmp_path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMOBOT_") and k != "DATABASE_URL"}
    env["PROMOBOT_DATA"] = str(tmp_path / "data")
    if engine == "postgresql":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_database_url")  # as Heroku sets it
    command = [sys.executable, "-m", "bot", "migrate"]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    store = Store(env.get("DATABASE_URL"), tmp_path / "data", Clock(BOT_T0))
    assert store.rows("SELECT version FROM schema_migrations") == [(step.version,) for step in MIGRATIONS]


def test_migrate_names_an_unreachable_database(tmp_path) -> None:
    env = {
        **os.environ,
        "PROMOBOT_DATABASE_URL": "postgresql://promobot@127.0.0.1:9/promobot",
        "PROMOBOT_DATABASE_WAIT": "0",  # the wait itself is tests/test_outages.py's
    }
    command = [sys.executable, "-m", "bot", "migrate"]
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 1
    assert "PostgreSQL 127.0.0.1:9/promobot: could not connect" in result.stderr
