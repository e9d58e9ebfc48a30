"""Entry links: the m.me link of each place a campaign is shown (till, flyer, story), and its QR code.

A link `https://m.me/<page>?ref=<campaign>.<placement>[.<variant>]` opens the page's conversation and tells
the bot where the customer came from; the dots separate the ref's parts, so no part may hold one.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import segno

from bot.config import ConfigError, Mode, Settings
from bot.graph import GraphClient
from bot.graph_errors import SendError
from bot.startup import command_settings, graph_client

_NAME = re.compile(r"[A-Za-z0-9_-]+")
# A page's username is letters, digits and dots.
_PAGE = re.compile(r"[A-Za-z0-9.]+")
REF_LIMIT = 250  # the platform's longest m.me ref
# Medium error correction survives a smudged or creased print; segno raises it further when the version
# has room. Regular QR only: segno would pick a Micro QR for short data, which phone cameras do not read.
QR_ERROR = "m"
PNG_SCALE = 10  # pixels per module: about 3.5 cm wide at 300 dpi for a short link, enough for a flyer
QUIET_ZONE = 4  # modules of white around the code, as the QR standard asks
CSV_COLUMNS = ("placement", "variant", "link", "png", "svg")
LINKS_FOLDER = "links"  # under the data directory: the dashboard lists `links/*/links.csv`
LINKS_FILE = "links.csv"


class LinksError(ValueError):
    """An argument or a page that cannot make entry links; the message names the culprit."""


@dataclass(frozen=True)
class EntryLink:
    """The link of one placement (and variant) of a campaign."""

    campaign: str
    placement: str
    variant: str | None
    url: str

    @property
    def stem(self) -> str:
        """The name of its QR files, without suffix: `<campaign>.<placement>[.<variant>]`."""
        return ".".join(part for part in (self.campaign, self.placement, self.variant) if part)


def check_name(argument: str, value: str) -> str:
    """`value` if it can be a part of a ref. Raises LinksError naming `argument` otherwise."""
    if not _NAME.fullmatch(value):
        raise LinksError(
            f"{argument} {value!r} may hold only letters, digits, '-' and '_' "
            "(a '.' separates the parts of the ref)"
        )
    return value


def check_page(value: str) -> str:
    """`value` if it can be a page's username. Raises LinksError naming --page otherwise."""
    if not _PAGE.fullmatch(value):
        raise LinksError(
            f"--page {value!r} is not a page username (letters, digits and '.', as in m.me/<username>)"
        )
    return value


def entry_links(page: str, campaign: str, placements: Sequence[str], variant: str | None) -> list[EntryLink]:
    """The link of each placement, in the order given.

    Raises: LinksError for a name that cannot be part of a ref, a placement given twice, no placement,
    or a ref longer than the platform takes.
    """
    check_page(page)
    check_name("--campaign", campaign)
    if variant is not None:
        check_name("--variant", variant)
    if not placements:
        raise LinksError("--placements names no placement (e.g. --placements till,flyer,instagram)")
    links: list[EntryLink] = []
    for placement in placements:
        check_name("--placements", placement)
        if placement in (link.placement for link in links):
            raise LinksError(f"--placements names {placement!r} twice")
        ref = ".".join(part for part in (campaign, placement, variant) if part)
        if len(ref) > REF_LIMIT:
            raise LinksError(f"the ref {ref!r} is longer than the {REF_LIMIT} characters m.me takes")
        links.append(EntryLink(campaign, placement, variant, f"https://m.me/{page}?ref={ref}"))
    return links


def default_out(campaign: str, variant: str | None, environ: Mapping[str, str]) -> Path:
    """Where the links go without --out: `<PROMOBOT_DATA>/links/<campaign>[.<variant>]`, which the dashboard
    lists. Raises LinksError when the data is in a bucket (give --out then)."""
    data = environ.get("PROMOBOT_DATA", "").strip() or "data"
    if data.startswith("s3://"):
        raise LinksError("PROMOBOT_DATA is a bucket: give --out, a folder on this machine")
    return Path(data, LINKS_FOLDER, ".".join(part for part in (campaign, variant) if part))


def write_links(links: Sequence[EntryLink], out: Path) -> Path:
    """Write each link's QR code as `<stem>.png` and `<stem>.svg` in `out`, and `out/links.csv` listing them.

    Returns: the path of links.csv.
    """
    out.mkdir(parents=True, exist_ok=True)
    table = out / LINKS_FILE
    with table.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for link in links:
            code = segno.make_qr(link.url, error=QR_ERROR)
            png, svg = f"{link.stem}.png", f"{link.stem}.svg"
            code.save(str(out / png), scale=PNG_SCALE, border=QUIET_ZONE)
            code.save(str(out / svg), scale=PNG_SCALE, border=QUIET_ZONE, title=link.url)
            writer.writerow((link.placement, link.variant or "", link.url, png, svg))
    return table


async def page_username(graph: GraphClient) -> str:
    """The username of the page whose token `graph` holds (`GET /me?fields=username`).

    Raises: LinksError when the Graph API cannot be reached, refuses the token, or the page has no username.
    """
    try:
        answer = await graph.get("me", {"fields": "username"})
    except SendError as exc:
        raise LinksError(
            f"could not ask the Graph API for the page's username ({exc.reason}); give it with --page"
        ) from exc
    username = answer.get("username") if isinstance(answer, dict) else None
    if not isinstance(username, str) or not username.strip():
        name = answer.get("name") if isinstance(answer, dict) else None
        page = f"the page {name!r}" if isinstance(name, str) else "the page"
        raise LinksError(
            f"{page} has no username, and m.me links need one: create it in the page's settings, "
            "or give it with --page"
        )
    return check_page(username.strip())


def _settings(environ: Mapping[str, str]) -> Settings:
    """The Graph API settings for a lookup: only the page token is required (not the webhook's secrets)."""
    settings = command_settings(environ)
    token = environ.get("PROMOBOT_PAGE_TOKEN", "").strip()
    if not token:
        raise ConfigError(
            "PROMOBOT_PAGE_TOKEN not set: it is needed to ask the Graph API for the page's username; "
            "or give the username with --page"
        )
    secret = environ.get("PROMOBOT_APP_SECRET", "").strip()
    return replace(settings, mode=Mode.SERVER, page_token=token, app_secret=secret)


async def _lookup(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> str:
    graph = graph_client(settings, transport)
    try:
        return await page_username(graph)
    finally:
        await graph.aclose()


def links_command(
    campaign: str,
    placements: str,
    out: Path | None,
    *,
    variant: str | None = None,
    page: str | None = None,
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> int:
    """`python -m bot links`: write the entry links and QR codes; print what was written.

    Parameters:
        placements: comma-separated placement names, e.g. "till,flyer,instagram".
        out: the folder to write; None: `default_out`, where the dashboard finds them.
        page: the page's username; None asks the Graph API with PROMOBOT_PAGE_TOKEN.
        environ, transport: the environment and the Graph API transport (tests pass stand-ins).
    Returns: the exit status, 1 with a message on stderr when no links could be made.
    """
    names = [name.strip() for name in placements.split(",") if name.strip()]
    environ = os.environ if environ is None else environ
    try:
        # Check the names before asking the platform: a typo should not wait on the network.
        entry_links(page or "page", campaign, names, variant)
        if out is None:
            out = default_out(campaign, variant, environ)
        if page is None:
            page = asyncio.run(_lookup(_settings(environ), transport))
        links = entry_links(page, campaign, names, variant)
        table = write_links(links, out)
    except (LinksError, ConfigError, OSError) as exc:
        print(f"promobot links: {exc}", file=sys.stderr)
        return 1
    for link in links:
        print(f"{link.placement}: {link.url}")
    print(f"promobot links: wrote {len(links)} QR codes (PNG and SVG) and {table}")
    return 0
