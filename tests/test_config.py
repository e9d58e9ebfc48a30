from pathlib import Path

import pytest

from bot.config import ConfigError, Settings


def test_no_platform_secrets_means_local_mode():
    settings = Settings.from_env({})
    assert settings.local_mode
    assert settings.data == "./data"
    assert settings.campaign == Path("data/campaign.toml")
    assert settings.wal_path == Path("data/wal")


def test_all_three_secrets_mean_platform_mode():
    env = {"PROMOBOT_APP_SECRET": "s", "PROMOBOT_VERIFY_TOKEN": "v", "PROMOBOT_PAGE_TOKEN": "t"}
    assert not Settings.from_env(env).local_mode


def test_partial_platform_config_is_refused_naming_what_is_missing():
    with pytest.raises(ConfigError, match="PROMOBOT_PAGE_TOKEN"):
        Settings.from_env({"PROMOBOT_APP_SECRET": "s", "PROMOBOT_VERIFY_TOKEN": "v"})


def test_secrets_never_appear_in_repr():
    env = {"PROMOBOT_APP_SECRET": "hush", "PROMOBOT_VERIFY_TOKEN": "v", "PROMOBOT_PAGE_TOKEN": "EAAGsecret"}
    text = repr(Settings.from_env(env))
    assert "hush" not in text
    assert "EAAGsecret" not in text


def test_s3_store_keeps_its_wal_on_local_disk():
    settings = Settings.from_env({"PROMOBOT_DATA": "s3://bucket/prefix"})
    assert settings.data_is_s3
    assert not str(settings.wal_path).startswith("s3:")


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"PROMOBOT_GRAPH_URL": "graph.facebook.com"}, "PROMOBOT_GRAPH_URL"),
        ({"PROMOBOT_DATA": "s3://"}, "PROMOBOT_DATA"),
        ({"PROMOBOT_REPLY_MAX_AGE": "soon"}, "PROMOBOT_REPLY_MAX_AGE"),
        ({"PROMOBOT_REPLY_MAX_AGE": "-1"}, "PROMOBOT_REPLY_MAX_AGE"),
        ({"PROMOBOT_REPLY_MAX_AGE": "nan"}, "PROMOBOT_REPLY_MAX_AGE"),
        ({"PROMOBOT_REPLY_MAX_AGE": "172800"}, "PROMOBOT_REPLY_MAX_AGE='172800' is not between 0 and 86400"),
    ],
)
def test_malformed_settings_are_refused_by_name(env, name):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


def test_graph_timeout_and_flush_interval_are_seconds():
    settings = Settings.from_env({"PROMOBOT_GRAPH_TIMEOUT": "0.5", "PROMOBOT_FLUSH_SECONDS": "2"})

    assert (settings.graph_timeout_s, settings.flush_seconds) == (0.5, 2.0)


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan"])
def test_a_bad_number_of_seconds_is_refused_naming_the_variable(value):
    with pytest.raises(ConfigError, match="PROMOBOT_GRAPH_TIMEOUT"):
        Settings.from_env({"PROMOBOT_GRAPH_TIMEOUT": value})
