"""How long `serve` and `migrate` wait for a store they cannot reach at start-up, and which failures they wait
out: a server that did not answer, or is starting up, rather than one that refused the bot's settings (the
processes themselves are in test_outages.py)."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, Mode, Settings
from bot.database import DatabaseError
from bot.startup import unreachable

SECRETS = {"PROMOBOT_APP_SECRET": "s", "PROMOBOT_VERIFY_TOKEN": "v", "PROMOBOT_PAGE_TOKEN": "t"}
WHERE = "PostgreSQL 127.0.0.1:5432/promobot"
AT = 'connection failed: connection to server at "127.0.0.1", port 5432 failed:'

# What psycopg 3 raised against PostgreSQL 15, word for word: no SQLSTATE, only the message tells them apart.
NOT_ANSWERING = [
    f"{WHERE}: could not connect: {AT} Connection refused\n\tIs the server running on that host and "
    "accepting TCP/IP connections?",
    f"{WHERE}: could not connect: connection timeout expired",  # a server paused (SIGSTOP)
    f"{WHERE}: could not connect: failed to resolve host 'db': [Errno -2] Name or service not known",
    f"{WHERE}: could not connect: {AT} FATAL:  the database system is starting up",
    f"{WHERE}: could not connect: {AT} FATAL:  the database system is not yet accepting connections",
    f"{WHERE}: could not connect: {AT} FATAL:  the database system is shutting down",
]
REFUSING = [
    f'{WHERE}: could not connect: {AT} FATAL:  password authentication failed for user "promobot"',
    f'{WHERE}: could not connect: {AT} FATAL:  database "promobot" does not exist',
    f'{WHERE}: could not connect: {AT} FATAL:  role "promobot" does not exist',
    f"{WHERE}: could not connect: {AT} fe_sendauth: no password supplied",
    f"{WHERE}: could not connect: {AT} server does not support SSL, but SSL was required",
    "database URL scheme 'mysql' is not supported: use postgresql:// or sqlite:///",
    "SQLite data/promobot.sqlite3 could not be opened: unable to open database file",
]


@pytest.mark.parametrize("message", NOT_ANSWERING)
def test_a_server_that_does_not_answer_or_is_starting_is_waited_for(message):
    assert unreachable(DatabaseError(message))


@pytest.mark.parametrize("message", REFUSING)
def test_a_store_that_refuses_the_settings_is_not_waited_for(message):
    assert not unreachable(DatabaseError(message))


def test_serve_waits_45_seconds_unless_told_otherwise():
    assert Settings.from_env(SECRETS).database_wait_s == 45.0  # inside Heroku's 60 s to bind the port
    assert Settings.from_env({"PROMOBOT_DATABASE_WAIT": "0"}, Mode.LOCAL).database_wait_s == 0.0
    assert Settings.from_env({"PROMOBOT_DATABASE_WAIT": "2.5"}, Mode.LOCAL).database_wait_s == 2.5


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("soon", "PROMOBOT_DATABASE_WAIT='soon' is not a number of seconds"),
        ("-1", "PROMOBOT_DATABASE_WAIT must be at least 0 seconds"),
        ("nan", "PROMOBOT_DATABASE_WAIT must be at least 0 seconds"),
    ],
)
def test_a_bad_wait_is_refused_naming_the_variable(value, reason):
    with pytest.raises(ConfigError, match=reason):
        Settings.from_env({"PROMOBOT_DATABASE_WAIT": value}, Mode.LOCAL)
