"""The campaign file: what the customers read, loaded and checked once, at start-up.

A mistake in the file (a missing key, a text too long for Messenger, an unknown placeholder, a typo in a key
name) stops the bot before it answers anyone, with the file, the key and what is wrong.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import string
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cached_property
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# The Messenger Platform's limits (Send API reference): a text message holds 2,000 characters, a button
# template's text 640, a button title 20.
TEXT_LIMIT = 2000
TEMPLATE_TEXT_LIMIT = 640
BUTTON_TITLE_LIMIT = 20

# Campaign and variant names travel inside button payloads, separated by "|".
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A variant's name also travels in entry links' refs (`<campaign>.<placement>.<variant>`), split at dots.
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# The longest first name the welcome may receive; the template text must stay under its limit with it.
FIRST_NAME_ROOM = 35


class CampaignError(ValueError):
    """The campaign file is unusable; the message names the file, the key and the reason."""


_Fail = Callable[[str, str], CampaignError]  # (key, reason): the error to raise, naming the file too
_FailAt = Callable[[str], CampaignError]  # (reason): the same, for a key already known


@dataclass(frozen=True)
class Variant:
    """One variant of an A/B test: its share of customers (`weight`, relative to the others) and the texts and
    thank-you image it replaces; None keeps the campaign's own."""

    name: str
    weight: float = 1
    welcome_text: str | None = None
    coupon_text: str | None = None
    thanks_text: str | None = None
    thanks_image: str | None = None


# What a customer who opts out (or back in) is told, unless the file's [opt_out] section says otherwise.
DEFAULT_OPT_OUT_TEXT = "You will get no more promotions from us. Write START if you change your mind."
DEFAULT_OPT_IN_TEXT = "Welcome back! You will hear about our offers again."
DEFAULT_DELETION_TEXT = (
    "We are deleting everything we kept about you; it takes a few minutes. Thanks for having stopped by!"
)
DISCLOSURE_LIMIT = 200  # the line goes above the welcome, which must stay under its template's limit
DEFAULT_CODE_TEXT = "Your code: {code}\nValid until: {expires}\nAt the till, show this link: {link}"
MAX_VALID_DAYS = 366


def assign_variant(campaign_id: str, customer_id: str, shares: Sequence[tuple[str, float]]) -> str:
    """The variant of `shares` ((name, share) in file order) a customer gets: the SHA-256 of campaign and
    customer read as a number u in [0, 1), and the first variant whose cumulative share exceeds it."""
    digest = hashlib.sha256(f"{campaign_id}\x00{customer_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for name, share in shares:
        cumulative += share
        if u < cumulative:
            return name
    return shares[-1][0]  # u just under 1 and shares that add up to a hair less


@dataclass(frozen=True)
class Campaign:
    id: str
    welcome_text: str  # may hold {first_name}
    yes: str
    no: str
    coupon_text: str
    reveal: str
    code: str | None  # the code everyone gets; None with single-use `codes`
    thanks_text: str
    # An https URL, or a path relative to the data directory that the bot serves under /media/.
    thanks_image: str
    variant: str | None = None
    # Single-use codes: a codes file under the data directory (bot.codes), what to say once they are all
    # handed out, the code message (placeholders {code}, {expires}, {link}), and how long a code is valid.
    codes: str | None = None
    all_gone: str | None = None
    code_text: str = DEFAULT_CODE_TEXT
    # Sent to the customer when their code is used at the till; None: nothing is sent. Only within Messenger's
    # 24 hours of the customer's last message: later, the platform refuses it (recorded as send_failed).
    redeemed_text: str | None = None
    expires: date | None = None  # the last day a code is valid, in `timezone`
    valid_days: int | None = None  # or: days from the reveal
    timezone: str = "UTC"
    # An A/B test: two or more variants, the first the reference; empty for a campaign without one.
    variants: tuple[Variant, ...] = ()
    # The one-time confirmations of an opt-out and of an opt-in ([opt_out] stopped, resumed).
    opt_out_text: str = DEFAULT_OPT_OUT_TEXT
    opt_in_text: str = DEFAULT_OPT_IN_TEXT
    # [privacy]: a line above every welcome saying the customer talks to a bot (required in some regions),
    # and the answer to a customer's request to delete their data.
    disclosure: str | None = None
    deletion_text: str = DEFAULT_DELETION_TEXT

    @property
    def image_is_local(self) -> bool:
        return _is_local(self.thanks_image)

    @property
    def local_images(self) -> tuple[str, ...]:
        """Every thank-you image the bot serves itself (the campaign's and its variants'), each once."""
        images = [self.thanks_image, *(v.thanks_image for v in self.variants if v.thanks_image)]
        return tuple(dict.fromkeys(image for image in images if _is_local(image)))

    @cached_property
    def shares(self) -> tuple[tuple[str, float], ...]:
        """Each variant's planned share of customers (weight / total), in file order."""
        total = sum(v.weight for v in self.variants)
        return tuple((v.name, v.weight / total) for v in self.variants)

    def assigned_variant(self, customer_id: str) -> str | None:
        """The variant a customer sees, the same at every visit: a hash of campaign and customer read as a
        number u in [0, 1), and the first variant whose cumulative share exceeds it. None without variants."""
        if not self.variants:
            return None
        return assign_variant(self.id, customer_id, self.shares)

    def for_variant(self, name: str | None) -> Campaign:
        """The campaign as customers of variant `name` read it (its buttons carry the name). A name the
        campaign does not have (any longer), or None, gets the first variant. Without variants: itself."""
        if not self.variants:
            return self
        variant = next((v for v in self.variants if v.name == name), self.variants[0])
        return replace(
            self,
            variant=variant.name,
            welcome_text=variant.welcome_text or self.welcome_text,
            coupon_text=variant.coupon_text or self.coupon_text,
            thanks_text=variant.thanks_text or self.thanks_text,
            thanks_image=variant.thanks_image or self.thanks_image,
            variants=(),
        )

    @property
    def single_use(self) -> bool:
        return self.codes is not None

    @property
    def zone(self) -> tzinfo:
        return UTC if self.timezone == "UTC" else ZoneInfo(self.timezone)

    def code_expiry(self, revealed_at: datetime) -> datetime | None:
        """When a code handed out at `revealed_at` stops being valid (the end of its last day), or None."""
        if self.expires is not None:
            last_day = self.expires
        elif self.valid_days is not None:
            last_day = revealed_at.astimezone(self.zone).date() + timedelta(days=self.valid_days)
        else:
            return None
        return datetime.combine(last_day + timedelta(days=1), time(), self.zone).astimezone(UTC)


# key -> (limit, placeholders allowed)
_TEXTS = {
    "welcome.text": (TEMPLATE_TEXT_LIMIT - FIRST_NAME_ROOM, {"first_name"}),
    "welcome.yes": (BUTTON_TITLE_LIMIT, set()),
    "welcome.no": (BUTTON_TITLE_LIMIT, set()),
    "coupon.text": (TEMPLATE_TEXT_LIMIT, set()),
    "coupon.reveal": (BUTTON_TITLE_LIMIT, set()),
    "coupon.code": (TEXT_LIMIT, set()),
    "coupon.all_gone": (TEXT_LIMIT, set()),
    "coupon.code_text": (TEXT_LIMIT - 300, {"code", "expires", "link"}),  # room for a code, a date and a link
    "coupon.redeemed_text": (TEXT_LIMIT, set()),
    "thanks.text": (TEXT_LIMIT, set()),
    "thanks.image_url": (TEXT_LIMIT, set()),
    "opt_out.stopped": (TEXT_LIMIT, set()),
    "opt_out.resumed": (TEXT_LIMIT, set()),
    "privacy.disclosure": (DISCLOSURE_LIMIT, set()),
    "privacy.deleted": (TEXT_LIMIT, set()),
}
_OPTIONAL = {"coupon.code", "coupon.all_gone", "coupon.code_text", "coupon.redeemed_text"}  # see below
_OPTIONAL_SECTIONS = {"opt_out", "privacy"}  # a missing one keeps its texts' defaults
_COUPON_SETTINGS = {"codes", "expires", "valid_days"}
_TOP_LEVEL = {"id", "variant", "variants", "timezone", "welcome", "coupon", "thanks", "opt_out", "privacy"}
# What a [variants.NAME] table may replace: the keys of _TEXTS it may hold.
_VARIANT_TEXTS = ("welcome.text", "coupon.text", "thanks.text", "thanks.image_url")


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


def parse_campaign(
    raw: Mapping[str, object], *, where: str = "campaign", data_dir: Path | None = None
) -> Campaign:
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

    tables: dict[str, Mapping[str, object]] = {}
    for section in ("welcome", "coupon", "thanks", "opt_out", "privacy"):
        table = raw.get(section)
        if table is None and section in _OPTIONAL_SECTIONS:
            continue
        if not isinstance(table, dict):
            raise fail(section, "missing section" if table is None else "must be a table")
        expected = {key.split(".")[1] for key in _TEXTS if key.startswith(section + ".")}
        if section == "coupon":
            expected |= _COUPON_SETTINGS
        for key in table:
            if key not in expected:
                raise fail(f"{section}.{key}", f"unknown key (expected {', '.join(sorted(expected))})")
        tables[section] = table

    for key in _TEXTS:
        section, name = key.split(".")
        value = tables.get(section, {}).get(name)
        if value is None:
            if key in _OPTIONAL or section in _OPTIONAL_SECTIONS:
                continue
            raise fail(key, "missing")
        values[key] = _checked_text(key, value, functools.partial(fail, key))

    coupon = _single_use(tables["coupon"], values, fail)
    timezone = raw.get("timezone", "UTC")
    try:
        if not isinstance(timezone, str):
            raise ValueError
        if timezone != "UTC":
            ZoneInfo(timezone)
    except (ValueError, ZoneInfoNotFoundError):
        raise fail(
            "timezone", f"{timezone!r} is not a time zone name such as 'Europe/Paris' or 'UTC'"
        ) from None

    image = values["thanks.image_url"]
    _check_image(image, data_dir, lambda reason: fail("thanks.image_url", reason))
    variants = _variants(raw.get("variants"), data_dir, fail)
    disclosure = values.get("privacy.disclosure")
    welcomes = _welcome_texts(values["welcome.text"], variants)
    if disclosure is not None:
        room = TEMPLATE_TEXT_LIMIT - FIRST_NAME_ROOM
        for key, text in welcomes:
            if len(disclosure) + 2 + len(text) > room:
                raise fail(
                    "privacy.disclosure",
                    f"above {key} it makes {len(disclosure) + 2 + len(text)} characters; Messenger allows "
                    f"{room} here (with room for a first name)",
                )
    for key, text in welcomes:
        longest = _longest_welcome(text, disclosure)
        if longest > TEMPLATE_TEXT_LIMIT:
            raise fail(
                key,
                f"with a first name of {FIRST_NAME_ROOM} characters in each {{first_name}} it makes "
                f"{longest} characters; Messenger allows {TEMPLATE_TEXT_LIMIT} in a button template's text",
            )
    if variants and "variant" in values:
        raise fail(
            "variant", "give either a `variant` label or [variants.NAME] tables (an A/B test), not both"
        )

    return Campaign(
        id=values["id"],
        variant=values.get("variant"),
        welcome_text=values["welcome.text"],
        yes=values["welcome.yes"],
        no=values["welcome.no"],
        coupon_text=values["coupon.text"],
        reveal=values["coupon.reveal"],
        code=values.get("coupon.code"),
        thanks_text=values["thanks.text"],
        thanks_image=image,
        timezone=timezone,
        variants=variants,
        opt_out_text=values.get("opt_out.stopped", DEFAULT_OPT_OUT_TEXT),
        opt_in_text=values.get("opt_out.resumed", DEFAULT_OPT_IN_TEXT),
        disclosure=disclosure,
        deletion_text=values.get("privacy.deleted", DEFAULT_DELETION_TEXT),
        **coupon,
    )


def _welcome_texts(welcome: str, variants: Sequence[Variant]) -> list[tuple[str, str]]:
    """Every welcome text of the file, with its key: the campaign's and its variants' own."""
    return [("welcome.text", welcome)] + [
        (f"variants.{v.name}.welcome.text", v.welcome_text) for v in variants if v.welcome_text
    ]


def _longest_welcome(text: str, disclosure: str | None) -> int:
    """How long a welcome of `text` can be once sent: each {first_name} as long as a name is let be (the
    length check counts the placeholder itself, not the name), under the disclosure line if there is one."""
    above = len(disclosure) + 2 if disclosure else 0
    return above + len(text.format(first_name="x" * FIRST_NAME_ROOM))


def _checked_text(key: str, value: object, fail: _FailAt) -> str:
    """A text of the file, checked against the platform's limit and the placeholders `key` allows."""
    limit, allowed = _TEXTS[key]
    if not isinstance(value, str):
        raise fail("must be a string")
    if not value.strip():
        raise fail("must not be empty")
    if len(value) > limit:
        raise fail(f"{len(value)} characters, Messenger allows {limit} here")
    _check_placeholders(value, allowed, fail)
    # Texts without placeholders are stored as customers will read them ("{{" becomes "{").
    return value if allowed else value.format()


def _is_local(image: str) -> bool:
    return not image.startswith(("https://", "http://"))


def _check_image(image: str, data_dir: Path | None, fail: _FailAt) -> None:
    """A thank-you image: an https URL, or a file inside the data directory (there, given `data_dir`)."""
    parts = urlsplit(image)
    if parts.scheme in ("http", "https"):
        if parts.scheme != "https" or not parts.netloc:
            raise fail("Messenger fetches images over https: use an https:// URL")
    elif parts.scheme:
        raise fail("must be an https:// URL or a file under the data directory")
    else:
        relative = Path(image)
        if relative.is_absolute() or ".." in relative.parts:
            raise fail("a local image must be a path inside the data directory")
        if data_dir is not None and not (data_dir / relative).is_file():
            raise fail(f"no file {data_dir / relative}")


def _variants(raw: object, data_dir: Path | None, fail: _Fail) -> tuple[Variant, ...]:
    """The [variants.NAME] tables, checked, in file order: none, or two and more."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise fail("variants", "must be tables, [variants.A], [variants.B], …")
    variants = []
    for name, table in raw.items():
        where = f"variants.{name}" if "." not in name else f'variants."{name}"'
        if not _VARIANT_NAME.match(name):
            raise fail(
                where,
                "a variant's name is 1 to 64 letters, digits, '-' or '_', starting with a letter or digit "
                "(no '.': names travel in entry links' refs, whose parts dots separate)",
            )
        if not isinstance(table, dict):
            raise fail(where, "must be a table, [variants.NAME]")
        variants.append(_variant(name, table, data_dir, _inside(where, fail)))
    if len(variants) < 2:
        found = ", ".join(v.name for v in variants) or "none"
        raise fail("variants", f"an A/B test needs at least two variants (found {found})")
    return tuple(variants)


def _inside(where: str, fail: _Fail) -> _Fail:
    """`fail` for the keys of the table at `where`."""
    return lambda key, reason: fail(f"{where}.{key}", reason)


def _variant(name: str, table: Mapping[str, object], data_dir: Path | None, fail: _Fail) -> Variant:
    sections = {key.split(".")[0] for key in _VARIANT_TEXTS}
    for key in table:
        if key != "weight" and key not in sections:
            raise fail(key, f"unknown key (expected {', '.join(sorted({'weight', *sections}))})")
    weight = table.get("weight", 1)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight <= 0
    ):
        raise fail(
            "weight", f"{weight!r} is not a positive number (the variant's share, relative to the others)"
        )
    texts: dict[str, str] = {}
    for section in sorted(sections):
        overrides = table.get(section)
        if overrides is None:
            continue
        expected = [key.split(".")[1] for key in _VARIANT_TEXTS if key.startswith(section + ".")]
        if not isinstance(overrides, dict):
            raise fail(section, f"must be a table ({', '.join(f'{section}.{k}' for k in expected)})")
        for key, value in overrides.items():
            if key not in expected:
                raise fail(f"{section}.{key}", f"unknown key (a variant replaces only {', '.join(expected)})")
            full = f"{section}.{key}"
            texts[full] = _checked_text(full, value, functools.partial(fail, full))
    if "thanks.image_url" in texts:
        _check_image(texts["thanks.image_url"], data_dir, lambda reason: fail("thanks.image_url", reason))
    return Variant(
        name=name,
        weight=weight,
        welcome_text=texts.get("welcome.text"),
        coupon_text=texts.get("coupon.text"),
        thanks_text=texts.get("thanks.text"),
        thanks_image=texts.get("thanks.image_url"),
    )


class _SingleUse(TypedDict, total=False):
    """The single-use settings of a campaign (see Campaign), as the [coupon] table gives them."""

    codes: str
    all_gone: str
    code_text: str
    redeemed_text: str
    expires: date
    valid_days: int


def _single_use(table: Mapping[str, object], values: dict[str, str], fail: _Fail) -> _SingleUse:
    """The single-use settings of the [coupon] table, checked: `code` or `codes`, and what goes with each."""
    codes = table.get("codes")
    if codes is None:
        if "coupon.code" not in values:
            raise fail("coupon.code", "missing (or give coupon.codes, a file of single-use codes)")
        for key in ("all_gone", "code_text", "redeemed_text", "expires", "valid_days"):
            if key in table:
                raise fail(f"coupon.{key}", "only with coupon.codes (single-use codes)")
        return {}
    if "coupon.code" in values:
        raise fail(
            "coupon.codes", "give either coupon.code (one code for everyone) or coupon.codes, not both"
        )
    if not isinstance(codes, str) or not codes.strip():
        raise fail("coupon.codes", "must be the name of a file under the data directory")
    relative = Path(codes)
    if relative.is_absolute() or ".." in relative.parts:
        raise fail("coupon.codes", "must be a file inside the data directory")
    if "coupon.all_gone" not in values:
        raise fail("coupon.all_gone", "missing: what customers read once every code is handed out")
    settings: _SingleUse = {"codes": codes, "all_gone": values["coupon.all_gone"]}
    if "coupon.code_text" in values:
        settings["code_text"] = values["coupon.code_text"]
    if "coupon.redeemed_text" in values:
        settings["redeemed_text"] = values["coupon.redeemed_text"]
    expires, valid_days = table.get("expires"), table.get("valid_days")
    if expires is not None and valid_days is not None:
        raise fail("coupon.valid_days", "give either coupon.expires or coupon.valid_days, not both")
    if expires is not None:
        if isinstance(expires, str):
            try:
                expires = date.fromisoformat(expires)
            except ValueError:
                raise fail("coupon.expires", f"{expires!r} is not a date (YYYY-MM-DD)") from None
        if not isinstance(expires, date) or isinstance(expires, datetime):
            raise fail("coupon.expires", "must be a date, YYYY-MM-DD")
        settings["expires"] = expires
    if valid_days is not None:
        if (
            isinstance(valid_days, bool)
            or not isinstance(valid_days, int)
            or not 1 <= valid_days <= MAX_VALID_DAYS
        ):
            raise fail("coupon.valid_days", f"must be a whole number of days from 1 to {MAX_VALID_DAYS}")
        settings["valid_days"] = valid_days
    return settings


def _check_placeholders(text: str, allowed: set[str], fail: _FailAt) -> None:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as exc:
        raise fail(f"bad braces ({exc}); write {{{{ and }}}} for literal braces") from None
    for name in fields:
        if name not in allowed:
            hint = f"only {{{', '.join(sorted(allowed))}}} is known" if allowed else "no placeholders here"
            raise fail(f"unknown placeholder {{{name}}}: {hint}")
