"""The campaign file is checked at start-up: every mistake names the file, the key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.campaign import CampaignError, load_campaign, parse_campaign
from bot.flow import render_welcome_text
from tests.support.campaigns import EXAMPLE, example
from tests.support.paths import REPO


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


def test_a_disclosure_line_goes_above_every_welcome_and_must_leave_it_room():
    raw = {**example(), "privacy": {"disclosure": "You are chatting with an automated assistant."}}
    campaign = parse_campaign(raw)

    text = render_welcome_text(campaign, "Ana")
    assert text == "You are chatting with an automated assistant.\n\n" + campaign.welcome_text.format(
        first_name="Ana"
    )
    assert render_welcome_text(parse_campaign(example()), "Ana") == campaign.welcome_text.format(
        first_name="Ana"
    )
    long_welcome = {**raw["welcome"], "text": "Hi {first_name}! " + "x" * 550}
    with pytest.raises(
        CampaignError, match=r"privacy\.disclosure: above welcome\.text it makes 614 characters"
    ):
        parse_campaign({**raw, "welcome": long_welcome})


@pytest.mark.parametrize("where", ["welcome", "variant"])
def test_a_welcome_naming_the_customer_twice_must_leave_room_for_both_names(where):
    # 598 characters: under the 605 a welcome may have, but each {first_name} becomes up to 35 characters.
    text = "Hi {first_name}! " + "x" * 564 + " Bye {first_name}"
    raw = example()
    if where == "welcome":
        raw["welcome"]["text"] = text
        key = "welcome.text"
    else:
        raw = with_variants(A={"welcome": {"text": text}}, B={})
        key = "variants.A.welcome.text"

    with pytest.raises(CampaignError) as refused:
        parse_campaign(raw, where="data/campaign.toml", data_dir=REPO / "data")

    assert str(refused.value).startswith(f"data/campaign.toml: {key}: ")
    assert "it makes 644 characters; Messenger allows 640" in str(refused.value)


def test_a_welcome_naming_the_customer_twice_fits_when_both_names_do():
    raw = example()
    raw["welcome"]["text"] = "Hi {first_name}! " + "x" * 550 + " Bye {first_name}"

    campaign = parse_campaign(raw, data_dir=REPO / "data")

    assert len(render_welcome_text(campaign, "A" * 500)) <= 640


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


# -- variants ------------------------------------------------------------------------------------------------


def with_variants(**tables: dict) -> dict:
    raw = example()
    raw["variants"] = tables
    return raw


def test_variants_load_in_file_order_with_their_weights_and_overrides():
    raw = with_variants(
        A={},
        B={
            "weight": 3,
            "welcome": {"text": "Hey {first_name}, a gift?"},
            "thanks": {"image_url": "thanks.png"},
        },
    )

    campaign = parse_campaign(raw, data_dir=REPO / "data")

    assert [(v.name, v.weight) for v in campaign.variants] == [("A", 1), ("B", 3)]
    assert campaign.shares == (("A", 0.25), ("B", 0.75))
    assert campaign.variants[1].welcome_text == "Hey {first_name}, a gift?"
    assert campaign.variants[1].coupon_text is None  # the campaign's own


def test_the_variants_of_the_demo_campaign_load():
    demo = load_campaign(REPO / "data" / "demo-campaign.toml", data_dir=REPO / "data")

    assert [v.name for v in demo.variants] == ["A", "B"]
    assert demo.for_variant("B").welcome_text != demo.for_variant("A").welcome_text
    assert demo.for_variant("B").coupon_text != demo.for_variant("A").coupon_text


@pytest.mark.parametrize(
    ("tables", "key", "reason"),
    [
        ({"A": {}, "B": {"colour": "red"}}, "variants.B.colour", "unknown key"),
        ({"A": {}, "B": {"welcome": {"yes": "Sure!"}}}, "variants.B.welcome.yes", "unknown key"),
        ({"A": {}, "B": {"weight": 0}}, "variants.B.weight", "not a positive number"),
        ({"A": {"weight": -1}, "B": {}}, "variants.A.weight", "not a positive number"),
        ({"A": {}, "B": {"weight": "2"}}, "variants.B.weight", "not a positive number"),
        ({"A": {}, "B": {"weight": float("nan")}}, "variants.B.weight", "not a positive number"),
        ({"A": {}, "B": {"weight": True}}, "variants.B.weight", "not a positive number"),
        ({"A": {}}, "variants", "at least two variants (found A)"),
        ({"A": {}, "B.2": {}}, 'variants."B.2"', "no '.'"),
        ({"A": {}, "B|2": {}}, "variants.B|2", "letters, digits"),
        ({"A": {}, "B": 3}, "variants.B", "must be a table"),
        ({"A": {}, "B": {"thanks": {"image_url": "thanks-b.png"}}}, "variants.B.thanks.image_url", "no file"),
        (
            {"A": {}, "B": {"thanks": {"image_url": "http://x.example/b.png"}}},
            "variants.B.thanks.image_url",
            "https",
        ),
        ({"A": {}, "B": {"coupon": {"text": "x" * 641}}}, "variants.B.coupon.text", "Messenger allows 640"),
        (
            {"A": {}, "B": {"welcome": {"text": "Hi {name}"}}},
            "variants.B.welcome.text",
            "unknown placeholder",
        ),
    ],
)
def test_a_bad_variant_is_refused_naming_the_key(tables, key, reason):
    with pytest.raises(CampaignError) as refused:
        parse_campaign(with_variants(**tables), where="data/campaign.toml", data_dir=REPO / "data")

    message = str(refused.value)
    assert message.startswith(f"data/campaign.toml: {key}: ")
    assert reason in message


def test_a_variant_label_and_variants_are_exclusive():
    raw = with_variants(A={}, B={})
    raw["variant"] = "B"

    with pytest.raises(CampaignError, match=r"^campaign: variant: give either"):
        parse_campaign(raw, data_dir=REPO / "data")


def test_a_variants_local_image_is_looked_for_in_the_data_directory(tmp_path: Path):
    (tmp_path / "thanks.png").write_bytes(b"png")
    path = tmp_path / "campaign.toml"
    path.write_text(EXAMPLE.read_text() + '\n[variants.A]\n[variants.B]\nthanks.image_url = "thanks-b.png"\n')

    with pytest.raises(CampaignError, match=rf"^{path}: variants.B.thanks.image_url: no file"):
        load_campaign(path, data_dir=tmp_path)
    (tmp_path / "thanks-b.png").write_bytes(b"png")
    assert load_campaign(path, data_dir=tmp_path).local_images == ("thanks.png", "thanks-b.png")
