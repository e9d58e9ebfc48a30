"""The docs name what the code names: steps, KPIs, events, the clock allowance and the settings."""

from __future__ import annotations

import re

from bot.facts import KPIS, PREVIOUS_STEP, SEND_ALLOWANCE, STEPS, EventName
from tests.support.paths import REPO

METRICS = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
README = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())  # lines rejoined


def section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}")
    following = text.find("\n## ", start + 1)
    return text[start : following if following != -1 else None]


def test_the_funnel_table_lists_every_step_in_order_with_what_it_is_a_share_of():
    table = section(METRICS, "The funnel")
    rows = re.findall(r"^\| `(\w+)` \|.*\| (—|\w+) \|$", table, flags=re.MULTILINE)

    assert [step for step, _ in rows] == [str(step) for step in STEPS]
    assert {step: share for step, share in rows if share != "—"} == {
        str(step): str(previous) for step, previous in PREVIOUS_STEP.items()
    }


def test_every_kpi_is_named_with_its_step_in_the_glossary_and_the_readme():
    kpis = " ".join(section(METRICS, "KPIs").split())
    for kpi in KPIS:
        assert f"**{kpi.label}**" in kpis, kpi.label
        assert f"`{kpi.step}`" in kpis, kpi.step
        assert f"`{kpi.share_of}`" in kpis, kpi.share_of
        assert kpi.label in README, kpi.label


def test_every_event_name_is_in_the_glossary():
    events = section(METRICS, "Events and the platform's two clocks")
    named = set(re.findall(r"`(\w+)`", events))

    assert {str(name) for name in EventName} <= named


def test_the_clock_allowance_is_stated_as_the_code_has_it():
    assert f"{SEND_ALLOWANCE.seconds} seconds (`SEND_ALLOWANCE`" in METRICS
    funnel = section(METRICS, "The funnel")
    assert funnel.count(f"at most {SEND_ALLOWANCE.seconds} s before the entry") == 2  # requested, declined
    assert funnel.count(f"at most {SEND_ALLOWANCE.seconds} s before the reveal") == 1  # redeemed


def test_the_readme_names_every_module_of_the_bot_and_the_analytics():
    listing = section((REPO / "README.md").read_text(encoding="utf-8"), "How it works")
    for package in ("bot", "analytics"):
        entry = listing[listing.index(f"- `{package}/`") :]
        entry = entry[: entry.find("\n- ", 1) if entry.find("\n- ", 1) != -1 else None]
        named = set(re.findall(r"`(\w+)\.py`", entry))
        modules = {path.stem for path in (REPO / package).glob("*.py")} - {"__init__", "__main__"}
        assert modules - named == set(), f"{package}/ modules the README does not name"
        assert named - modules == set(), f"{package}/ modules the README names that do not exist"


def test_every_option_of_the_command_lines_says_what_it_is():
    import argparse

    from analytics.__main__ import command_line as analytics_command_line
    from bot.__main__ import command_line as bot_command_line

    def unexplained(parser: argparse.ArgumentParser, path: str) -> list[str]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    found += unexplained(command, f"{path} {name}")
            elif not action.help and not isinstance(action, argparse._HelpAction):
                found.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return found

    assert unexplained(bot_command_line(), "python -m bot") == []
    assert unexplained(analytics_command_line(), "python -m analytics") == []


def test_every_setting_read_from_the_environment_is_in_the_readmes_configuration():
    readers = [REPO / "bot" / "config.py", *sorted((REPO / "analytics").glob("*.py"))]
    code = "".join(path.read_text(encoding="utf-8") for path in readers)
    settings = set(re.findall(r"\"(PROMOBOT_[A-Z_]+)\"", code))
    assert {"PROMOBOT_APP_SECRET", "PROMOBOT_PROXIES", "PROMOBOT_DASHBOARD_TOKEN"} <= settings
    configuration = section((REPO / "README.md").read_text(encoding="utf-8"), "Configuration")
    assert sorted(name for name in settings if f"`{name}`" not in configuration) == []
