"""The campaigns' entry links that `python -m bot links` wrote under the data directory, for the dashboard."""

from __future__ import annotations

import base64
import csv
import html
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bot.links import CSV_COLUMNS, LINKS_FILE, LINKS_FOLDER

_MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}


@dataclass(frozen=True, slots=True)
class StoredLink:
    """One placement's link, and its QR files' names in `folder`."""

    campaign: str
    placement: str
    variant: str | None
    url: str
    folder: Path
    png: str
    svg: str

    def qr_file(self, kind: str) -> bytes | None:
        """The bytes of the QR file of `kind` ("png" or "svg"), or None when it is missing."""
        name = self.png if kind == "png" else self.svg
        if not name or Path(name).name != name:  # a name, not a path out of the folder
            return None
        try:
            return (self.folder / name).read_bytes()
        except OSError:
            return None


def stored_links(source: str) -> list[StoredLink]:
    """Every link listed in `<source>/links/*/links.csv`, by campaign, placement and variant; none for a
    bucket or a store without links. A file that does not read as the command writes it is skipped."""
    if source.startswith("s3://"):
        return []
    links = []
    for table in sorted(Path(source, LINKS_FOLDER).glob(f"*/{LINKS_FILE}")):
        try:
            with table.open(newline="", encoding="utf-8") as file:
                rows = list(csv.DictReader(file))
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
        for row in rows:
            if any(not isinstance(row.get(column), str) for column in CSV_COLUMNS):
                continue
            ref = parse_qs(urlsplit(row["link"]).query).get("ref", [""])[0]
            links.append(
                StoredLink(
                    campaign=ref.split(".")[0],
                    placement=row["placement"],
                    variant=row["variant"] or None,
                    url=row["link"],
                    folder=table.parent,
                    png=row["png"],
                    svg=row["svg"],
                )
            )
    return sorted(links, key=lambda link: (link.campaign, link.placement, link.variant or ""))


def links_html(links: list[StoredLink], campaign: str | None = None) -> str:
    """The links of `campaign` (all when None) as a table with their QR codes to download; a hint to make
    some when there are none."""
    chosen = [link for link in links if campaign in (None, link.campaign)]
    if not chosen:
        return (
            '<div class="pb-links" data-links="none"><h3>Entry links</h3><p class="pb-note">No entry links '
            "yet. Make an m.me link and QR code for each place you show the promotion with "
            "<code>python -m bot links --campaign ID --placements till,flyer,instagram --page USERNAME</code>"
            " (your page's m.me name; without it the bot asks the Graph API, with its page token) in the "
            "data directory this dashboard shows; they are listed here, and the funnel by source shows which "
            "place brings customers.</p></div>"
        )
    rows = []
    for link in chosen:
        downloads = []
        for kind in ("png", "svg"):
            content = link.qr_file(kind)
            if content is None:
                continue
            name = html.escape(link.png if kind == "png" else link.svg)
            data = base64.b64encode(content).decode()
            downloads.append(
                f'<a download="{name}" href="data:{_MEDIA_TYPES[kind]};base64,{data}">{kind.upper()}</a>'
            )
        url = html.escape(link.url)
        rows.append(
            f'<tr data-link-placement="{html.escape(link.placement)}"><td>{html.escape(link.campaign)}</td>'
            f"<td>{html.escape(link.placement)}</td><td>{html.escape(link.variant or '')}</td>"
            f'<td><a href="{url}" target="_blank" rel="noopener">{url}</a></td>'
            f"<td>{' '.join(downloads)}</td></tr>"
        )
    head = "<tr><th>campaign</th><th>placement</th><th>variant</th><th>link</th><th>QR code</th></tr>"
    return (
        f'<div class="pb-links pb-table" data-links="{len(chosen)}"><h3>Entry links</h3>'
        f"<table>{head}{''.join(rows)}</table></div>"
    )
