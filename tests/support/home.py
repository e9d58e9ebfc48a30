"""A bot's home for tests: the test secrets, a data directory with a campaign, the environment naming them."""

from __future__ import annotations

import shutil
from datetime import date, timedelta
from pathlib import Path

from tests.support.paths import REPO

APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
PAGE_TOKEN = "test-page-token"
SECRETS = {
    "PROMOBOT_APP_SECRET": APP_SECRET,
    "PROMOBOT_VERIFY_TOKEN": VERIFY_TOKEN,
    "PROMOBOT_PAGE_TOKEN": PAGE_TOKEN,
}

# The last day single-use codes are valid in tests: some months ahead, whatever day the tests run.
LAST_DAY = date.today() + timedelta(days=90)
EXPIRES = f'expires = "{LAST_DAY.isoformat()}"'


def make_home(root: Path) -> Path:
    """A data directory under `root` with the example campaign and its thank-you image."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("campaign.toml", "thanks.png"):
        shutil.copy(REPO / "data" / name, data / name)
    return data


def single_use_home(root: Path, codes: list[str]) -> Path:
    """A data directory whose campaign hands out `codes`, one per customer, valid until LAST_DAY."""
    data = make_home(root)
    text = (data / "campaign.toml").read_text()
    text = text.replace(
        'code = "SPRING20"',
        'codes = "spring-codes.csv"\nall_gone = "Sorry, all gone!"\n' + EXPIRES,
    )
    (data / "campaign.toml").write_text(text)
    (data / "spring-codes.csv").write_text("code\n" + "".join(f"{code}\n" for code in codes))
    return data


def shown_day(day: date) -> str:
    """A day as the code message and the till page show it."""
    return f"{day.day} {day:%B %Y}"


def environment(data: Path, **env: str) -> dict[str, str]:
    """The bot's variables for a server on `data` (its campaign file inside), the test secrets, and `env`."""
    return {
        **SECRETS,
        "PROMOBOT_DATA": str(data),
        "PROMOBOT_CAMPAIGN": str(data / "campaign.toml"),
        **env,
    }
