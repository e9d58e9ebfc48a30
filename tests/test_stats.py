"""analytics.stats: the A/B comparison, checked against numbers worked out independently of it."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from analytics.filters import AnalyticsError
from analytics.stats import SCHEMA, chi_square_sf, compare

# Monte Carlo with the default draws promises ±0.5 %.
MC = 0.005


def rows(counts, **kwargs) -> dict[str, dict]:
    return {row["variant"]: row for row in compare(counts, **kwargs).to_pylist()}


def lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def exact_chance_b_beats_a(a: tuple[int, int], b: tuple[int, int]) -> float:
    """P(p_B > p_A), Beta(1 + x, 1 + n − x) posteriors, by Evan Miller's closed form (integer parameters)."""
    (na, xa), (nb, xb) = a, b
    alpha_a, beta_a, alpha_b, beta_b = 1 + xa, 1 + na - xa, 1 + xb, 1 + nb - xb
    return sum(
        math.exp(
            lbeta(alpha_a + i, beta_a + beta_b)
            - math.log(beta_b + i)
            - lbeta(1 + i, beta_b)
            - lbeta(alpha_a, beta_a)
        )
        for i in range(alpha_b)
    )


# -- rates and their intervals


def test_rate_interval_is_wilsons_score_interval():
    # 10 of 100: centre (10 + 1.96²/2) / (100 + 1.96²) = 11.921 / 103.842 = 0.11480,
    # half-width 1.96 / 103.842 · √(10 · 90 / 100 + 1.96² / 4) = 0.018875 · 3.1560 = 0.05957.
    row = rows([("a", 100, 10)])["a"]
    assert row["rate"] == 0.1
    assert row["rate_low"] == pytest.approx(0.05523, abs=1e-4)
    assert row["rate_high"] == pytest.approx(0.17437, abs=1e-4)


def test_no_conversions_and_all_converted_keep_the_interval_inside_0_and_1():
    # 0 of 10: upper bound 1.96² / (10 + 1.96²) = 3.8415 / 13.8415 = 0.27753; all 10: its mirror.
    table = rows([("none", 10, 0), ("all", 10, 10)])
    assert (table["none"]["rate_low"], table["none"]["rate_high"]) == (0.0, pytest.approx(0.27753, abs=1e-5))
    assert (table["all"]["rate_low"], table["all"]["rate_high"]) == (pytest.approx(0.72247, abs=1e-5), 1.0)


def test_more_data_at_the_same_rates_narrows_the_intervals():
    small = rows([("a", 100, 10), ("b", 100, 15)])
    large = rows([("a", 1000, 100), ("b", 1000, 150)])
    for variant in "ab":
        assert large[variant]["rate"] == small[variant]["rate"]
        assert large[variant]["rate_low"] > small[variant]["rate_low"]
        assert large[variant]["rate_high"] < small[variant]["rate_high"]
    assert large["b"]["lift"] == pytest.approx(small["b"]["lift"])
    assert large["b"]["lift_low"] > small["b"]["lift_low"]
    assert large["b"]["lift_high"] < small["b"]["lift_high"]


# -- lift


def test_lift_interval_is_the_delta_method_on_the_log_of_the_ratio():
    # 150/1000 against 100/1000: log 1.5 = 0.405465, se = √(0.9/100 + 0.85/150) = 0.121106,
    # exp(0.405465 ∓ 1.96 · 0.121106) − 1 = 0.18306, 0.90187.
    table = rows([("a", 1000, 100), ("b", 1000, 150)])
    assert table["b"]["lift"] == pytest.approx(0.5)
    assert table["b"]["lift_low"] == pytest.approx(0.18306, abs=1e-4)
    assert table["b"]["lift_high"] == pytest.approx(0.90187, abs=1e-4)


def test_lift_is_null_for_the_first_variant():
    first = rows([("a", 1000, 100), ("b", 1000, 150)])["a"]
    assert (first["lift"], first["lift_low"], first["lift_high"]) == (None, None, None)


def test_lift_is_null_when_the_reference_has_no_conversions():
    second = rows([("a", 100, 0), ("b", 100, 5)])["b"]
    assert (second["lift"], second["lift_low"], second["lift_high"]) == (None, None, None)


def test_a_variant_without_conversions_has_lift_minus_one_and_no_interval():
    second = rows([("a", 100, 10), ("b", 100, 0)])["b"]
    assert (second["lift"], second["lift_low"], second["lift_high"]) == (-1.0, None, None)


# -- chance to win and expected loss


def test_chance_to_win_matches_the_worked_example():
    # The issue's example: 100/1,000 against 150/1,000, the second better with ≈ 99.96 %.
    table = rows([("a", 1000, 100), ("b", 1000, 150)])
    exact = exact_chance_b_beats_a((1000, 100), (1000, 150))
    assert exact == pytest.approx(0.9996, abs=5e-5)
    assert table["b"]["chance_to_win"] == pytest.approx(exact, abs=MC)
    assert table["a"]["chance_to_win"] + table["b"]["chance_to_win"] == pytest.approx(1.0)


@pytest.mark.parametrize(("a", "b"), [((200, 20), (200, 26)), ((50, 3), (80, 2)), ((30, 0), (30, 1))])
def test_chance_to_win_of_two_variants_matches_the_closed_form(a, b):
    table = rows([("a", *a), ("b", *b)])
    assert table["b"]["chance_to_win"] == pytest.approx(exact_chance_b_beats_a(a, b), abs=MC)


def test_equal_data_gives_even_chances_and_equal_losses():
    table = rows([("a", 500, 50), ("b", 500, 50)])
    assert table["a"]["chance_to_win"] == pytest.approx(0.5, abs=MC)
    assert table["b"]["chance_to_win"] == pytest.approx(0.5, abs=MC)
    assert table["a"]["expected_loss"] == pytest.approx(table["b"]["expected_loss"], rel=0.05)


def test_three_equal_variants_share_the_chance_to_win():
    table = rows([("a", 300, 30), ("b", 300, 30), ("c", 300, 30)])
    for row in table.values():
        assert row["chance_to_win"] == pytest.approx(1 / 3, abs=MC)


def test_expected_losses_differ_by_the_difference_of_posterior_means():
    # E[max − p_a] − E[max − p_b] = E[p_b] − E[p_a] = 151/1002 − 101/1002.
    table = rows([("a", 1000, 100), ("b", 1000, 150)])
    assert table["a"]["expected_loss"] - table["b"]["expected_loss"] == pytest.approx(50 / 1002, abs=1e-3)
    assert 0 <= table["b"]["expected_loss"] < 1e-4


def test_a_clearly_better_variant_wins_with_near_certainty():
    table = rows([("a", 1000, 50), ("b", 1000, 200)])
    assert table["b"]["chance_to_win"] == 1.0
    assert table["b"]["expected_loss"] == 0.0


def test_swapping_variants_swaps_the_results():
    forward = rows([("a", 400, 40), ("b", 500, 62)])
    backward = rows([("b", 500, 62), ("a", 400, 40)])
    for variant in "ab":
        for column in ("rate", "rate_low", "rate_high", "chance_to_win", "expected_loss"):
            assert forward[variant][column] == backward[variant][column], (variant, column)
    # Lift turns into its reciprocal, its interval mirrored.
    assert 1 + backward["a"]["lift"] == pytest.approx(1 / (1 + forward["b"]["lift"]))
    assert 1 + backward["a"]["lift_low"] == pytest.approx(1 / (1 + forward["b"]["lift_high"]))
    assert 1 + backward["a"]["lift_high"] == pytest.approx(1 / (1 + forward["b"]["lift_low"]))


def test_the_same_seed_gives_the_same_table_and_another_seed_agrees_within_the_noise():
    counts = [("a", 200, 20), ("b", 200, 26)]
    assert compare(counts, seed=7).equals(compare(counts, seed=7))
    one, other = rows(counts, seed=7), rows(counts, seed=8)
    assert one["b"]["chance_to_win"] != other["b"]["chance_to_win"]
    assert one["b"]["chance_to_win"] == pytest.approx(other["b"]["chance_to_win"], abs=2 * MC)


# -- sample-ratio mismatch


@pytest.mark.parametrize(
    ("x", "df"),
    # The 5 % critical values of the chi-square table.
    [(3.841459, 1), (5.991465, 2), (7.814728, 3), (9.487729, 4), (11.070498, 5), (14.067140, 7)],
)
def test_chi_square_tail_at_the_tables_critical_values_is_five_percent(x, df):
    assert chi_square_sf(x, df) == pytest.approx(0.05, abs=1e-6)


def test_chi_square_tail_with_one_degree_of_freedom_is_the_two_sided_normal_tail():
    for x in (0.1, 1.0, 4.0, 10.0, 30.0):
        assert chi_square_sf(x, 1) == pytest.approx(2 * (1 - NormalDist().cdf(math.sqrt(x))), rel=1e-9)


def test_srm_p_is_the_chi_square_test_of_customers_against_equal_shares():
    # Expected 5,100 each: χ² = 2 · 100² / 5,100 = 3.92157, one degree of freedom.
    table = compare([("a", 5000, 500), ("b", 5200, 520)])
    p = 2 * (1 - NormalDist().cdf(math.sqrt(2 * 100**2 / 5100)))
    assert table["srm_p"].to_pylist() == [pytest.approx(p, rel=1e-9)] * 2
    assert p == pytest.approx(0.0477, abs=1e-4)


def test_srm_p_tests_against_the_weights():
    assert rows([("a", 2000, 1), ("b", 1000, 1)], weights=[2, 1])["a"]["srm_p"] == pytest.approx(1.0)
    assert rows([("a", 2000, 1), ("b", 1000, 1)])["a"]["srm_p"] < 1e-6


def test_a_variant_nobody_saw_is_a_sample_ratio_mismatch():
    table = rows([("a", 100, 10), ("b", 0, 0)])
    assert table["a"]["srm_p"] == table["b"]["srm_p"] < 1e-6


# -- edges


def test_a_variant_without_customers_has_nulls_not_errors():
    table = rows([("a", 100, 10), ("b", 0, 0), ("c", 100, 12)])
    empty = table["b"]
    for column in ("rate", "rate_low", "rate_high", "lift", "chance_to_win", "expected_loss"):
        assert empty[column] is None, column
    assert table["a"]["chance_to_win"] + table["c"]["chance_to_win"] == pytest.approx(1.0)


def test_a_reference_without_customers_leaves_every_lift_null():
    table = rows([("a", 0, 0), ("b", 100, 12)])
    assert table["b"]["lift"] is None
    assert table["b"]["chance_to_win"] == 1.0


def test_one_variant_is_certain_to_win_and_has_no_mismatch_to_test():
    only = rows([("a", 100, 10)])["a"]
    assert (only["chance_to_win"], only["expected_loss"], only["srm_p"]) == (1.0, 0.0, None)


def test_no_variants_give_an_empty_table_with_the_columns():
    assert compare([]).schema == SCHEMA
    assert compare([]).num_rows == 0


def test_the_columns_are_those_the_issue_names():
    assert compare([("a", 10, 1)]).column_names == [
        "variant",
        "customers",
        "conversions",
        "rate",
        "rate_low",
        "rate_high",
        "lift",
        "lift_low",
        "lift_high",
        "chance_to_win",
        "expected_loss",
        "srm_p",
    ]


@pytest.mark.parametrize(
    ("counts", "kwargs", "culprit"),
    [
        ([("a", 10, 11)], {}, "'a' has 11 conversions but only 10 customers"),
        ([("a", -1, 0)], {}, "'a' has negative counts"),
        ([("a", 10, 1), ("a", 10, 2)], {}, "'a' appears twice"),
        ([("a", 10, 1), ("b", 10, 2)], {"weights": [1]}, "1 weights for 2 variants"),
        ([("a", 10, 1), ("b", 10, 2)], {"weights": [1, 0]}, "Weights must be positive"),
        ([("a", 10, 1)], {"draws": 0}, "draws must be at least 1"),
    ],
)
def test_impossible_counts_name_the_culprit(counts, kwargs, culprit):
    with pytest.raises(AnalyticsError, match=culprit):
        compare(counts, **kwargs)
