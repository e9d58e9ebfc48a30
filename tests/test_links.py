"""Entry links: the m.me link of each placement, its QR code as PNG and SVG, and the page's username."""

from __future__ import annotations

import csv
import re
import struct
import zlib
from pathlib import Path

import httpx
import pytest
import segno

from bot.__main__ import main
from bot.links import PNG_SCALE, QR_ERROR, QUIET_ZONE, links_command

# A Graph API that gives up fast: one attempt of 0.1 s, retries for 0.4 s in all.
ENVIRON = {
    "PROMOBOT_PAGE_TOKEN": "TOKEN",
    "PROMOBOT_GRAPH_URL": "https://graph.test",
    "PROMOBOT_GRAPH_TIMEOUT": "0.1",
}


def modules_of(link: str) -> set[tuple[int, int]]:
    """The dark modules (row, column) of the QR code of `link`, as segno makes it."""
    matrix = segno.make_qr(link, error=QR_ERROR).matrix
    return {(row, col) for row, line in enumerate(matrix) for col, dark in enumerate(line) if dark}


def png_modules(path: Path) -> set[tuple[int, int]]:
    """The dark modules of a 1-bit greyscale PNG, read at each module's centre."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at : at + 4]), data[at + 4 : at + 8]
        chunks[kind] = chunks.get(kind, b"") + data[at + 8 : at + 8 + length]
        at += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (1, 0)  # 1-bit greyscale, as segno writes a black and white code
    raw, stride = zlib.decompress(chunks[b"IDAT"]), 1 + (width + 7) // 8
    rows = unfiltered(raw, stride, height)
    size = width // PNG_SCALE - 2 * QUIET_ZONE
    dark = set()
    for row in range(size):
        for col in range(size):
            y, x = (
                (QUIET_ZONE + row) * PNG_SCALE + PNG_SCALE // 2,
                (QUIET_ZONE + col) * PNG_SCALE + PNG_SCALE // 2,
            )
            if not rows[y][x // 8] >> (7 - x % 8) & 1:  # 0 is black
                dark.add((row, col))
    return dark


def unfiltered(raw: bytes, stride: int, height: int) -> list[bytes]:
    """A PNG's scanlines without their filters (PNG spec 9.2; one byte per pixel step at bit depth 1)."""
    rows, above = [], bytes(stride - 1)
    for y in range(height):
        kind, line = raw[y * stride], bytearray(raw[y * stride + 1 : (y + 1) * stride])
        for i in range(len(line)):
            left, up, corner = line[i - 1] if i else 0, above[i], above[i - 1] if i else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                near = min(
                    (abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - corner), 2, corner)
                )
                line[i] = (line[i] + near[2]) & 0xFF
        rows.append(bytes(line))
        above = rows[-1]
    return rows


def svg_modules(path: Path) -> set[tuple[int, int]]:
    """The dark modules of segno's SVG: one path of horizontal strokes through the modules' middles."""
    (moves,) = re.findall(r'<path[^>]* d="([^"]+)"', path.read_text())
    dark, x, y = set(), 0.0, 0.0
    for command, numbers in re.findall(r"([MmHh])([-\d. ]+)", moves):
        values = [float(number) for number in numbers.split()]
        if command == "M":
            x, y = values
        elif command == "m":
            x, y = x + values[0], y + values[1]
        else:
            run = values[0] if command == "h" else values[0] - x
            dark |= {(int(y) - QUIET_ZONE, int(x) + i - QUIET_ZONE) for i in range(int(run))}
            x += run
    return dark


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def graph_answering(answer, requests: list[httpx.Request] | None = None) -> httpx.MockTransport:
    """A Graph API whose every answer is `answer` (a response, or an exception to raise)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if requests is not None:
            requests.append(request)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle)


def test_each_placement_gets_its_link_and_qr_codes_that_read_back_to_it(tmp_path, capsys):
    status = links_command("spring", "till,flyer,instagram", tmp_path, page="cornerbakery", environ={})

    assert status == 0
    rows = read_csv(tmp_path / "links.csv")
    assert [(row["placement"], row["variant"], row["link"]) for row in rows] == [
        ("till", "", "https://m.me/cornerbakery?ref=spring.till"),
        ("flyer", "", "https://m.me/cornerbakery?ref=spring.flyer"),
        ("instagram", "", "https://m.me/cornerbakery?ref=spring.instagram"),
    ]
    for row in rows:
        expected = modules_of(row["link"])
        assert png_modules(tmp_path / row["png"]) == expected
        assert svg_modules(tmp_path / row["svg"]) == expected
    assert "https://m.me/cornerbakery?ref=spring.flyer" in capsys.readouterr().out


def test_a_variant_is_the_refs_last_part_and_in_the_file_names(tmp_path):
    assert links_command("spring", "till", tmp_path, variant="b", page="cornerbakery", environ={}) == 0

    (row,) = read_csv(tmp_path / "links.csv")
    assert row == {
        "placement": "till",
        "variant": "b",
        "link": "https://m.me/cornerbakery?ref=spring.till.b",
        "png": "spring.till.b.png",
        "svg": "spring.till.b.svg",
    }
    assert png_modules(tmp_path / row["png"]) == modules_of(row["link"])


def test_the_command_line_writes_the_links(tmp_path):
    out = tmp_path / "links"
    argv = ["links", "--campaign", "spring", "--placements", "till, flyer", "--page", "cornerbakery"]

    assert main([*argv, "--out", str(out)]) == 0

    assert [row["link"] for row in read_csv(out / "links.csv")] == [
        "https://m.me/cornerbakery?ref=spring.till",
        "https://m.me/cornerbakery?ref=spring.flyer",
    ]


def test_without_out_the_links_go_where_the_dashboard_lists_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMOBOT_DATA", str(tmp_path / "data"))
    argv = ["links", "--campaign", "spring", "--placements", "till", "--page", "cornerbakery"]

    assert main(argv) == 0
    assert main([*argv, "--variant", "b"]) == 0

    assert read_csv(tmp_path / "data/links/spring/links.csv")[0]["link"].endswith("ref=spring.till")
    assert read_csv(tmp_path / "data/links/spring.b/links.csv")[0]["link"].endswith("ref=spring.till.b")


def test_without_out_a_bucket_for_data_asks_for_a_folder(tmp_path, capsys):
    environ = {"PROMOBOT_DATA": "s3://shop/promobot"}
    assert links_command("spring", "till", None, page="cornerbakery", environ=environ) == 1
    assert "give --out" in capsys.readouterr().err


def test_the_username_comes_from_the_graph_api_with_the_page_token(tmp_path):
    requests: list[httpx.Request] = []
    graph = graph_answering(httpx.Response(200, json={"username": "cornerbakery", "id": "1"}), requests)

    assert links_command("spring", "till", tmp_path, environ=ENVIRON, transport=graph) == 0

    (request,) = requests
    assert request.method == "GET"
    assert request.url.path == "/v25.0/me"
    assert request.url.params["fields"] == "username"
    assert request.url.params["access_token"] == "TOKEN"
    assert read_csv(tmp_path / "links.csv")[0]["link"] == "https://m.me/cornerbakery?ref=spring.till"


def test_a_page_without_a_username_is_told_to_make_one_or_give_page(tmp_path, capsys):
    graph = graph_answering(httpx.Response(200, json={"name": "Corner Bakery", "id": "1"}))

    assert links_command("spring", "till", tmp_path, environ=ENVIRON, transport=graph) == 1

    error = capsys.readouterr().err
    assert "'Corner Bakery' has no username" in error
    assert "--page" in error
    assert not (tmp_path / "links.csv").exists()


@pytest.mark.parametrize(
    "answer",
    [
        httpx.ConnectError("connection refused"),
        httpx.Response(503, json={"error": {"message": "Service unavailable", "code": 2}}),
        httpx.Response(400, json={"error": {"message": "Invalid OAuth access token", "code": 190}}),
    ],
    ids=["unreachable", "down", "token-refused"],
)
def test_a_graph_api_that_cannot_answer_is_a_clear_error(tmp_path, capsys, answer):
    graph = graph_answering(answer)

    assert links_command("spring", "till", tmp_path, environ=ENVIRON, transport=graph) == 1

    error = capsys.readouterr().err
    assert "could not ask the Graph API for the page's username" in error
    assert "--page" in error
    assert not (tmp_path / "links.csv").exists()


def test_without_page_or_token_it_asks_for_one_of_them(tmp_path, capsys):
    requests: list[httpx.Request] = []
    graph = graph_answering(httpx.Response(200, json={"username": "cornerbakery"}), requests)

    assert links_command("spring", "till", tmp_path, environ={}, transport=graph) == 1

    error = capsys.readouterr().err
    assert "PROMOBOT_PAGE_TOKEN not set" in error
    assert "--page" in error
    assert requests == []


@pytest.mark.parametrize(
    ("arguments", "culprit"),
    [
        ({"campaign": "spring.2026"}, "--campaign 'spring.2026'"),
        ({"placements": "till,fly.er"}, "--placements 'fly.er'"),
        ({"variant": "b.1"}, "--variant 'b.1'"),
        ({"variant": "b 1"}, "--variant 'b 1'"),
        ({"campaign": "früh"}, "--campaign 'früh'"),
        ({"placements": "till,flyer,till"}, "--placements names 'till' twice"),
        ({"placements": " , "}, "--placements names no placement"),
        ({"page": "m.me/cornerbakery"}, "--page 'm.me/cornerbakery'"),
        ({"campaign": "x" * 250}, "longer than the 250 characters"),
    ],
)
def test_names_that_cannot_be_part_of_a_ref_are_refused(tmp_path, capsys, arguments, culprit):
    requests: list[httpx.Request] = []
    graph = graph_answering(httpx.Response(200, json={"username": "cornerbakery"}), requests)
    given = {"campaign": "spring", "placements": "till", "variant": None, "page": None, **arguments}

    status = links_command(
        given["campaign"],
        given["placements"],
        tmp_path,
        variant=given["variant"],
        page=given["page"],
        environ=ENVIRON,
        transport=graph,
    )

    assert status == 1
    assert culprit in capsys.readouterr().err
    assert requests == []  # a typo is caught before the platform is asked
    assert list(tmp_path.iterdir()) == []
