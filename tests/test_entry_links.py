"""The dashboard's list of entry links: what `python -m bot links` wrote, with the QR files to download."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from analytics.entry_links import links_html, stored_links
from bot.__main__ import main
from bot.links import links_command


def make_links(data: Path, campaign: str, placements: str, variant: str | None = None) -> None:
    environ = {"PROMOBOT_DATA": str(data)}
    assert (
        links_command(campaign, placements, None, variant=variant, page="cornerbakery", environ=environ) == 0
    )


def downloads(page: str) -> dict[str, bytes]:
    return {
        name: base64.b64decode(data)
        for name, data in re.findall(r'download="([^"]+)" href="data:[^;]+;base64,([^"]+)"', page)
    }


def test_the_links_of_every_campaign_are_listed_with_their_qr_files(tmp_path):
    make_links(tmp_path, "spring", "till,flyer")
    make_links(tmp_path, "spring", "till", variant="b")
    make_links(tmp_path, "summer", "instagram")

    links = stored_links(str(tmp_path))

    assert [(link.campaign, link.placement, link.variant) for link in links] == [
        ("spring", "flyer", None),
        ("spring", "till", None),
        ("spring", "till", "b"),
        ("summer", "instagram", None),
    ]
    page = links_html(links)
    files = downloads(page)
    assert files["spring.till.b.png"] == (tmp_path / "links/spring.b/spring.till.b.png").read_bytes()
    assert files["summer.instagram.svg"] == (tmp_path / "links/summer/summer.instagram.svg").read_bytes()
    assert len(files) == 8
    assert "https://m.me/cornerbakery?ref=spring.till.b" in page


def test_a_campaign_chosen_shows_its_links_only(tmp_path):
    make_links(tmp_path, "spring", "till")
    make_links(tmp_path, "summer", "instagram")

    page = links_html(stored_links(str(tmp_path)), campaign="summer")

    assert 'data-links="1"' in page
    assert "ref=summer.instagram" in page
    assert "ref=spring" not in page


def test_no_links_tells_how_to_make_them_and_that_command_works_without_a_page_token(tmp_path, monkeypatch):
    assert stored_links(str(tmp_path)) == []
    assert stored_links("s3://shop/promobot") == []
    [command] = re.findall(r"<code>python -m bot (links [^<]*)</code>", links_html([]))
    argv = command.replace("ID", "spring").replace("USERNAME", "cornerbakery").split()
    monkeypatch.setenv("PROMOBOT_DATA", str(tmp_path))
    monkeypatch.delenv("PROMOBOT_PAGE_TOKEN", raising=False)  # as in local mode

    assert main(argv) == 0
    assert sorted(link.placement for link in stored_links(str(tmp_path))) == ["flyer", "instagram", "till"]


def test_a_file_name_that_leaves_its_folder_is_not_offered(tmp_path):
    make_links(tmp_path, "spring", "till")
    table = tmp_path / "links/spring/links.csv"
    table.write_text(table.read_text().replace("spring.till.png", "../../secret.png"))
    (tmp_path / "secret.png").write_bytes(b"not a QR code")
    (tmp_path / "links/broken").mkdir()
    (tmp_path / "links/broken/links.csv").write_bytes(b"\xff\xfe not text")

    [link] = stored_links(str(tmp_path))

    assert link.qr_file("png") is None
    assert list(downloads(links_html([link]))) == ["spring.till.svg"]


def test_text_in_a_link_file_is_escaped(tmp_path):
    make_links(tmp_path, "spring", "till")
    table = tmp_path / "links/spring/links.csv"
    table.write_text(table.read_text().replace("https://m.me/cornerbakery", "https://m.me/<script>"))

    page = links_html(stored_links(str(tmp_path)))

    assert "<script>" not in page
    assert "&lt;script&gt;" in page
