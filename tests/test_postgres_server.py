"""The PostgreSQL fixtures serve a real server: isolated per test, durable, and honest when it dies."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.e2e

# The databases the isolation test has seen, in the order its runs saw them.
databases_seen: list[str] = []


def user_tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return [name for (name,) in rows]


def test_a_connection_reaches_the_sessions_database_over_loopback(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        database, address = conn.execute("SELECT current_database(), host(inet_server_addr())").fetchone()

    assert postgres_url.startswith("postgresql://")
    assert (database, address) == ("promobot", "127.0.0.1")


def test_the_server_is_postgresql_15_or_newer(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        assert conn.info.server_version >= 150000


def test_the_server_listens_on_loopback_keeps_commits_durable_and_takes_a_hundred_clients(
    postgres_url: str,
) -> None:
    names = ["listen_addresses", "fsync", "synchronous_commit", "full_page_writes", "max_connections"]
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [names]).fetchall()
    settings = dict(rows)

    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["fsync"] == settings["synchronous_commit"] == settings["full_page_writes"] == "on"
    assert int(settings["max_connections"]) >= 100 + 3


def test_a_hundred_clients_are_connected_at_once(postgres_database_url: str) -> None:
    clients = []
    try:
        for _ in range(100):
            clients.append(psycopg.connect(postgres_database_url, autocommit=True))
        backends = [client.info.backend_pid for client in clients]
        with psycopg.connect(postgres_database_url) as observer:
            (connected,) = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchone()
        assert [client.execute("SELECT 1").fetchone() for client in clients] == [(1,)] * 100
    finally:
        for client in clients:
            client.close()

    assert len(set(backends)) == connected == 100


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_gets_a_fresh_empty_database_dropped_after_it(
    run: str, postgres_database_url: str, postgres_url: str
) -> None:
    with psycopg.connect(postgres_database_url) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
        tables_at_start = user_tables(conn)
        conn.execute("CREATE TABLE marks (run text)")
        conn.execute("INSERT INTO marks VALUES (%s)", [run])
    with psycopg.connect(postgres_url) as conn:
        existing = {name for (name,) in conn.execute("SELECT datname FROM pg_database").fetchall()}
    databases_seen.append(database)

    assert tables_at_start == []
    assert database != "promobot"
    if run == "second":
        first = databases_seen[-2]
        assert first != database
        assert first not in existing


def test_a_committed_row_is_read_by_a_new_connection_and_a_rolled_back_one_is_not(
    postgres_database_url: str,
) -> None:
    with psycopg.connect(postgres_database_url) as writer:
        writer.execute("CREATE TABLE codes (code text PRIMARY KEY)")
        writer.execute("INSERT INTO codes VALUES ('SAVE10')")
        writer.commit()
        writer.execute("INSERT INTO codes VALUES ('NEVER')")
        writer.rollback()

    with psycopg.connect(postgres_database_url) as reader:
        assert reader.execute("SELECT code FROM codes").fetchall() == [("SAVE10",)]


def test_a_killed_server_fails_its_clients_and_recovers_committed_rows() -> None:
    server = PostgresServer()
    try:
        url = server.start().create_database("crash")
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE codes (code text PRIMARY KEY)")
            conn.execute("INSERT INTO codes VALUES ('SAVE10')")
        client = psycopg.connect(url, autocommit=True)
        client.execute("INSERT INTO codes VALUES ('SAVE20')")

        server.kill()

        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)

        server.start()
        with psycopg.connect(url) as conn:
            codes = conn.execute("SELECT code FROM codes ORDER BY code").fetchall()
        assert codes == [("SAVE10",), ("SAVE20",)]
        assert "database system was interrupted" in server.log()
    finally:
        server.stop()

    assert not server.root.exists()
