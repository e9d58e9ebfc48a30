"""The dashboard's experiment card and its charts, from tables shaped as Events.experiment and
Events.experiment_timeline answer."""

from __future__ import annotations

import re
from datetime import date

import pyarrow as pa
import pytest

from analytics import charts
from analytics.experiment_card import MIN_CUSTOMERS, banners, experiment_html
from analytics.stats import compare


def experiment(
    counts: list[tuple[str, int, int]],
    weights: list[float] | None = None,
    *,
    mixed: int = 0,
    forced: int = 0,
    declined: list[int] | None = None,
) -> pa.Table:
    table = compare(counts, weights=weights, draws=20_000)
    rows = len(counts)
    return (
        table.append_column("declined", pa.array(declined or [0] * rows, pa.int64()))
        .append_column("send_failed", pa.array([0] * rows, pa.int64()))
        .append_column("excluded_mixed", pa.array([mixed] * rows, pa.int64()))
        .append_column("excluded_forced", pa.array([forced] * rows, pa.int64()))
    )


def kinds(table: pa.Table) -> list[str]:
    return [kind for kind, _ in banners(table)]


def test_a_clear_difference_names_the_winner_and_still_warns_against_peeking():
    said = banners(experiment([("A", 1000, 100), ("B", 1000, 150)]))

    assert [kind for kind, _ in said] == ["winner", "peeking"]
    assert said[0][1].startswith("B is likely the best: ")


def test_equal_variants_have_no_winner():
    assert kinds(experiment([("A", 500, 50), ("B", 500, 50)])) == ["no-winner", "peeking"]


@pytest.mark.parametrize(
    ("counts", "weights"),
    [
        ([("A", MIN_CUSTOMERS - 1, 40), ("B", 400, 80)], [1, 4]),  # too few customers in one variant
        ([("A", 400, 4), ("B", 400, 80)], None),  # too few conversions in one variant
    ],
)
def test_too_few_customers_or_conversions_say_nothing_about_a_winner(counts, weights):
    assert kinds(experiment(counts, weights)) == ["too-few", "peeking"]


def test_a_sample_ratio_mismatch_comes_first_and_withholds_the_verdict():
    # 1,000 against 800 where the plan is half and half: p ≈ 2.6e-6.
    table = experiment([("A", 1000, 100), ("B", 800, 200)])
    assert table["srm_p"][0].as_py() < 0.001

    assert kinds(table) == ["srm", "peeking"]
    # The same counts planned 5:4 are no mismatch.
    assert kinds(experiment([("A", 1000, 100), ("B", 800, 200)], weights=[5, 4])) == ["winner", "peeking"]


def test_the_card_shows_a_row_per_variant_with_the_reference_first():
    page = experiment_html(experiment([("A", 1000, 100), ("B", 1000, 150)], declined=[200, 150]))

    assert re.findall(r'data-variant="([^"]+)"', page) == ["A", "B"]
    a_row, b_row = re.findall(r"<tr data-variant=.*?</tr>", page)
    assert "reference" in a_row
    assert "10.0 %" in a_row
    assert "200 (20.0 %)" in a_row
    assert "+50 %" in b_row
    assert "15.0 %" in b_row
    assert 'data-banner="winner"' in page
    assert "data-excluded" not in page


def test_the_card_counts_the_customers_left_out():
    page = experiment_html(experiment([("A", 300, 30), ("B", 300, 31)], mixed=7, forced=12))

    assert 'data-excluded="19"' in page
    assert "7 customers who saw two variants, 12 who came through a link" in page


def test_variant_names_are_escaped():
    page = experiment_html(experiment([("<b>A</b>", 300, 30), ("B", 300, 31)]))
    assert "<b>A</b>" not in page
    assert "&lt;b&gt;A&lt;/b&gt;" in page


def test_an_experiment_without_variants_shows_nothing():
    assert experiment_html(experiment([])) == ""


def test_the_charts_draw_sources_and_cumulative_rates():
    sources = pa.table(
        {
            "source": ["till", "ad:2385", "direct"],
            "title": [None, "Spring ad", None],
            **{step: [30, 20, 10] for step in ("reached", "responded", "coupon_requested", "coupon_seen")},
            **{step: [12, 8, 3] for step in ("coupon_revealed", "redeemed", "declined")},
        }
    )
    svg = charts.to_svg(charts.sources_chart(sources))
    assert "ad:2385 (Spring ad)" in svg
    assert "till" in svg

    timeline = pa.table(
        {
            "day": [date(2026, 3, 1), date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 2)],
            "variant": ["A", "B", "A", "B"],
            "customers": [100, 98, 210, 205],
            "conversions": [10, 14, 20, 31],
            "rate": [0.1, 0.143, 0.095, 0.151],
            "rate_low": [0.05, 0.08, 0.06, 0.11],
            "rate_high": [0.17, 0.22, 0.14, 0.2],
        }
    )
    svg = charts.to_svg(charts.experiment_chart(timeline))
    assert "Revealed the code by variant, cumulative" in svg
