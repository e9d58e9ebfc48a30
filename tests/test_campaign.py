"""The campaign file is checked at start-up: every mistake names the file, the key and the reason."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bot.campaign import CampaignError, load_campaign, parse_campaign
from tests.conftest import REPO

EXAMPLE = REPO / "data" / "campaign.toml"


def example() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def test_the_example_campaign_loads():
    campaign = load_campaign(EXAMPLE, data_dir=REPO / "data")

    assert campaign.id == "spring-sale"
    assert campaign.yes == "Yes! Show me coupon"
    assert campaign.image_is_local


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (lambda c: c["welcome"].pop("yes"), "welcome.yes", "missing"),
        (lambda c: c.pop("coupon"), "coupon", "missing section"),
        (
            lambda c: c["coupon"].update(reveal="Reveal the coupon now!!"),
            "coupon.reveal",
            "Messenger allows 20",
        ),
        (lambda c: c["thanks"].update(text="x" * 2001), "thanks.text", "Messenger allows 2000"),
        (lambda c: c["welcome"].update(text="Hi {name}!"), "welcome.text", "unknown placeholder {name}"),
        (lambda c: c["coupon"].update(text="Hi {first_name}!"), "coupon.text", "unknown placeholder"),
        (lambda c: c["welcome"].update(text="Hi {first_name!"), "welcome.text", "bad braces"),
        (lambda c: c["thanks"].update(image_url="http://example.com/a.png"), "thanks.image_url", "https"),
        (lambda c: c["thanks"].update(image_url="../secret.png"), "thanks.image_url", "inside the data"),
        (lambda c: c["thanks"].update(image_url="missing.png"), "thanks.image_url", "no file"),
        (lambda c: c["coupon"].update(cod="X"), "coupon.cod", "unknown key"),
        (lambda c: c.update(id="spring sale|2"), "id", "letters, digits"),
        (lambda c: c["coupon"].update(code=20), "coupon.code", "must be a string"),
        (lambda c: c["thanks"].update(text="  "), "thanks.text", "must not be empty"),
    ],
)
def test_a_bad_campaign_is_refused_naming_the_key(change, key, reason):
    raw = example()
    change(raw)

    with pytest.raises(CampaignError) as refused:
        parse_campaign(raw, where="data/campaign.toml", data_dir=REPO / "data")

    message = str(refused.value)
    assert message.startswith(f"data/campaign.toml: {key}: ")
    assert reason in message


def test_a_file_that_is_not_toml_is_refused_with_its_name(tmp_path: Path):
    path = tmp_path / "campaign.toml"
    path.write_text('id = "x"\n[welcome\n')

    with pytest.raises(CampaignError, match=r"campaign\.toml: not valid TOML"):
        load_campaign(path)


def test_a_missing_file_says_which_setting_names_it(tmp_path: Path):
    with pytest.raises(CampaignError, match="PROMOBOT_CAMPAIGN"):
        load_campaign(tmp_path / "nope.toml")


def test_literal_braces_reach_customers_unescaped():
    raw = example()
    raw["thanks"]["text"] = "Thanks {{and}} bye"

    assert parse_campaign(raw, data_dir=REPO / "data").thanks_text == "Thanks {and} bye"


def test_an_https_image_needs_no_local_file():
    raw = example()
    raw["thanks"]["image_url"] = "https://cdn.example.com/thanks.jpg"

    campaign = parse_campaign(raw, data_dir=Path("/nonexistent"))

    assert not campaign.image_is_local


def test_the_demo_campaign_of_make_run_hands_out_its_codes():
    from bot.codes import load_codes

    demo = load_campaign(REPO / "data" / "demo-campaign.toml", data_dir=REPO / "data")

    assert demo.single_use
    assert len(load_codes(REPO / "data" / demo.codes)) == 200
