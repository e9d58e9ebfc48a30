import re
from pathlib import Path

import pytest

from bot.config import ConfigError, Mode, Settings

SECRETS = {"PROMOBOT_APP_SECRET": "s", "PROMOBOT_VERIFY_TOKEN": "v", "PROMOBOT_PAGE_TOKEN": "t"}


def test_local_mode_needs_no_secrets_and_takes_the_defaults():
    settings = Settings.from_env({}, Mode.LOCAL)

    assert settings.mode is Mode.LOCAL
    assert settings.data == "./data"
    assert settings.campaign == Path("data/campaign.toml")
    assert settings.database == "sqlite:///data/promobot.sqlite3"


def test_local_mode_ignores_the_environments_secrets_for_throwaway_ones():
    first, second = Settings.from_env(SECRETS, Mode.LOCAL), Settings.from_env(SECRETS, Mode.LOCAL)

    for name in ("app_secret", "verify_token", "page_token"):
        assert getattr(first, name) not in ("", *SECRETS.values())
        assert getattr(first, name) != getattr(second, name)  # never a secret anyone else knows


@pytest.mark.parametrize("mode", [Mode.SERVER, Mode.LAMBDA])
def test_a_server_with_all_three_secrets_uses_them(mode):
    settings = Settings.from_env(SECRETS, mode)

    assert settings.mode is mode
    assert (settings.app_secret, settings.verify_token, settings.page_token) == ("s", "v", "t")


@pytest.mark.parametrize("mode", [Mode.SERVER, Mode.LAMBDA])
def test_a_server_without_secrets_is_refused_naming_all_three(mode):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"PROMOBOT_APP_SECRET": "  "}, mode)

    assert str(refused.value).startswith(
        "PROMOBOT_APP_SECRET, PROMOBOT_VERIFY_TOKEN, PROMOBOT_PAGE_TOKEN not set"
    )
    assert f"{mode} mode" in str(refused.value)


@pytest.mark.parametrize("missing", list(SECRETS))
def test_a_server_missing_one_secret_is_refused_naming_only_that_one(missing):
    env = {name: value for name, value in SECRETS.items() if name != missing}

    with pytest.raises(ConfigError, match=f"^{missing} not set"):
        Settings.from_env(env)  # server mode unless told otherwise


def test_secrets_never_appear_in_repr():
    env = {
        "PROMOBOT_APP_SECRET": "hush",
        "PROMOBOT_VERIFY_TOKEN": "v",
        "PROMOBOT_PAGE_TOKEN": "EAAGsecret",
        "DATABASE_URL": "postgres://promobot:pgpassword@db.example:5432/promobot",
    }
    text = repr(Settings.from_env(env))
    assert "hush" not in text
    assert "EAAGsecret" not in text
    assert "pgpassword" not in text


def test_s3_store_keeps_its_sqlite_state_on_local_disk():
    settings = Settings.from_env({"PROMOBOT_DATA": "s3://bucket/prefix"}, Mode.LOCAL)
    assert settings.data_is_s3
    assert settings.database == "sqlite:///.promobot/promobot.sqlite3"
    assert Settings.from_env({**SECRETS, "PROMOBOT_DATA": "s3://b/p"}, Mode.LAMBDA).database.startswith(
        "sqlite:////tmp/"
    )


def test_the_database_url_comes_from_promobot_or_heroku_naming():
    heroku = Settings.from_env({**SECRETS, "DATABASE_URL": "postgres://u:p@h/db"})
    ours = Settings.from_env(
        {**SECRETS, "DATABASE_URL": "postgres://u:p@h/db", "PROMOBOT_DATABASE_URL": "postgresql://o@h/x"}
    )
    assert heroku.database == "postgres://u:p@h/db"
    assert ours.database == "postgresql://o@h/x"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"PROMOBOT_GRAPH_URL": "graph.facebook.com"}, "PROMOBOT_GRAPH_URL"),
        ({"PROMOBOT_DATA": "s3://"}, "PROMOBOT_DATA"),
        ({"PROMOBOT_DATABASE_URL": "mysql://h/db"}, "PROMOBOT_DATABASE_URL has scheme 'mysql'"),
        ({"PROMOBOT_REPLY_MAX_AGE": "soon"}, "PROMOBOT_REPLY_MAX_AGE"),
        ({"PROMOBOT_REPLY_MAX_AGE": "-1"}, "PROMOBOT_REPLY_MAX_AGE"),
        ({"PROMOBOT_REPLY_MAX_AGE": "nan"}, "PROMOBOT_REPLY_MAX_AGE"),
        ({"PROMOBOT_REPLY_MAX_AGE": "172800"}, "PROMOBOT_REPLY_MAX_AGE='172800' is not between 0 and 86400"),
        ({"PROMOBOT_STAFF_PIN": "4826"}, "PROMOBOT_STAFF_PIN must be 6 to 12 digits"),
        ({"PROMOBOT_STAFF_PIN": "48261"}, "PROMOBOT_STAFF_PIN must be 6 to 12 digits"),
        ({"PROMOBOT_STAFF_PIN": "4826130000000"}, "PROMOBOT_STAFF_PIN must be 6 to 12 digits"),
        ({"PROMOBOT_STAFF_PIN": "48261²"}, "PROMOBOT_STAFF_PIN must be 6 to 12 digits"),
        ({"PROMOBOT_PROXIES": "yes"}, "PROMOBOT_PROXIES='yes' is not a number of proxies"),
        ({"PROMOBOT_PROXIES": "-1"}, "PROMOBOT_PROXIES"),
        ({"PROMOBOT_PROXIES": "6"}, "PROMOBOT_PROXIES"),
    ],
)
def test_malformed_settings_are_refused_by_name(env, name):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**SECRETS, **env})


def test_proxies_in_front_are_none_unless_told():
    assert Settings.from_env(SECRETS).proxies == 0
    assert Settings.from_env({**SECRETS, "PROMOBOT_PROXIES": "1"}).proxies == 1


def test_graph_timeout_and_flush_interval_are_seconds():
    settings = Settings.from_env({**SECRETS, "PROMOBOT_GRAPH_TIMEOUT": "0.5", "PROMOBOT_FLUSH_SECONDS": "2"})

    assert (settings.graph_timeout_s, settings.flush_seconds) == (0.5, 2.0)


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan"])
def test_a_bad_number_of_seconds_is_refused_naming_the_variable(value):
    with pytest.raises(ConfigError, match="PROMOBOT_GRAPH_TIMEOUT"):
        Settings.from_env({"PROMOBOT_GRAPH_TIMEOUT": value}, Mode.LOCAL)


def test_the_health_token_is_read_kept_out_of_repr_and_refused_when_short():
    token = "a-monitor-health-token-0123"
    settings = Settings.from_env({**SECRETS, "PROMOBOT_HEALTH_TOKEN": token})

    assert settings.health_token == token
    assert token not in repr(settings)
    assert Settings.from_env(SECRETS).health_token == ""  # unset: the deep health checks are off
    with pytest.raises(ConfigError, match="PROMOBOT_HEALTH_TOKEN must be at least 16 characters"):
        Settings.from_env({**SECRETS, "PROMOBOT_HEALTH_TOKEN": "short"})


def test_opt_out_and_opt_in_words_handover_and_app_id_are_read_and_checked():
    settings = Settings.from_env(
        {
            "PROMOBOT_OPT_OUT_WORDS": " STOP!, Opt out ,,",
            "PROMOBOT_OPT_IN_WORDS": "Start",
            "PROMOBOT_APP_ID": "700000000000001",
            "PROMOBOT_HANDOVER_MINUTES": "45",
        },
        mode=Mode.LOCAL,
    )

    assert (settings.opt_out_words, settings.opt_in_words) == (("stop", "opt out"), ("start",))
    assert (settings.app_id, settings.handover_minutes) == ("700000000000001", 45.0)
    defaults = Settings.from_env({}, mode=Mode.LOCAL)
    assert (defaults.opt_out_words, defaults.opt_in_words) == (("stop", "unsubscribe"), ("start",))
    assert (defaults.app_id, defaults.handover_minutes) == ("", 30.0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PROMOBOT_OPT_OUT_WORDS", " , ! ", "PROMOBOT_OPT_OUT_WORDS=', !' holds no word"),
        (
            "PROMOBOT_OPT_IN_WORDS",
            "Stop",
            "PROMOBOT_OPT_OUT_WORDS and PROMOBOT_OPT_IN_WORDS both hold 'stop'",
        ),
        ("PROMOBOT_APP_ID", "my-app", "PROMOBOT_APP_ID='my-app' is not a Meta app id"),
        ("PROMOBOT_HANDOVER_MINUTES", "soon", "PROMOBOT_HANDOVER_MINUTES='soon' is not a number of minutes"),
        ("PROMOBOT_HANDOVER_MINUTES", "-1", "PROMOBOT_HANDOVER_MINUTES='-1' is not between 0 and 10080"),
        ("PROMOBOT_HANDOVER_MINUTES", "nan", "not between 0 and 10080"),
    ],
)
def test_a_bad_reach_setting_is_refused_naming_it(name, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env({name: value}, mode=Mode.LOCAL)


def test_a_staff_pin_of_six_digits_is_taken_and_local_mode_keeps_its_own():
    assert Settings.from_env({**SECRETS, "PROMOBOT_STAFF_PIN": "482613"}).staff_pin == "482613"
    assert Settings.from_env({}, Mode.LOCAL).staff_pin == "0000"  # a throwaway, on 127.0.0.1 only
    with pytest.raises(ConfigError, match="PROMOBOT_STAFF_PIN"):
        Settings.from_env({"PROMOBOT_STAFF_PIN": "4826"}, Mode.LOCAL)
