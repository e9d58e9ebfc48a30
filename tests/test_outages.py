"""Outages of what the bot stands on, with real processes: PostgreSQL restarted or frozen while webhooks
arrive, or down when the bot starts, the bucket gone while events are flushed, the SQLite file's disk full.

What must hold (DESIGN.md): a webhook the store cannot take is answered 503 (never 500, never past
Messenger's budget), so that the platform delivers it again; an acknowledged one is stored once and answered
once; /healthz tells of the outage; and the bot recovers by itself, without a restart, once the store is back.
A store unreachable at start-up is waited for, for a bounded time; one that refuses the bot's settings fails
the start at once, naming why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import httpx
import psutil
import psycopg
import pytest
from moto.server import ThreadedMotoServer
from psycopg import sql

from tests.support.bot_process import BotProcess, run_bot, stored_events
from tests.support.fake_graph import FakeGraph
from tests.support.home import environment, make_home
from tests.support.paths import REPO
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer
from tests.support.s3 import REGION, stored_rows
from tests.test_crash_scale import Click, assert_stored_once_and_answered, get_started, poll, welcomes

pytestmark = pytest.mark.e2e

ANSWER_BOUND_S = 5.0  # Messenger's budget for a webhook's answer, store or no store
HEALTH_BOUND_S = 5.0  # a load balancer's patience with a health check
OUTAGE_S = 8.0  # how long PostgreSQL stays down while webhooks arrive
SETTLE_S = 20.0
HEALTH_BACK_S = 15.0  # from the store's start to a health answer of 200: its recovery, a reconnection
STOP_BOUND_S = 2.0  # a stop signal ends a wait for the store within this
REFUSED = "webhook not acknowledged, events could not be recorded"


class Drill:
    """Delivers clicks to a bot as the platform does and remembers each answer: its status (None: no
    answer) and how long it took."""

    def __init__(self, bot: BotProcess) -> None:
        self.bot = bot
        self.answers: list[tuple[Click, int | None, float]] = []
        self._lock = threading.Lock()

    def deliver(self, click: Click) -> int | None:
        started = time.monotonic()
        try:
            status: int | None = self.bot.post(click.body).status_code
        except httpx.TransportError:
            status = None
        with self._lock:
            self.answers.append((click, status, time.monotonic() - started))
        return status

    def deliver_at_once(self, clicks: list[Click]) -> None:
        with ThreadPoolExecutor(len(clicks)) as pool:
            list(pool.map(self.deliver, clicks))

    def redeliver_refused(self) -> None:
        """The platform delivers again each click not acknowledged, until it is (or SETTLE_S has passed)."""
        deadline = time.monotonic() + SETTLE_S
        while (waiting := self.refused()) and time.monotonic() < deadline:
            for click in waiting:
                self.deliver(click)

    def acknowledged(self) -> set[str]:
        return {click.customer for click, status, _ in self.answers if status == 200}

    def refused(self) -> list[Click]:
        acknowledged = self.acknowledged()
        return list({c.customer: c for c, _, _ in self.answers if c.customer not in acknowledged}.values())

    def statuses(self) -> Counter[int | None]:
        return Counter(status for _, status, _ in self.answers)

    def slowest(self) -> float:
        return max(seconds for _, _, seconds in self.answers)


def clicks(prefix: str) -> Iterator[Click]:
    n = 0
    while True:
        yield get_started(f"{prefix}{n:04d}")
        n += 1


def timed_health(bot: BotProcess) -> tuple[int | None, float]:
    """GET /healthz: its status (None: no answer in 10 s) and how long it took."""
    started = time.monotonic()
    try:
        status: int | None = bot.client.get("/healthz").status_code
    except httpx.TransportError:
        status = None
    return status, time.monotonic() - started


def senders(bot: BotProcess) -> list[int]:
    """The process ids of the bot's sender processes."""
    assert bot.process is not None
    return [child.pid for child in psutil.Process(bot.process.pid).children()]


def settled(bot: BotProcess, graph: FakeGraph, customers: set[str]) -> bool:
    """Whether each of `customers` got their welcome, their events are in Parquet, and nothing is owed (by a
    health answer of 200: one 503 still may come while the bot's connections recover from an outage)."""
    stored = {row["customer_id"] for row in stored_events(bot.data)}
    health = bot.client.get("/healthz").json()
    return (
        all(welcomes(graph, customers).values())
        and customers <= stored
        and health.get("replies_owed") == 0
        and "flush_error" not in health
    )


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, which it may stop, kill or freeze."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.kill()  # paused or not
        server.stop()


# -- PostgreSQL ----------------------------------------------------------------------------------------------


def on_postgres(postgres: PostgresServer) -> dict[str, str]:
    """The bot's environment for a fresh database on `postgres`, flushing often."""
    return {"PROMOBOT_DATABASE_URL": postgres.create_database("promobot"), "PROMOBOT_FLUSH_SECONDS": "0.2"}


def test_a_postgresql_restart_is_answered_503_and_ridden_out_without_a_restart(tmp_path, graph, postgres):
    data, env = make_home(tmp_path), on_postgres(postgres)
    new_clicks = clicks("61")
    with BotProcess(data, graph.url, **env) as bot:
        drill = Drill(bot)
        before = [next(new_clicks) for _ in range(5)]
        for click in before:
            drill.deliver(click)
        poll(lambda: settled(bot, graph, {click.customer for click in before}))
        [sender] = senders(bot)

        postgres.kill()  # every connection of the bot and its sender breaks; new ones are refused
        health_during = []
        outage_ends = time.monotonic() + OUTAGE_S
        while time.monotonic() < outage_ends:
            drill.deliver(next(new_clicks))
            health_during.append(timed_health(bot))
            time.sleep(0.2)  # pacing the platform's deliveries, not waiting for anything
        postgres.start()  # crash recovery, on the same port
        # Healthy again as soon as the store is back, before any webhook commits (a load balancer that took
        # the bot out of its rotation sends none): a failed commit held /healthz at 503 for 60 s.
        poll(lambda: timed_health(bot)[0] == 200, timeout_s=HEALTH_BACK_S)
        health_back = timed_health(bot)[0]

        drill.redeliver_refused()
        for _ in range(5):
            drill.deliver(next(new_clicks))
        everyone = {click.customer for click, _, _ in drill.answers}
        poll(lambda: settled(bot, graph, everyone))
        health_after = bot.client.get("/healthz").json()
        senders_after = senders(bot)
        assert bot.stop() == 0

    assert set(drill.statuses()) == {200, 503}
    assert drill.slowest() < ANSWER_BOUND_S
    assert {status for status, _ in health_during} == {503}
    assert max(seconds for _, seconds in health_during) < HEALTH_BOUND_S
    assert health_back == 200
    assert health_after == {"status": "ok", "campaign": "spring-sale", "replies_owed": 0}
    assert senders_after == [sender]  # the sender rode the outage out
    assert drill.acknowledged() == everyone
    assert assert_stored_once_and_answered(stored_events(data), everyone) == everyone
    assert welcomes(graph, everyone) == Counter(dict.fromkeys(everyone, 1))
    assert REFUSED in bot.log()


def test_a_frozen_postgresql_gets_webhooks_and_health_answered_503_in_bounded_time(tmp_path, graph, postgres):
    data, env = make_home(tmp_path), on_postgres(postgres)
    new_clicks = clicks("62")
    with BotProcess(data, graph.url, **env) as bot:
        drill = Drill(bot)
        drill.deliver(next(new_clicks))
        poll(lambda: settled(bot, graph, drill.acknowledged()))

        postgres.pause()  # connections stay open and nothing answers: neither refused nor reset
        try:
            with ThreadPoolExecutor(2) as pool:
                health = pool.submit(lambda: [timed_health(bot) for _ in range(2)])
                drill.deliver_at_once([next(new_clicks) for _ in range(4)])
                health_during = health.result()
        finally:
            postgres.resume()

        frozen = drill.refused()
        drill.redeliver_refused()
        everyone = {click.customer for click, _, _ in drill.answers}
        poll(lambda: settled(bot, graph, everyone))
        assert bot.stop() == 0

    assert len(frozen) == 4
    assert set(drill.statuses()) == {200, 503}
    assert drill.slowest() < ANSWER_BOUND_S
    assert [status for status, _ in health_during] == [503, 503]
    assert max(seconds for _, seconds in health_during) < HEALTH_BOUND_S
    # A webhook whose commit was under way when its answer could wait no longer may be recorded all the
    # same: the platform's redelivery finds it seen. Each is stored once and answered once.
    assert assert_stored_once_and_answered(stored_events(data), everyone) == everyone
    assert welcomes(graph, everyone) == Counter(dict.fromkeys(everyone, 1))


def test_a_sender_process_started_while_postgresql_is_down_waits_for_it(tmp_path, graph, postgres):
    data = make_home(tmp_path)
    env = {"PROMOBOT_DATABASE_URL": postgres.create_database("promobot")}
    first, later = get_started("630001"), get_started("630002")
    with BotProcess(data, graph.url, **env) as bot:
        assert bot.post(first.body).status_code == 200
        graph.wait_for(first.customer, 1)
        [crashed] = senders(bot)

        postgres.kill()
        psutil.Process(crashed).kill()  # it dies while the store is down: its supervisor starts another
        poll(lambda: bot.log().count("sender process stopped") > 1 or "cannot open the store" in bot.log())
        postgres.start()

        poll(lambda: bot.post(later.body).status_code == 200)
        graph.wait_for(later.customer, 1, timeout_s=SETTLE_S)
        assert bot.stop() == 0

    assert bot.log().count("the sender process stopped") == 1  # the kill; no death of the new one
    assert "the sender cannot open the store, trying again" in bot.log()
    customers = {first.customer, later.customer}
    assert welcomes(graph, customers) == Counter(dict.fromkeys(customers, 1))


# -- PostgreSQL at start-up ---------------------------------------------------------------------------------

WAITING = "; trying again in"  # serve's line for each attempt at a store it cannot reach
PASSWORD = "not-in-any-log-7d41"
GIVE_UP_BOUND_S = 15.0  # the interpreter's start, on a busy machine, and a short wait: far below a long one


def serving(data: Path, log: Path, **env: str) -> subprocess.Popen:
    """`python -m bot serve` on a free port with the test secrets and `env`, its output in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bot", "serve", "--port", str(free_port())],
            cwd=REPO,
            env={**os.environ, **environment(data, **env)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def refused_url() -> str:
    """A PostgreSQL URL, with a password, of a port nothing listens on."""
    return f"postgresql://promobot:{PASSWORD}@127.0.0.1:{free_port()}/promobot"


def test_serve_started_while_postgresql_is_down_waits_for_it_then_answers(tmp_path, graph, postgres):
    data, env = make_home(tmp_path), on_postgres(postgres)
    postgres.kill()  # as a maintenance restart, or a database container not started yet, would leave it
    bot = BotProcess(data, graph.url, **env)
    click = get_started("680001")

    def start_postgres_once_the_bot_waits() -> None:
        poll(lambda: bot.log_path.exists() and WAITING in bot.log())
        postgres.start()

    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(start_postgres_once_the_bot_waits)
        with bot:  # the process started and /healthz answered 200 within 30 s
            later.result()
            assert bot.post(click.body).status_code == 200
            graph.wait_for(click.customer, 1)
            assert bot.stop() == 0

    assert f"PostgreSQL 127.0.0.1:{postgres.port}/promobot: could not connect" in bot.log()
    assert "Connection refused" + WAITING in bot.log()
    assert "promobot ready" in bot.log()


@pytest.mark.parametrize(
    ("command", "failure"),
    [(("serve", "--port", "0"), "promobot cannot start"), (("migrate",), "promobot migrate")],
    ids=["serve", "migrate"],
)
def test_a_database_still_unreachable_after_the_wait_fails_naming_it(tmp_path, command, failure):
    url = refused_url()
    started = time.monotonic()
    done = run_bot(
        *command,
        env=environment(make_home(tmp_path), PROMOBOT_DATABASE_URL=url, PROMOBOT_DATABASE_WAIT="1.5"),
    )
    took = time.monotonic() - started

    assert done.returncode == 1
    where = url.rsplit("@", 1)[1]
    assert f"{failure}: PostgreSQL {where}: could not connect" in done.stderr
    assert "Connection refused" in done.stderr
    assert "gave up after 1.5 s (PROMOBOT_DATABASE_WAIT)" in done.stderr
    assert done.stderr.count(WAITING) >= 2
    assert PASSWORD not in done.stdout + done.stderr
    assert 1.5 < took < GIVE_UP_BOUND_S


def require_password(postgres: PostgresServer, role: str, password: str) -> None:
    """Make `role` a login of `postgres` that must give `password` (the cluster trusts every other)."""
    with psycopg.connect(postgres.url(), autocommit=True) as connection:
        connection.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
        hba = postgres.data / "pg_hba.conf"
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{hba.read_text()}")  # first match wins
        connection.execute("SELECT pg_reload_conf()")

    def refuses_a_wrong_password() -> bool:
        try:
            psycopg.connect(f"postgresql://{role}:wrong@127.0.0.1:{postgres.port}/postgres").close()
        except psycopg.OperationalError:
            return True
        return False

    poll(refuses_a_wrong_password)


def test_a_database_that_refuses_the_bot_fails_serve_at_once_naming_why(tmp_path, postgres):
    require_password(postgres, "promobot", "right-password")
    data = make_home(tmp_path)
    refusals = {
        f"postgresql://promobot:{PASSWORD}@127.0.0.1:{postgres.port}/postgres": (
            'password authentication failed for user "promobot"'
        ),
        postgres.url("no_such_database"): 'database "no_such_database" does not exist',
    }
    for url, reason in refusals.items():
        started = time.monotonic()
        done = run_bot("serve", "--port", "0", env=environment(data, PROMOBOT_DATABASE_URL=url))
        took = time.monotonic() - started

        assert done.returncode == 1
        assert "promobot cannot start: PostgreSQL" in done.stderr
        assert reason in done.stderr
        assert WAITING not in done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        assert took < GIVE_UP_BOUND_S  # the default wait is 45 s


@pytest.mark.parametrize(
    ("stop", "status"), [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_a_stop_signal_ends_the_wait_for_the_database_at_once(tmp_path, stop, status):
    log = tmp_path / "serve.log"
    process = serving(make_home(tmp_path), log, PROMOBOT_DATABASE_URL=refused_url())
    try:
        poll(lambda: WAITING in log.read_text())
        process.send_signal(stop)
        stopped = process.wait(timeout=STOP_BOUND_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert stopped == status
    assert "Traceback" not in log.read_text()


# -- S3 ------------------------------------------------------------------------------------------------------


def test_events_flushed_while_the_bucket_is_down_reach_it_once_when_it_is_back(tmp_path, graph, monkeypatch):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)  # this process's, and so the bot's
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    boto3.client("s3", endpoint_url=endpoint, region_name=REGION).create_bucket(Bucket="outage")
    data = "s3://outage/promobot"
    before = [get_started(f"64{n:04d}") for n in range(5)]
    during = [get_started(f"65{n:04d}") for n in range(5)]
    try:
        env = {
            "PROMOBOT_DATA": data,
            "PROMOBOT_DATABASE_URL": f"sqlite:///{tmp_path}/promobot.sqlite3",
            "PROMOBOT_FLUSH_SECONDS": "0.2",
        }
        with BotProcess(make_home(tmp_path), graph.url, **env) as bot:
            assert {bot.post(click.body).status_code for click in before} == {200}
            poll(lambda: len(stored_rows(data)) == 2 * len(before))  # each: started, welcome sent
            s3.stop()  # the bucket's contents stay with the server's state; its port refuses connections

            assert {bot.post(click.body).status_code for click in during} == {200}
            for click in during:
                graph.wait_for(click.customer, 1)
            poll(lambda: "flush_error" in bot.client.get("/healthz").json())
            health_during = bot.client.get("/healthz")
            s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            s3.start()

            poll(lambda: "flush_error" not in bot.client.get("/healthz").json())
            health_after = bot.client.get("/healthz").json()
            rows_before_stop = stored_rows(data)
            assert bot.stop() == 0
        rows = stored_rows(data)
    finally:
        s3.stop()

    # The bot still works without its bucket: only the dashboard falls behind.
    assert health_during.status_code == 200
    assert health_during.json()["flush_error"] == "events cannot be written (see the bot's log)"
    assert "could not be written to s3://outage/promobot" in bot.log()
    assert "flush_error" not in health_after
    customers = {click.customer for click in [*before, *during]}
    # Flushed while the bot ran (not only by the stop's last round), and once.
    assert assert_stored_once_and_answered(rows_before_stop, customers) == customers
    assert assert_stored_once_and_answered(rows, customers) == customers


# -- SQLite --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` while the block runs: a disk that fills up."""
    where.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)


def fill(folder: Path) -> Path:
    """A file that takes every free block of `folder`'s filesystem."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(descriptor, b"\0" * 65536)
    finally:
        os.close(descriptor)
    assert shutil.disk_usage(folder).free == 0
    return filler


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root")
def test_a_full_disk_refuses_webhooks_with_503_then_the_bot_recovers_when_room_returns(tmp_path, graph):
    with small_filesystem(tmp_path / "data", "4m"):
        data = make_home(tmp_path)
        with BotProcess(data, graph.url, PROMOBOT_FLUSH_SECONDS="0.2") as bot:
            drill = Drill(bot)
            drill.deliver(get_started("660000"))
            poll(lambda: settled(bot, graph, {"660000"}))

            filler = fill(data)
            for n in range(5):
                drill.deliver(get_started(f"67{n:04d}"))
            health_during = bot.client.get("/healthz")
            filler.unlink()

            drill.redeliver_refused()
            everyone = {click.customer for click, _, _ in drill.answers}
            poll(lambda: settled(bot, graph, everyone))
            health_after = bot.client.get("/healthz").json()
            assert bot.stop() == 0
        rows = stored_events(data)

    assert drill.statuses() == Counter({200: 6, 503: 5})
    assert health_during.status_code == 503
    assert health_after == {"status": "ok", "campaign": "spring-sale", "replies_owed": 0}
    assert f"{REFUSED}: SQLite {data}/promobot.sqlite3 failed: database or disk is full" in bot.log()
    assert assert_stored_once_and_answered(rows, everyone) == everyone
    assert welcomes(graph, everyone) == Counter(dict.fromkeys(everyone, 1))
