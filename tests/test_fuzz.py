"""Hostile input against the bot on a real port: generated and adversarial webhook bodies (validly signed, so
they reach the parser), raw HTTP that bends the protocol, the simulator's routes, the dashboard's token.

Whatever arrives, the server answers below 500, keeps running, keeps its memory bounded, and the conversation
still works afterwards. One server per module: the examples share it, as the platform's traffic would.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import Mode
from bot.messenger import sign
from tests.support import payloads
from tests.support.bot_process import BotProcess
from tests.support.dashboard import running_dashboard
from tests.support.fake_graph import FakeGraph
from tests.support.home import APP_SECRET, PAGE_TOKEN, make_home
from tests.support.paths import MESSENGER_FIXTURES

pytestmark = pytest.mark.e2e

# Bounded and derandomized: the same examples on every run, within the module's time budget.
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None)
MAX_BODY_BYTES = 4 * 1024 * 1024  # the webhook's limit (bot.webhook.MAX_BODY_BYTES)
SERVER_ERROR_MARKS = ("Exception in ASGI application", "Traceback")


@pytest.fixture(scope="module")
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(PAGE_TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def bot(tmp_path_factory, graph) -> Iterator[BotProcess]:
    with BotProcess(make_home(tmp_path_factory.mktemp("fuzz")), graph.url) as running:
        yield running
        assert_unharmed(running)


def assert_unharmed(bot: BotProcess) -> None:
    """The server still runs, answers its health check, and never logged an unhandled exception."""
    assert bot.process is not None
    assert bot.process.poll() is None, bot.log()
    assert bot.client.get("/healthz").status_code == 200
    log = bot.log()
    assert not any(mark in log for mark in SERVER_ERROR_MARKS), log[-4000:]


def post_signed(bot: BotProcess, body: bytes, **headers: str) -> int:
    """POST `body` to the webhook, signed with the app secret; the status, which must not be a 5xx."""
    status = bot.post(body, **headers).status_code
    assert status < 500, f"{status} for {body[:200]!r}\n{bot.log()[-3000:]}"
    return status


# -- memory: the server's resident set, now and at its peak -------------------------------------------------


def rss_mb(bot: BotProcess) -> float:
    assert bot.process is not None
    return psutil.Process(bot.process.pid).memory_info().rss / 2**20


def reset_peak(bot: BotProcess) -> None:
    """Start a new peak-RSS measurement (Linux: writing 5 to clear_refs resets VmHWM)."""
    Path(f"/proc/{bot.process.pid}/clear_refs").write_text("5")


def peak_mb(bot: BotProcess) -> float:
    status = Path(f"/proc/{bot.process.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


# -- generated bodies -------------------------------------------------------------------------------------

# Any JSON value, with what JSON allows that Python's `json` reads differently: integers past 64 bits,
# NaN and Infinity, and (in strings) lone surrogates, which `json.dumps` writes as \\udXXX escapes.
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(
        st.characters(codec=None, exclude_categories=()) | st.characters(categories=["Cs"]), max_size=30
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


def maybe(good: st.SearchStrategy) -> st.SearchStrategy:
    """A key's well-formed value, or (one time in three) any JSON value in its place: mostly a wrong type."""
    return st.one_of(good, good, json_values)


ids = st.from_regex(r"[0-9]{1,17}", fullmatch=True)
millis = st.integers(min_value=1_400_000_000_000, max_value=2_000_000_000_000)
payload_strings = st.sampled_from(["GET_STARTED", "spring-sale|a|yes", "spring-sale|a|reveal", "x|y|no", ""])
party = st.fixed_dictionaries({"id": maybe(ids)})
message = st.fixed_dictionaries(
    {},
    optional={
        "mid": maybe(st.text(max_size=20)),
        "text": maybe(st.text(max_size=20)),
        "is_echo": maybe(st.booleans()),
        "quick_reply": maybe(st.fixed_dictionaries({"payload": maybe(payload_strings)})),
    },
)
referral = st.fixed_dictionaries(
    {}, optional={"ref": maybe(st.text(max_size=10)), "source": maybe(st.just("SHORTLINK"))}
)
postback = st.fixed_dictionaries(
    {"payload": maybe(payload_strings)},
    optional={"title": maybe(st.text(max_size=10)), "mid": maybe(st.text()), "referral": maybe(referral)},
)
delivery = st.fixed_dictionaries({"mids": maybe(st.lists(st.text(max_size=10))), "watermark": maybe(millis)})
read = st.fixed_dictionaries({"watermark": maybe(millis)})
messaging = st.fixed_dictionaries(
    {"sender": maybe(party), "recipient": maybe(party), "timestamp": maybe(millis)},
    optional={
        "message": maybe(message),
        "postback": maybe(postback),
        "referral": maybe(referral),
        "delivery": maybe(delivery),
        "read": maybe(read),
    },
)
entry = st.fixed_dictionaries(
    {"id": maybe(ids), "time": maybe(millis), "messaging": st.lists(maybe(messaging), min_size=1, max_size=4)}
)
# The outer levels stay well-formed, so that most examples reach the events; `maybe` wrongs the rest.
notifications = st.fixed_dictionaries(
    {"object": maybe(st.just("page")), "entry": st.lists(maybe(entry), min_size=1, max_size=3)}
)


def encode(document: object) -> bytes:
    # ensure_ascii: a lone surrogate goes as an escape, which is what a JSON writer would send.
    return json.dumps(document).encode()


@FUZZ
@given(notification=notifications)
def test_a_notification_with_any_key_of_any_type_is_acknowledged(bot, notification):
    # Refused, the platform would deliver it again and again: what does not parse is skipped, not refused.
    assert post_signed(bot, encode(notification)) == 200


@FUZZ
@given(document=json_values)
def test_any_json_document_is_acknowledged_or_refused_as_malformed(bot, document):
    assert post_signed(bot, encode(document)) in (200, 400)


@FUZZ
@given(body=st.binary(max_size=300))
def test_any_bytes_are_acknowledged_or_refused_as_malformed(bot, body):
    assert post_signed(bot, body) in (200, 400)


# -- every key of real notifications, with the wrong type -------------------------------------------------

WRONG_VALUES = [None, True, 0, -1, 1.5, 1e308, 10**30, "", "x", "NaN", [], [1, "a"], {}, {"id": []}]


def key_paths(document: object, path: tuple = ()) -> Iterator[tuple]:
    if isinstance(document, dict):
        for key, value in document.items():
            yield (*path, key)
            yield from key_paths(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield (*path, index)
            yield from key_paths(value, (*path, index))


def replaced(document: object, path: tuple, value: object) -> object:
    copy = json.loads(json.dumps(document))
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return copy


def test_every_key_of_a_real_notification_with_a_wrong_type_is_acknowledged(bot):
    refused = []
    for fixture in sorted(MESSENGER_FIXTURES.glob("*.json")):
        document = json.loads(fixture.read_bytes())
        for path in key_paths(document):
            if path == ("entry",):
                continue  # no `entry` list: not a notification, refused (below)
            for value in WRONG_VALUES:
                body = encode(replaced(document, path, value))
                if post_signed(bot, body) != 200:
                    refused.append((fixture.name, path, value))
    assert refused == []


# -- adversarial bodies -----------------------------------------------------------------------------------


def in_messaging(raw: bytes) -> bytes:
    """A text message whose `message` object has `raw` (JSON text) as an extra key's value."""
    item = json.dumps(payloads.text("7001")).encode()
    return b'{"object":"page","entry":[{"id":"1","messaging":[' + item[:-1] + b',"x":' + raw + b"}]}]}"


def with_timestamp(raw: bytes) -> bytes:
    fields = payloads.text("7002")
    del fields["timestamp"]
    item = json.dumps(fields).encode()
    return (
        b'{"object":"page","entry":[{"id":"1","messaging":[' + item[:-1] + b',"timestamp":' + raw + b"}]}]}"
    )


ADVERSARIAL_BODIES = {
    # nesting: orjson stops at 1,024 levels, and what it refuses is read again by the standard library
    "arrays nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, 400),
    "objects nested 50,000 deep": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400),
    "entry nested 1,100 deep": (b'{"entry":' + b"[" * 1_100 + b"]" * 1_100 + b"}", 400),
    "nested 600 deep inside an event, with a NaN": (in_messaging(b"[" * 600 + b"NaN" + b"]" * 600), 400),
    "nested 1,100 deep inside an event": (in_messaging(b"[" * 1_100 + b"]" * 1_100), 400),
    "unclosed nesting": (b"[" * 100_000, 400),
    # numbers
    "timestamp NaN": (with_timestamp(b"NaN"), 200),
    "timestamp Infinity": (with_timestamp(b"Infinity"), 200),
    "timestamp -Infinity": (with_timestamp(b"-Infinity"), 200),
    "timestamp 1e400": (with_timestamp(b"1e400"), 200),
    "timestamp -1e400": (with_timestamp(b"-1e400"), 200),
    "timestamp with 4,000 digits": (with_timestamp(b"9" * 4_000), 200),
    "timestamp with 5,000 digits": (with_timestamp(b"9" * 5_000), 400),  # Python's int limit: not JSON here
    "timestamp string of 10,000 digits": (with_timestamp(b'"' + b"9" * 10_000 + b'"'), 200),
    "timestamp 1e-400": (with_timestamp(b"1e-400"), 200),
    "timestamp past the year 9999": (with_timestamp(b"253402300800000"), 200),
    "timestamp at the end of 9999": (with_timestamp(b"253402300799999"), 200),
    "timestamp negative": (with_timestamp(b"-1"), 200),
    "sender id NaN": (in_messaging(b"1").replace(b'"id": "7001"', b'"id": NaN'), 200),
    "sender id with 4,000 digits": (in_messaging(b"1").replace(b'"7001"', b"9" * 4_000), 200),
    # text
    "invalid UTF-8": (payloads.envelope(payloads.text("7003")).replace(b"hello", b"\xff\xfe\xc0\xaf"), 400),
    "overlong UTF-8 quote": (b'{"entry":[],"x":"\xc0\xa2"}', 400),
    "lone surrogates": (payloads.envelope(payloads.text("\\ud83d", "\\udc00")).replace(b"\\\\", b"\\"), 200),
    "a NUL in every string": (
        payloads.envelope(payloads.postback("70\\u00004", "\\u0000")).replace(b"\\\\", b"\\"),
        200,
    ),
    "a UTF-8 byte order mark": (b"\xef\xbb\xbf" + payloads.envelope(payloads.text("7005")), 200),
    "UTF-16": (payloads.envelope(payloads.text("7006")).decode().encode("utf-16"), 200),
    "UTF-32": (payloads.envelope(payloads.text("7007")).decode().encode("utf-32"), 200),
    # size and shape
    "4 MB of integers": (b'{"entry":[' + b"0," * (MAX_BODY_BYTES // 2 - 10) + b"0]}", 200),
    "4 MB of empty objects": (
        b'{"entry":[{"messaging":[' + b"{}," * (MAX_BODY_BYTES // 3 - 20) + b"{}]}]}",
        200,
    ),
    "4 MB of one string": (b'{"entry":[],"x":"' + b"a" * (MAX_BODY_BYTES - 30) + b'"}', 200),
    "one byte past 4 MB": (b'{"entry":[],"x":"' + b"a" * (MAX_BODY_BYTES - 18) + b'"}', 413),
    "10,000 duplicate keys": (b'{"entry":[],' + b'"a":1,' * 10_000 + b'"b":2}', 200),
    "empty": (b"", 400),
    "whitespace": (b" \t\r\n" * 1000, 400),
    "null": (b"null", 400),
    "a JSON string": (b'"entry"', 400),
    "a list of notifications": (b"[" + payloads.envelope(payloads.text("7008")) + b"]", 400),
    "trailing garbage": (payloads.envelope(payloads.text("7009")) + b"\x00garbage", 400),
    "JSON with comments": (b'{"entry": [] /* note */}', 400),
}


@pytest.mark.parametrize("name", ADVERSARIAL_BODIES)
def test_an_adversarial_body_is_acknowledged_or_refused_never_a_server_error(bot, name):
    body, expected = ADVERSARIAL_BODIES[name]

    assert post_signed(bot, body) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=utf-16",
        "application/octet-stream",
        "",
        "\u00e9/\u00e9",
        "a" * 8000,
    ],
)
def test_a_notification_under_a_wrong_content_type_is_read_all_the_same(bot, content_type):
    # The signature covers the bytes, and the platform sends JSON: the declared type changes nothing.
    body = payloads.envelope(payloads.read("7101", watermark=payloads.now_ms() - 1000))
    headers = {"X-Hub-Signature-256": sign(APP_SECRET, body)}

    response = httpx.post(
        bot.url + "/webhook",
        content=body,
        headers={**headers, "Content-Type": content_type.encode()},
    )

    assert response.status_code == 200


# -- signatures --------------------------------------------------------------------------------------------

BODY = payloads.envelope(payloads.postback("7201", "GET_STARTED", ts=1_780_000_000_000))
DIGEST = sign(APP_SECRET, BODY).removeprefix("sha256=")


@pytest.mark.parametrize(
    "header",
    [
        "sha256=" + DIGEST[:-1],  # a hex digit short
        "sha256=" + DIGEST + "0",  # a hex digit long
        "sha256=" + DIGEST * 2,
        "sha256=" + DIGEST[:32],
        "sha256=" + "0" * 10_000,
        "sha256=",
        DIGEST,  # no algorithm
        "sha1=" + DIGEST,
        "sha512=" + DIGEST,
        "sha256:" + DIGEST,
        "sha256=" + bytes.fromhex(DIGEST).hex().upper()[:-1] + "G",
        "sha256=" + base64.b64encode(bytes.fromhex(DIGEST)).decode(),  # base64, not hex
        "sha256=" + " ".join(DIGEST[i : i + 2] for i in range(0, 64, 2)),
        "sha256=\u00e1" + DIGEST[1:],  # non-ASCII in the header (Latin-1 on the wire)
        "sha256=\udcff" + DIGEST[1:],
        "\u00ff" * 300,
        "sha256=" + DIGEST[:-2] + "\u00a0\u00a0",
    ],
)
def test_a_signature_of_the_wrong_length_or_encoding_is_refused(bot, header):
    raw_header = header.encode("utf-8", "surrogateescape")

    status = raw_request(
        bot.port,
        b"POST /webhook HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json\r\n"
        + b"X-Hub-Signature-256: "
        + raw_header
        + b"\r\nContent-Length: "
        + str(len(BODY)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + BODY,
    )

    assert status == 403


def test_two_signature_headers_are_not_an_opening(bot):
    good = sign(APP_SECRET, BODY)
    # The first one counts: a wrong one first is refused even when the right one follows.
    response = bot.client.post(
        "/webhook", content=BODY, headers=[("X-Hub-Signature-256", "sha256=0"), ("X-Hub-Signature-256", good)]
    )
    assert response.status_code == 403


# -- raw HTTP: slow, truncated and oversized requests -----------------------------------------------------


def connect(port: int, timeout_s: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def read_status(sock: socket.socket) -> int | None:
    """The status of the answer on `sock`, or None when the server closed it without one."""
    head = b""
    try:
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            head += chunk
    except ConnectionResetError:
        return None
    return int(head.split(b" ", 2)[1])


def raw_request(port: int, request: bytes) -> int | None:
    with connect(port) as sock:
        # The server may stop reading: what it answered, if anything, is still to be read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        return read_status(sock)


def webhook_head(body_length: int | str, signature: str, *extra: str) -> bytes:
    lines = [
        "POST /webhook HTTP/1.1",
        "Host: bot",
        "Content-Type: application/json",
        f"X-Hub-Signature-256: {signature}",
        f"Content-Length: {body_length}",
        "Connection: close",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_body_that_arrives_slowly_is_acknowledged_and_others_are_served_meanwhile(bot):
    body = payloads.envelope(payloads.read("7301", watermark=payloads.now_ms() - 1000))
    with connect(bot.port) as sock:
        sock.sendall(webhook_head(len(body), sign(APP_SECRET, body)))
        for start in range(0, len(body), 16):
            sock.sendall(body[start : start + 16])
            # While this one dribbles in, the server answers everyone else.
            assert bot.client.get("/healthz").status_code == 200
        assert read_status(sock) == 200


def test_headers_that_never_end_do_not_hold_up_other_requests(bot):
    with connect(bot.port) as sock:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: bot\r\nX-Partial: ")
        for _ in range(20):
            sock.sendall(b"a")
            assert bot.client.get("/healthz").status_code == 200


def test_a_body_cut_short_is_not_recorded_and_the_server_carries_on(bot):
    body = payloads.envelope(payloads.postback("7302", "GET_STARTED"))
    with connect(bot.port) as sock:
        sock.sendall(webhook_head(len(body), sign(APP_SECRET, body)) + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)  # the client goes away mid-body
        status = read_status(sock)

    assert status in (None, 400)
    assert post_signed(bot, body) == 200  # the whole body, sent again, is recorded


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        ("abc", 400),
        ("-1", 400),
        ("1e3", 400),
        ("0x10", 400),
        ("1 2", 400),
        ("+12", 400),
        ("99999999999999999999999999", (400, 413)),
        (str(MAX_BODY_BYTES + 1), 413),
        (str(2**64), (400, 413)),
    ],
)
def test_a_wrong_content_length_is_refused(bot, length, expected):
    body = b'{"entry":[]}'

    status = raw_request(bot.port, webhook_head(length, sign(APP_SECRET, body)) + body)

    assert status in (expected if isinstance(expected, tuple) else (expected,))


def test_a_content_length_shorter_than_the_body_is_judged_on_what_it_covers(bot):
    body = payloads.envelope(payloads.postback("7303", "GET_STARTED"))
    # Signed for the whole body, but only half of it is declared: the half does not match the signature.
    with connect(bot.port) as sock:
        sock.sendall(webhook_head(len(body) // 2, sign(APP_SECRET, body)) + body)
        assert read_status(sock) == 403


def test_conflicting_lengths_are_refused(bot):
    body = b'{"entry":[]}'
    head = webhook_head(len(body), sign(APP_SECRET, body), "Transfer-Encoding: chunked")
    assert raw_request(bot.port, head + b"c\r\n" + body + b"\r\n0\r\n\r\n") == 400
    twice = webhook_head(len(body), sign(APP_SECRET, body), f"Content-Length: {len(body) + 1}")
    assert raw_request(bot.port, twice + body) == 400


def test_a_chunked_body_past_the_limit_is_refused_before_it_is_all_read(bot):
    head = (
        b"POST /webhook HTTP/1.1\r\nHost: bot\r\nTransfer-Encoding: chunked\r\n"
        b"X-Hub-Signature-256: sha256=0\r\nConnection: close\r\n\r\n"
    )
    chunk = b"a" * 65_536
    with connect(bot.port) as sock:
        sock.sendall(head)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        assert read_status(sock) == 413


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"X-Big: " + b"a" * 24 * 2**20 + b"\r\n", id="one 24 MB header"),
        pytest.param(b"X-A: b\r\n" * 1_000_000, id="a million headers"),
    ],
)
def test_oversized_headers_are_refused_within_bounded_memory(bot, headers):
    reset_peak(bot)
    before = peak_mb(bot)

    status = raw_request(bot.port, b"GET /healthz HTTP/1.1\r\nHost: bot\r\n" + headers + b"\r\n")

    growth = peak_mb(bot) - before
    # A header section that size is no client's: a server that reads it in full can be made to hold any
    # amount of memory, a request at a time.
    assert status in (None, 400, 431), status
    assert growth < 8, f"the server's peak RSS grew {growth:.0f} MB"


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /webhook?hub.mode=%ff%fe&hub.verify_token=%ff&hub.challenge=%ff HTTP/1.1",
        b"GET /webhook?hub.mode=subscribe&hub.verify_token=" + b"%C3%A9" * 5_000 + b" HTTP/1.1",
        b"GET /media/..%2fcampaign.toml HTTP/1.1",
        b"GET /media/%00 HTTP/1.1",
        b"GET /media/" + b"a" * 60_000 + b" HTTP/1.1",
        b"GET /" + b"a" * 1_000_000 + b" HTTP/1.1",
        b"FOO /webhook HTTP/1.1",
        b"POST /healthz HTTP/1.1",
        b"GET /webhook HTTP/9.9",
        b"\x00\xff\xfe garbage",
    ],
)
def test_a_malformed_request_line_is_refused(bot, request_line):
    status = raw_request(bot.port, request_line + b"\r\nHost: bot\r\nConnection: close\r\n\r\n")

    assert status is None or 400 <= status < 500


# -- memory and the conversation, after all of the above --------------------------------------------------


def hostile_round(bot: BotProcess) -> None:
    for body, _ in ADVERSARIAL_BODIES.values():
        post_signed(bot, body)


def test_memory_stays_bounded_under_rounds_of_hostile_bodies(bot):
    hostile_round(bot)  # the allocator's arenas and the caches settle
    before = rss_mb(bot)

    for _ in range(3):
        hostile_round(bot)

    growth = rss_mb(bot) - before
    assert growth < 24, f"RSS grew {growth:.0f} MB over three rounds (from {before:.0f} MB)"


def test_the_conversation_still_works_afterwards(bot, graph):
    customer = "7999"
    assert post_signed(bot, payloads.envelope(payloads.postback(customer, "GET_STARTED"))) == 200
    welcome = graph.wait_for(customer, 1)[0]
    buttons = [b["payload"] for b in welcome["attachment"]["payload"]["buttons"]]

    assert post_signed(bot, payloads.envelope(payloads.postback(customer, buttons[0]))) == 200
    coupon = graph.wait_for(customer, 2)[1]
    reveal = coupon["attachment"]["payload"]["buttons"][0]["payload"]
    assert post_signed(bot, payloads.envelope(payloads.postback(customer, reveal))) == 200

    assert "text" in graph.wait_for(customer, 3)[2]
    assert_unharmed(bot)


# -- the simulator's routes (local mode) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def local_bot(tmp_path_factory) -> Iterator[BotProcess]:
    with BotProcess(
        make_home(tmp_path_factory.mktemp("fuzz-local")), "https://graph.invalid", Mode.LOCAL
    ) as bot:
        yield bot
        assert_unharmed(bot)


def simulator_post(bot: BotProcess, body: bytes) -> int:
    status = bot.client.post("/simulator/customers", content=body).status_code
    assert status < 500, f"{status} for {body[:200]!r}\n{bot.log()[-3000:]}"
    return status


@FUZZ
@given(document=json_values | st.fixed_dictionaries({"id": json_values, "first_name": json_values}))
def test_the_simulator_takes_any_json_as_a_customer_or_refuses_it(local_bot, document):
    assert simulator_post(local_bot, encode(document)) in (200, 400)


@FUZZ
@given(body=st.binary(max_size=200))
def test_the_simulator_takes_any_bytes_as_a_customer_or_refuses_them(local_bot, body):
    assert simulator_post(local_bot, body) in (200, 400)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested 100,000 deep"),
        pytest.param(b'{"id": ' + b"[" * 2_000 + b"]" * 2_000 + b"}", id="an id nested 2,000 deep"),
        pytest.param(b'{"id": ' + b"9" * 5_000 + b"}", id="an id of 5,000 digits"),
        pytest.param(b'{"id": NaN, "first_name": Infinity}', id="non-finite numbers"),
        pytest.param(b'{"id": "\xff"}', id="invalid UTF-8"),
        pytest.param(b'{"id": "\\ud800", "first_name": "\\udfff"}', id="lone surrogates"),
    ],
)
def test_the_simulator_refuses_adversarial_customers_without_a_server_error(local_bot, body):
    assert simulator_post(local_bot, body) in (200, 400, 413)  # 413: more than a customer's id and name


def test_the_simulator_refuses_a_customer_body_past_the_webhooks_limit(local_bot):
    name = "a" * (MAX_BODY_BYTES + 1)
    reset_peak(local_bot)
    before = peak_mb(local_bot)

    status = simulator_post(local_bot, json.dumps({"id": "1", "first_name": name}).encode())

    assert status == 413
    assert peak_mb(local_bot) - before < 16


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["after", "customer", "x"]), st.text(max_size=50), max_size=3))
def test_the_simulators_messages_take_any_query(local_bot, params):
    status = local_bot.client.get("/simulator/messages", params=params).status_code
    assert status in (200, 400)


@pytest.mark.parametrize(
    "after", ["9" * 5_000, "-" + "9" * 100, "1e9", "NaN", "\u0661", "0x10", " 1 ", "1_0"]
)
def test_the_simulators_messages_take_adversarial_indices(local_bot, after):
    status = local_bot.client.get("/simulator/messages", params={"customer": "1", "after": after}).status_code
    assert status in (200, 400)


def test_the_local_bot_still_converses_after_the_simulator_was_fuzzed(local_bot):
    config = re.search(
        r'<script id="config" type="application/json">(.*?)</script>', local_bot.client.get("/").text
    )
    secret = json.loads(config.group(1))["secret"]
    body = payloads.envelope(payloads.postback("7401", "GET_STARTED"))

    assert local_bot.post(body, signature=sign(secret, body)).status_code == 200

    deadline = time.monotonic() + 15
    while not local_bot.client.get("/simulator/messages", params={"customer": "7401"}).json():
        assert time.monotonic() < deadline, "no welcome reached the simulator"
        time.sleep(0.05)


# -- the dashboard's token ------------------------------------------------------------------------------

DASHBOARD_TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory) -> Iterator[str]:
    with running_dashboard(tmp_path_factory.mktemp("fuzz-dashboard"), token=DASHBOARD_TOKEN) as url:
        yield url


def test_the_dashboard_refuses_every_token_but_its_own(dashboard):
    wrong_tokens = [
        "",
        DASHBOARD_TOKEN[:-1],
        DASHBOARD_TOKEN + "x",
        DASHBOARD_TOKEN.upper(),
        DASHBOARD_TOKEN * 1_000,
        "\u00e9" * 100,
        "%00",
        "s3cret token",
        " " * 12,
        "*",
    ]
    answers = {}
    with httpx.Client(base_url=dashboard, timeout=60) as client:
        for token in wrong_tokens:
            answers[f"?token={token[:20]!r}"] = client.get("/", params={"token": token}).status_code
            answers[f"Authorization: token {token[:20]!r}"] = client.get(
                "/", headers={"Authorization": f"token {token}".strip().encode()}
            ).status_code
        answers["a kernel API"] = client.get("/api/kernels", params={"token": "wrong"}).status_code

    assert {key: status for key, status in answers.items() if status not in (302, 403)} == {}
