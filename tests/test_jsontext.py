"""JSON on the busy paths: orjson's speed without losing what the standard library would have read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import jsontext

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_what_the_standard_library_writes_reads_back_the_same(value):
    assert jsontext.loads(json.dumps(value).encode()) == jsontext.loads(jsontext.dumps(value)) == value


def test_what_only_the_standard_library_reads_is_read():
    body = b'{"big": 1180591620717411303424, "n": NaN, "text": "a\\ud83db", "pair": "\\ud83d\\ude00"}'

    value = jsontext.loads(body)

    assert value["big"] == 2**70
    assert value["n"] != value["n"]  # NaN
    assert value["text"] == "a\ufffdb"  # a lone surrogate: replaced, so it can be written again
    assert value["pair"] == "\U0001f600"  # a pair is one character
    assert jsontext.loads(jsontext.dumps([value["text"], value["pair"]])) == ["a\ufffdb", "\U0001f600"]


@pytest.mark.parametrize("data", [b"", b"{", b"[1,]", b"\xff\xfe", "{'a': 1}"])
def test_what_is_not_json_is_a_value_error(data):
    with pytest.raises(ValueError):  # noqa: PT011 - the contract: a ValueError of whichever parser refused it
        jsontext.loads(data)


def test_a_lone_surrogate_is_written_as_the_replacement_character():
    # E.g. in a Graph API error message, read by httpx's json, then recorded in a send_failed detail.
    value = {"reason": "bad \ud800", "key \udc00": ["m_\ud83d"]}

    payload = jsontext.dumps(value)

    payload.decode("utf-8")  # valid UTF-8
    assert jsontext.loads(payload) == {"reason": "bad \ufffd", "key \ufffd": ["m_\ufffd"]}


def test_a_value_json_cannot_hold_is_still_a_type_error():
    with pytest.raises(TypeError):
        jsontext.dumps({"when": object()})
