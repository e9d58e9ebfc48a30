"""Counts in the words people write: the dashboard's lines and the commands' output."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pytest

from analytics.panels import pools_html
from bot.words import count


@pytest.mark.parametrize(
    ("n", "noun", "plural", "words"),
    [
        (0, "customer", None, "0 customers"),
        (1, "customer", None, "1 customer"),
        (2, "customer", None, "2 customers"),
        (12_500, "customer", None, "12,500 customers"),
        (1, "reply", "replies", "1 reply"),
        (3, "reply", "replies", "3 replies"),
    ],
)
def test_a_count_is_singular_for_one_only(n, noun, plural, words):
    assert count(n, noun, plural) == words


def test_one_reveal_that_found_no_code_reads_as_one():
    first_seen = datetime(2026, 12, 1, 9, 30)
    refused = {"campaign_id": "spring", "reveals": 1, "customers": 1, "first_seen": first_seen}
    empty = pa.Table.from_pylist([refused])

    assert "1 reveal found no code left (1 customer got the “all gone” message)" in pools_html([], empty)
