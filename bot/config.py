"""Settings: read once from the environment at start-up, validated, then passed around frozen."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting that is missing, malformed or inconsistent; the message names the variable."""


class Mode(StrEnum):
    """How the bot runs: chosen by the command that starts it, never guessed from the environment."""

    # `make run` / `python -m bot run-local`: throwaway secrets, the built-in Messenger simulator and stand-in
    # Graph API, on 127.0.0.1 only. Never talks to a real page.
    LOCAL = "local"
    # `python -m bot serve`: a real page's webhook, all three platform secrets required.
    SERVER = "server"
    # `bot.aws_lambda.handler`: as a server, with replies sent inside the invocation.
    LAMBDA = "lambda"


# A server or a Lambda talks to a real page: it needs all three; local mode ignores them.
_PLATFORM_SECRETS = ("PROMOBOT_APP_SECRET", "PROMOBOT_VERIFY_TOKEN", "PROMOBOT_PAGE_TOKEN")


SQLITE_FILE = "promobot.sqlite3"  # the store's file, in the data directory unless a URL says otherwise
LOCAL_STAFF_PIN = "0000"  # local mode's till PIN, unless PROMOBOT_STAFF_PIN says otherwise
# A PIN of 6 digits takes some 58 days of guessing at the till's limit of wrong tries (bot.till.Attempts).
STAFF_PIN_MIN_DIGITS = 6
MAX_PROXIES = 5
HEALTH_TOKEN_MIN_LENGTH = 16  # PROMOBOT_HEALTH_TOKEN guards what the deep health check tells
MESSAGING_WINDOW_S = 24 * 3600.0  # how long after a customer's message the page may answer it (RESPONSE)
DEFAULT_OPT_OUT_WORDS = ("stop", "unsubscribe")  # a message that is one of these opts the customer out
DEFAULT_OPT_IN_WORDS = ("start",)  # and one of these back in
DEFAULT_DELETE_WORDS = ("delete my data",)  # and one of these deletes what promobot keeps of them
DEFAULT_HANDOVER_MINUTES = 30.0  # the bot keeps quiet this long for a customer staff wrote to by hand
MAX_HANDOVER_MINUTES = 7 * 24 * 60.0  # past a week, no window is left open to answer in anyway


@dataclass(frozen=True)
class Settings:
    mode: Mode = Mode.SERVER
    app_secret: str = ""
    verify_token: str = ""
    page_token: str = ""
    graph_url: str = "https://graph.facebook.com"
    graph_version: str = "v25.0"
    data: str = "./data"
    campaign: Path = Path("data/campaign.toml")
    public_url: str = "http://127.0.0.1:8000"
    # The transactional store: a `postgresql://` URL (several instances, ephemeral disks), or a
    # `sqlite:///path` one. None: an SQLite file in the data directory, or, when events go to object
    # storage, in `.promobot/` (on Lambda: /tmp/promobot, which a cold start does not keep).
    database_url: str | None = None
    # How long `serve` and `migrate` try again to reach a PostgreSQL server that does not answer at start-up
    # (a restart for maintenance, a database container starting after the bot) before giving up: within the
    # 60 s Heroku gives a dyno to bind its port, with room for the start itself and a last attempt.
    database_wait_s: float = 45.0
    # A reply owed for an acknowledged click is still sent after a restart if it is younger than this;
    # older ones are recorded as `send_failed` (a coupon an hour late only confuses). At most a day: the
    # platform's window for a RESPONSE.
    reply_max_age_s: float = 3600.0
    # One Graph API attempt (connect to last byte); retries of transient failures come on top, for up to
    # four times this long in all.
    graph_timeout_s: float = 5.0
    # How old buffered events may grow before they are written as Parquet: how fresh the dashboard is.
    flush_seconds: float = 60.0
    log_level: str = "INFO"
    # Staff sign in to the till page with this PIN (6 to 12 digits); "" turns redemption at the till off.
    staff_pin: str = ""
    # How many proxies in front of the bot each add the address they were reached from to X-Forwarded-For
    # (Heroku's router: 1). The till counts wrong PINs per address: without this, every phone behind them
    # would have the address of the last one.
    proxies: int = 0
    # A monitor asks `/healthz?deep=1` with `Authorization: Bearer <this>`; "" turns the deep checks off.
    health_token: str = ""
    # Messages that opt a customer out of promotions, and back in (matched whole, case and punctuation
    # ignored).
    opt_out_words: tuple[str, ...] = DEFAULT_OPT_OUT_WORDS
    opt_in_words: tuple[str, ...] = DEFAULT_OPT_IN_WORDS
    delete_words: tuple[str, ...] = DEFAULT_DELETE_WORDS
    # The Meta app the bot sends with: its echoes are its own messages, any other app's (the page's inbox)
    # are staff answering by hand, who pause the bot for that customer for `handover_minutes`. "" (unknown):
    # no echo pauses the bot; `python -m bot doctor` says which id to set.
    app_id: str = ""
    handover_minutes: float = DEFAULT_HANDOVER_MINUTES

    @property
    def data_is_s3(self) -> bool:
        return self.data.startswith("s3://")

    @property
    def database(self) -> str:
        """The store's URL: `database_url`, or the SQLite file's."""
        if self.database_url is not None:
            return self.database_url
        if self.mode is Mode.LAMBDA:
            folder = Path("/tmp/promobot")  # noqa: S108 - Lambda's only writable disk
        elif self.data_is_s3:
            folder = Path(".promobot")
        else:
            folder = Path(self.data)
        return f"sqlite:///{folder / SQLITE_FILE}"

    @property
    def legacy_wal(self) -> Path:
        """Where promobot before its transactional store kept its write-ahead log."""
        return Path(".promobot-wal") if self.data_is_s3 else Path(self.data) / "wal"

    def __repr__(self) -> str:
        # Never print secrets, not even in a traceback.
        hidden = {
            "app_secret",
            "verify_token",
            "page_token",
            "database_url",
            "staff_pin",
            "health_token",
        }  # a URL may hold a password
        shown = ", ".join(
            f"{name}={'***' if name in hidden and getattr(self, name) else getattr(self, name)!r}"
            for name in (f.name for f in fields(self))
        )
        return f"Settings({shown})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, mode: Mode = Mode.SERVER) -> Settings:
        """Read and check the settings for `mode` from `environ` (default: the process's environment).

        Raises:
            ConfigError: a setting is missing or malformed (in server and lambda mode, any of the three
                platform secrets); the message names the variables.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        if mode is Mode.LOCAL:
            # Whatever the shell holds, local mode never talks to a real page: secrets of this process only.
            platform = {name: secrets.token_hex(16) for name in _PLATFORM_SECRETS}
        else:
            platform = {name: get(name) or "" for name in _PLATFORM_SECRETS}
            missing = [name for name, value in platform.items() if not value]
            if missing:
                raise ConfigError(
                    f"{', '.join(missing)} not set: {mode} mode talks to Messenger and needs "
                    f"{', '.join(_PLATFORM_SECRETS)}; to try the bot without a Facebook app, run `make run`"
                )

        graph_url = (get("PROMOBOT_GRAPH_URL") or cls.graph_url).rstrip("/")
        public_url = (get("PROMOBOT_PUBLIC_URL") or cls.public_url).rstrip("/")
        for name, url in (("PROMOBOT_GRAPH_URL", graph_url), ("PROMOBOT_PUBLIC_URL", public_url)):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"{name}={url!r} is not an http(s) URL")

        data = get("PROMOBOT_DATA") or cls.data
        if data.startswith("s3://") and not urlsplit(data).netloc:
            raise ConfigError(f"PROMOBOT_DATA={data!r} names no bucket (expected s3://bucket/prefix)")

        max_age = get("PROMOBOT_REPLY_MAX_AGE")
        try:
            reply_max_age_s = float(max_age) if max_age else cls.reply_max_age_s
        except ValueError:
            raise ConfigError(f"PROMOBOT_REPLY_MAX_AGE={max_age!r} is not a number of seconds") from None
        if not 0 <= reply_max_age_s <= MESSAGING_WINDOW_S:
            raise ConfigError(
                f"PROMOBOT_REPLY_MAX_AGE={max_age!r} is not between 0 and {MESSAGING_WINDOW_S:.0f} seconds: "
                "Messenger takes an answer to a customer's message only within 24 hours of it"
            )

        def seconds(name: str, default: float, *, minimum: float) -> float:
            raw = get(name)
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number of seconds") from None
            if not value >= minimum:  # also refuses NaN
                raise ConfigError(f"{name} must be at least {minimum:g} seconds")
            return value

        graph_timeout_s = seconds("PROMOBOT_GRAPH_TIMEOUT", cls.graph_timeout_s, minimum=0.1)
        flush_seconds = seconds("PROMOBOT_FLUSH_SECONDS", cls.flush_seconds, minimum=0.1)
        database_wait_s = seconds("PROMOBOT_DATABASE_WAIT", cls.database_wait_s, minimum=0)
        database_url = get("PROMOBOT_DATABASE_URL") or get("DATABASE_URL")  # Heroku names it DATABASE_URL
        if database_url is not None and not database_url.startswith(
            ("postgresql://", "postgres://", "sqlite:///")
        ):
            scheme = database_url.split(":", 1)[0]
            raise ConfigError(
                f"PROMOBOT_DATABASE_URL has scheme {scheme!r}: use postgresql://… or sqlite:///path"
            )
        staff_pin = get("PROMOBOT_STAFF_PIN") or (LOCAL_STAFF_PIN if mode is Mode.LOCAL else "")
        digits = staff_pin.isdigit() and staff_pin.isascii() and STAFF_PIN_MIN_DIGITS <= len(staff_pin) <= 12
        throwaway = mode is Mode.LOCAL and staff_pin == LOCAL_STAFF_PIN  # local mode's, on 127.0.0.1 only
        if staff_pin and not (digits or throwaway):
            raise ConfigError(
                f"PROMOBOT_STAFF_PIN must be {STAFF_PIN_MIN_DIGITS} to 12 digits: the till allows 30 wrong"
                " tries in 5 minutes, which would find 4 digits within a day"
            )
        raw_proxies = get("PROMOBOT_PROXIES") or "0"
        if not (raw_proxies.isdigit() and raw_proxies.isascii() and int(raw_proxies) <= MAX_PROXIES):
            raise ConfigError(
                f"PROMOBOT_PROXIES={raw_proxies!r} is not a number of proxies from 0 to {MAX_PROXIES}"
                " (how many proxies in front of the bot add to X-Forwarded-For; Heroku's router: 1)"
            )
        health_token = get("PROMOBOT_HEALTH_TOKEN") or ""
        if health_token and len(health_token) < HEALTH_TOKEN_MIN_LENGTH:
            raise ConfigError(
                f"PROMOBOT_HEALTH_TOKEN must be at least {HEALTH_TOKEN_MIN_LENGTH} characters: a short one "
                "can be guessed (make one with `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            )
        opt_out_words = _words(get("PROMOBOT_OPT_OUT_WORDS"), "PROMOBOT_OPT_OUT_WORDS", cls.opt_out_words)
        opt_in_words = _words(get("PROMOBOT_OPT_IN_WORDS"), "PROMOBOT_OPT_IN_WORDS", cls.opt_in_words)
        delete_words = _words(get("PROMOBOT_DELETE_WORDS"), "PROMOBOT_DELETE_WORDS", cls.delete_words)
        both = sorted(set(map(keyword, opt_out_words)) & set(map(keyword, opt_in_words)))
        if both:
            raise ConfigError(
                f"PROMOBOT_OPT_OUT_WORDS and PROMOBOT_OPT_IN_WORDS both hold {', '.join(map(repr, both))}"
            )
        app_id = get("PROMOBOT_APP_ID") or ""
        if app_id and not (app_id.isdigit() and app_id.isascii()):
            raise ConfigError(
                f"PROMOBOT_APP_ID={app_id!r} is not a Meta app id (digits; `python -m bot doctor` shows it)"
            )
        handover = get("PROMOBOT_HANDOVER_MINUTES")
        try:
            handover_minutes = float(handover) if handover else cls.handover_minutes
        except ValueError:
            raise ConfigError(f"PROMOBOT_HANDOVER_MINUTES={handover!r} is not a number of minutes") from None
        if not 0 <= handover_minutes <= MAX_HANDOVER_MINUTES:  # also refuses NaN
            raise ConfigError(
                f"PROMOBOT_HANDOVER_MINUTES={handover!r} is not between 0 and "
                f"{MAX_HANDOVER_MINUTES:.0f} minutes"
            )
        return cls(
            mode=mode,
            opt_out_words=opt_out_words,
            delete_words=delete_words,
            opt_in_words=opt_in_words,
            app_id=app_id,
            handover_minutes=handover_minutes,
            staff_pin=staff_pin,
            proxies=int(raw_proxies),
            health_token=health_token,
            app_secret=platform["PROMOBOT_APP_SECRET"],
            verify_token=platform["PROMOBOT_VERIFY_TOKEN"],
            page_token=platform["PROMOBOT_PAGE_TOKEN"],
            graph_url=graph_url,
            graph_version=get("PROMOBOT_GRAPH_VERSION") or cls.graph_version,
            data=data,
            campaign=Path(get("PROMOBOT_CAMPAIGN") or cls.campaign),
            public_url=public_url,
            database_url=database_url,
            database_wait_s=database_wait_s,
            reply_max_age_s=reply_max_age_s,
            graph_timeout_s=graph_timeout_s,
            flush_seconds=flush_seconds,
            log_level=(get("PROMOBOT_LOG_LEVEL") or cls.log_level).upper(),
        )


def keyword(text: str) -> str:
    """A message or a word as opt-out and opt-in words are matched: case folded, punctuation and extra
    spaces gone ("STOP." and "stop" are one; "stop please" stays two words)."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


def _words(raw: str | None, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of words (each as `_keyword` makes it), or `default` when unset."""
    if raw is None:
        return default
    words = tuple(dict.fromkeys(word for word in map(keyword, raw.split(",")) if word))
    if not words:
        raise ConfigError(f"{name}={raw!r} holds no word (give them comma-separated, e.g. stop,unsubscribe)")
    return words
