"""Crashes and more than one instance, with real processes: `python -m bot serve` killed with SIGKILL under
load, two instances behind one PostgreSQL and one S3 bucket, and a new dyno taking over a dead one's work.

What must hold (DESIGN.md): an acknowledged webhook is never lost and is stored once; every click is answered;
a reply is sent twice only when it was in flight at a crash (the Send API has no idempotency key).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from bot.config import SQLITE_FILE
from bot.sender import LEASE_MARGIN_S
from tests.support import payloads
from tests.support.bot_process import BotProcess, stored_events
from tests.support.fake_graph import Answer, FakeGraph
from tests.support.home import make_home
from tests.support.s3 import object_keys, stored_rows

pytestmark = pytest.mark.e2e

GRAPH_TIMEOUT_S = 0.5
# How long a claimed reply is its sender's (bot.app's lifespan): two retry deadlines of 4 timeouts each.
LEASE_S = 2 * 4 * GRAPH_TIMEOUT_S + LEASE_MARGIN_S
HANG = Answer(delay_s=30)  # the Send API never answers: the reply stays in flight until the client gives up
SETTLE_S = 30.0
FILE_NAME = re.compile(r"promobot/events/event_date=\d{4}-\d{2}-\d{2}/(?P<store>[0-9a-f]{12})-\d{8}\.parquet")


# -- clicks and their answers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Click:
    """A signed Get Started of one customer; the same body again is the platform redelivering it."""

    customer: str
    body: bytes


def get_started(customer: str) -> Click:
    return Click(customer, payloads.envelope(payloads.postback(customer, "GET_STARTED")))


def with_redeliveries(clicks: Iterable[Click]) -> Iterator[Click]:
    """The clicks in order, every fifth delivered twice at once and every seventh again a little later."""
    recent: list[Click] = []
    for n, click in enumerate(clicks):
        yield click
        if n % 5 == 0:
            yield click  # the next thread takes it while the first is being recorded
        recent = [*recent[-6:], click]
        if n % 7 == 0 and n >= 7:
            yield recent[0]


class Load:
    """Posts deliveries from `threads` threads, the n-th to `bots[n % len(bots)]`, until they are all posted
    or `halt` is called; remembers each answer's status (None: no answer, the connection broke)."""

    def __init__(self, bots: Sequence[BotProcess], deliveries: Iterable[Click], threads: int) -> None:
        self.bots = bots
        self.answers: list[tuple[Click, int | None]] = []
        self._next = enumerate(deliveries)
        self._lock = threading.Lock()
        self._halted = threading.Event()
        self._pool = ThreadPoolExecutor(threads)
        self._workers = [self._pool.submit(self._work) for _ in range(threads)]

    def _work(self) -> None:
        while not self._halted.is_set():
            with self._lock:
                n, click = next(self._next, (None, None))
            if click is None:
                return
            try:
                status: int | None = self.bots[n % len(self.bots)].post(click.body).status_code
            except httpx.TransportError:
                status = None
            except RuntimeError as exc:  # posted after a kill closed the bot's client: no answer either
                if "client has been closed" not in str(exc):
                    raise
                status = None
            with self._lock:
                self.answers.append((click, status))

    def acknowledged(self) -> set[str]:
        """Customers whose click got a 200 at least once."""
        with self._lock:
            return {click.customer for click, status in self.answers if status == 200}

    def halt(self) -> None:
        """Post nothing more; returns once every request under way has its answer or its error."""
        self._halted.set()
        self.wait()

    def wait(self) -> None:
        for worker in self._workers:
            worker.result()
        self._pool.shutdown()


def deliver_at_once(bots: Sequence[BotProcess], click: Click) -> list[int]:
    """Post the same click to every bot at the same moment, one thread each; their answers' statuses."""
    ready = threading.Barrier(len(bots))

    def deliver(bot: BotProcess) -> int:
        ready.wait()
        return bot.post(click.body).status_code

    with ThreadPoolExecutor(len(bots)) as pool:
        return list(pool.map(deliver, bots))


# -- the store and the Graph API, seen from outside ----------------------------------------------------------


def poll(condition: Callable[[], object], timeout_s: float = SETTLE_S) -> None:
    """Return once `condition()` holds, or once `timeout_s` has passed: the caller asserts what it needs."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def owed_replies(store: str | Path) -> list[tuple[str, int]]:
    """(reply id, times claimed) of every reply the store still owes, read from it directly.

    Parameters: `store` a PostgreSQL URL, or the data directory that holds the SQLite file.
    """
    connection = sqlite3.connect(store / SQLITE_FILE) if isinstance(store, Path) else psycopg.connect(store)
    with contextlib.closing(connection):
        return connection.execute("SELECT reply_id, claims FROM outbox ORDER BY reply_id").fetchall()


def customer_of(reply_id: str) -> str:
    """The customer a reply goes to: reply ids start with the answered event's, which starts with theirs."""
    return reply_id.split(".", 1)[0]


def settle(bots: Sequence[BotProcess], store: str | Path) -> None:
    """Wait until the store owes no reply and no instance has one in flight."""
    poll(
        lambda: (
            not owed_replies(store)
            and not any(bot.client.get("/healthz").json()["replies_owed"] for bot in bots)
        )
    )
    assert owed_replies(store) == []


def welcomes(graph: FakeGraph, customers: set[str]) -> Counter[str]:
    """How many welcomes the Graph API accepted for each of `customers` (every message here is one)."""
    accepted = Counter(send["recipient"] for send in list(graph.sent))
    return Counter({customer: accepted[customer] for customer in customers})


def unanswered(graph: FakeGraph, customers: set[str]) -> set[str]:
    """The customers the Graph API accepted no message for."""
    return {customer for customer, count in welcomes(graph, customers).items() if not count}


def events_by_customer(rows: Sequence[dict]) -> dict[str, list[str]]:
    """customer -> the events stored for them, sorted."""
    stored: dict[str, list[str]] = {}
    for row in rows:
        stored.setdefault(row["customer_id"], []).append(row["event"])
    return {customer: sorted(events) for customer, events in stored.items()}


def assert_stored_once_and_answered(rows: Sequence[dict], acknowledged: set[str]) -> set[str]:
    """Every row is stored once; every acknowledged click is, with its welcome's outcome. Returns the
    customers whose click was stored (acknowledged or not)."""
    ids = Counter(row["event_id"] for row in rows)
    assert [event_id for event_id, count in ids.items() if count > 1] == []
    stored = events_by_customer(rows)
    assert {customer for customer in acknowledged if customer not in stored} == set(), "acknowledged, lost"
    # A click stored (acknowledged or not) is stored once, and its welcome is recorded as sent, once.
    assert {c: e for c, e in stored.items() if e != ["conversation_started", "welcome_sent"]} == {}
    return set(stored)


# -- 1. kill -9 under load ---------------------------------------------------------------------------------


def test_a_server_killed_under_load_loses_nothing_it_acknowledged(tmp_path, graph, database_url):
    data = make_home(tmp_path)
    env = {"PROMOBOT_FLUSH_SECONDS": "0.2"}  # flushing under way when the process dies
    if database_url:
        env["PROMOBOT_DATABASE_URL"] = database_url
    store = database_url or data
    # Replies certainly in flight at the kill: their sends hang until the client gives up.
    hung = [get_started(f"59{n:04d}") for n in range(3)]
    for click in hung:
        graph.script_sends(click.customer, *[HANG] * 5)
    # As many clicks as the server takes until it dies, the hanging ones among the first.
    clicks = (get_started(f"5{n:05d}") for n in itertools.count())
    deliveries = itertools.chain(itertools.islice(clicks, 50), hung, clicks)

    with BotProcess(data, graph.url, **env) as first:
        load = Load([first], with_redeliveries(deliveries), threads=6)
        poll(lambda: len(load.acknowledged()) >= 100 and all(graph.attempts.get(c.customer) for c in hung))
        assert [c.customer for c in hung if not graph.attempts.get(c.customer)] == []
        first.kill()  # SIGKILL to the server and its sender; the requests under way break
        load.halt()
    acknowledged = load.acknowledged()
    in_flight = [reply_id for reply_id, claims in owed_replies(store) if claims]

    for click in hung:
        graph.script_sends(click.customer)  # the platform answers again
    with BotProcess(data, graph.url, **env) as second:
        # Replies the dead process held are owed at once (SQLite) or when their leases run out (PostgreSQL).
        poll(lambda: not unanswered(graph, acknowledged), LEASE_S + SETTLE_S)
        assert unanswered(graph, acknowledged) == set()
        settle([second], store)
        assert second.stop() == 0

    cut_off = [click for click, status in load.answers if status != 200]
    assert cut_off, "no request was under way at the kill"
    stored = assert_stored_once_and_answered(stored_events(data), acknowledged)
    customers = {click.customer for click, _ in load.answers}
    sent = welcomes(graph, customers)
    assert {customer for customer in customers if sent[customer] and customer not in stored} == set()
    assert {customer for customer in stored if not sent[customer]} == set()
    # Sent twice: only a reply the platform had accepted when the process died, before its outcome was
    # stored. Those were among the replies claimed and still owed at the kill, the hanging ones included.
    duplicates = sum(count - 1 for count in sent.values() if count > 1)
    assert {click.customer for click in hung} <= {customer_of(reply) for reply in in_flight}
    assert duplicates <= len(in_flight)
    assert all(sent[click.customer] == 1 for click in hung)


# -- 2. two instances, one PostgreSQL, one bucket ------------------------------------------------------------


def test_two_instances_store_and_answer_each_click_once(
    tmp_path, graph, postgres_database_url, bucket, s3_endpoint
):
    data = f"s3://{bucket}/promobot"
    env = {
        "PROMOBOT_DATA": data,
        "PROMOBOT_DATABASE_URL": postgres_database_url,
        "PROMOBOT_FLUSH_SECONDS": "0.1",  # both flushers busy over the same batches
    }
    home_a, home_b = make_home(tmp_path / "a"), make_home(tmp_path / "b")
    same = [get_started(f"52{n:04d}") for n in range(20)]
    spread = [get_started(f"53{n:04d}") for n in range(200)]

    with BotProcess(home_a, graph.url, **env) as a, BotProcess(home_b, graph.url, **env) as b:
        # The platform delivers one webhook to both instances at the same moment.
        both = [status for click in same for status in deliver_at_once([a, b], click)]
        alternating = Load([a, b], with_redeliveries(spread), threads=6)
        alternating.wait()
        customers = {click.customer for click in same + spread}
        poll(lambda: not unanswered(graph, customers))
        assert unanswered(graph, customers) == set()
        settle([a, b], postgres_database_url)
        assert (a.stop(), b.stop()) == (0, 0)

    assert {*both, *(status for _, status in alternating.answers)} == {200}
    assert welcomes(graph, customers) == Counter(dict.fromkeys(customers, 1))
    assert assert_stored_once_and_answered(stored_rows(data), customers) == customers
    keys = object_keys(bucket, s3_endpoint)
    assert [key for key in keys if not FILE_NAME.fullmatch(key)] == []
    assert len({FILE_NAME.fullmatch(key)["store"] for key in keys}) == 1  # whichever instance wrote them


# -- 3. a new dyno -------------------------------------------------------------------------------------------


def test_a_new_dyno_sends_what_a_killed_one_owed(tmp_path, graph, postgres_database_url, bucket, s3_endpoint):
    data = f"s3://{bucket}/promobot"
    env = {"PROMOBOT_DATA": data, "PROMOBOT_DATABASE_URL": postgres_database_url}
    answered = [get_started(f"54{n:04d}") for n in range(5)]
    slow = get_started("550000")
    graph.script_sends(slow.customer, *[HANG] * 5)
    old_dyno, new_dyno = tmp_path / "dyno-1", tmp_path / "dyno-2"

    def owed_customers() -> list[str]:
        return [customer_of(reply) for reply, _ in owed_replies(postgres_database_url)]

    # Nothing flushed while it lives: what it acknowledged is only in PostgreSQL when it dies.
    with BotProcess(make_home(old_dyno), graph.url, PROMOBOT_FLUSH_SECONDS="3600", **env) as first:
        for click in answered:
            assert first.post(click.body).status_code == 200
            graph.wait_for(click.customer, 1)
        before_claim = time.monotonic()
        assert first.post(slow.body).status_code == 200
        poll(lambda: graph.attempts.get(slow.customer) and owed_customers() == [slow.customer])
        assert graph.attempts.get(slow.customer)
        assert owed_customers() == [slow.customer]  # the others' outcomes are stored: only it is in flight
        first.kill()
    assert object_keys(bucket, s3_endpoint) == []  # what it acknowledged is in PostgreSQL alone
    assert sorted(path.name for path in (old_dyno / "data").iterdir()) == ["campaign.toml", "thanks.png"]
    shutil.rmtree(old_dyno)

    graph.script_sends(slow.customer)
    later = get_started("560000")
    with BotProcess(make_home(new_dyno), graph.url, **env) as second:
        assert second.post(later.body).status_code == 200
        assert second.post(answered[0].body).status_code == 200  # redelivered: stored once all the same
        graph.wait_for(later.customer, 1)
        graph.wait_for(slow.customer, 1, timeout_s=LEASE_S + SETTLE_S)
        sent_at = time.monotonic()
        settle([second], postgres_database_url)
        assert second.stop() == 0

    # Not before the dead dyno's lease ran out: until then, no one could tell it from a live, slow one.
    assert sent_at - before_claim >= LEASE_S
    customers = {click.customer for click in [*answered, slow, later]}
    assert welcomes(graph, customers) == Counter(dict.fromkeys(customers, 1))
    assert assert_stored_once_and_answered(stored_rows(data), customers) == customers
