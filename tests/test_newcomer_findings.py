"""What a newcomer following the README ran into, each as the behaviour the README promises.

Each test is marked xfail(strict=True) while the behaviour is missing: it runs, fails on its assertion, and
turns the suite red the day the code is fixed, so that whoever fixes it removes the mark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from bot.codes import load_codes
from tests.support.paths import REPO


def clean_environment(**env: str) -> dict[str, str]:
    """This process's environment without promobot's variables (a developer's shell may hold a page's)."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("PROMOBOT_") and k != "DATABASE_URL"}
    return {**kept, "PYTHONPATH": str(REPO), **env}


@pytest.mark.xfail(strict=True, reason="run-local returns 0 when a server exits at start-up")
def test_make_run_exits_non_zero_when_the_bot_refuses_its_campaign(tmp_path):
    # The demo's events already there, so run-local seeds nothing; the campaign has a misspelt key.
    (tmp_path / "data" / "demo" / "events").mkdir(parents=True)
    campaign = (REPO / "data" / "demo-campaign.toml").read_text(encoding="utf-8")
    (tmp_path / "data" / "bad.toml").write_text(campaign.replace("reveal =", "revael ="), encoding="utf-8")
    shutil.copy(REPO / "data" / "demo-codes.csv", tmp_path / "data")
    shutil.copy(REPO / "data" / "thanks.png", tmp_path / "data")

    run = subprocess.run(
        [sys.executable, "-m", "bot", "run-local"],
        cwd=tmp_path,
        env=clean_environment(PROMOBOT_CAMPAIGN="data/bad.toml"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert "coupon.revael: unknown key" in run.stderr + run.stdout
    assert run.returncode != 0, run.stdout


@pytest.mark.xfail(strict=True, reason="load_codes reads a byte order mark as part of the first line")
def test_a_codes_file_saved_by_a_spreadsheet_with_a_byte_order_mark_is_read(tmp_path):
    # "CSV UTF-8" from a spreadsheet starts with a byte order mark; `redeem --csv` already reads such files.
    codes = tmp_path / "codes.csv"
    codes.write_bytes(b"\xef\xbb\xbfcode\r\nAAA-111\r\nBBB-222\r\n")

    assert load_codes(codes) == ["AAA-111", "BBB-222"]


@pytest.mark.xfail(strict=True, reason="forget's question raises EOFError when stdin is closed")
def test_forget_without_an_answer_deletes_nothing_and_prints_no_traceback(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "bot", "forget", "7000000000000001"],
        cwd=REPO,
        env=clean_environment(PROMOBOT_DATA=str(tmp_path / "data")),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 1
    assert "nothing deleted" in run.stdout
