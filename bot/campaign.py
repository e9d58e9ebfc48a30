"""The campaign file: what the customers read, loaded and checked once, at start-up.

A mistake in the file (a missing key, a text too long for Messenger, an unknown placeholder, a typo in a key
name) stops the bot before it answers anyone, with the file, the key and what is wrong.
"""

from __future__ import annotations

import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# The Messenger Platform's limits (Send API reference): a text message holds 2,000 characters, a button
# template's text 640, a button title 20.
TEXT_LIMIT = 2000
TEMPLATE_TEXT_LIMIT = 640
BUTTON_TITLE_LIMIT = 20

# Campaign and variant names travel inside button payloads, separated by "|".
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The longest first name the welcome may receive; the template text must stay under its limit with it.
FIRST_NAME_ROOM = 35


class CampaignError(ValueError):
    """The campaign file is unusable; the message names the file, the key and the reason."""


@dataclass(frozen=True)
class Campaign:
    id: str
    welcome_text: str  # may hold {first_name}
    yes: str
    no: str
    coupon_text: str
    reveal: str
    code: str
    thanks_text: str
    # An https URL, or a path relative to the data directory that the bot serves under /media/.
    thanks_image: str
    variant: str | None = None

    @property
    def image_is_local(self) -> bool:
        return not self.thanks_image.startswith(("https://", "http://"))


# key -> (limit, placeholders allowed)
_TEXTS = {
    "welcome.text": (TEMPLATE_TEXT_LIMIT - FIRST_NAME_ROOM, {"first_name"}),
    "welcome.yes": (BUTTON_TITLE_LIMIT, set()),
    "welcome.no": (BUTTON_TITLE_LIMIT, set()),
    "coupon.text": (TEMPLATE_TEXT_LIMIT, set()),
    "coupon.reveal": (BUTTON_TITLE_LIMIT, set()),
    "coupon.code": (TEXT_LIMIT, set()),
    "thanks.text": (TEXT_LIMIT, set()),
    "thanks.image_url": (TEXT_LIMIT, set()),
}
_TOP_LEVEL = {"id", "variant", "welcome", "coupon", "thanks"}


def load_campaign(path: Path, data_dir: Path | None = None) -> Campaign:
    """Read and check a campaign file. `data_dir` is where a local thank-you image must be found."""
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CampaignError(f"{where}: no such campaign file (set PROMOBOT_CAMPAIGN)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CampaignError(f"{where}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CampaignError(f"{where}: not valid TOML: {exc}") from None
    return parse_campaign(raw, where=where, data_dir=data_dir)


def parse_campaign(raw: dict, *, where: str = "campaign", data_dir: Path | None = None) -> Campaign:
    def fail(key: str, reason: str) -> CampaignError:
        return CampaignError(f"{where}: {key}: {reason}")

    for key in raw:
        if key not in _TOP_LEVEL:
            raise fail(key, f"unknown key (expected one of {', '.join(sorted(_TOP_LEVEL))})")
    values: dict[str, str] = {}
    for name in ("id", "variant"):
        value = raw.get(name)
        if value is None:
            if name == "id":
                raise fail(name, "missing")
            continue
        if not isinstance(value, str) or not _NAME.match(value):
            raise fail(
                name, "must be 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
            )
        values[name] = value

    for section in ("welcome", "coupon", "thanks"):
        table = raw.get(section)
        if not isinstance(table, dict):
            raise fail(section, "missing section" if table is None else "must be a table")
        expected = {key.split(".")[1] for key in _TEXTS if key.startswith(section + ".")}
        for key in table:
            if key not in expected:
                raise fail(f"{section}.{key}", f"unknown key (expected {', '.join(sorted(expected))})")

    for key, (limit, allowed) in _TEXTS.items():
        section, name = key.split(".")
        value = raw[section].get(name)
        if value is None:
            raise fail(key, "missing")
        if not isinstance(value, str):
            raise fail(key, "must be a string")
        if not value.strip():
            raise fail(key, "must not be empty")
        if len(value) > limit:
            raise fail(key, f"{len(value)} characters, Messenger allows {limit} here")
        _check_placeholders(value, allowed, lambda reason, key=key: fail(key, reason))
        # Texts without placeholders are stored as customers will read them ("{{" becomes "{").
        values[key] = value if allowed else value.format()

    image = values["thanks.image_url"]
    parts = urlsplit(image)
    if parts.scheme in ("http", "https"):
        if parts.scheme != "https" or not parts.netloc:
            raise fail("thanks.image_url", "Messenger fetches images over https: use an https:// URL")
    elif parts.scheme:
        raise fail("thanks.image_url", "must be an https:// URL or a file under the data directory")
    else:
        relative = Path(image)
        if relative.is_absolute() or ".." in relative.parts:
            raise fail("thanks.image_url", "a local image must be a path inside the data directory")
        if data_dir is not None and not (data_dir / relative).is_file():
            raise fail("thanks.image_url", f"no file {data_dir / relative}")

    return Campaign(
        id=values["id"],
        variant=values.get("variant"),
        welcome_text=values["welcome.text"],
        yes=values["welcome.yes"],
        no=values["welcome.no"],
        coupon_text=values["coupon.text"],
        reveal=values["coupon.reveal"],
        code=values["coupon.code"],
        thanks_text=values["thanks.text"],
        thanks_image=image,
    )


def _check_placeholders(text: str, allowed: set[str], fail) -> None:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise fail(f"bad braces ({exc}); write {{{{ and }}}} for literal braces") from None
    for name in fields:
        if name not in allowed:
            hint = f"only {{{', '.join(sorted(allowed))}}} is known" if allowed else "no placeholders here"
            raise fail(f"unknown placeholder {{{name}}}: {hint}")
