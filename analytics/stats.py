"""The statistics of an A/B comparison: rates with intervals, lift, chance to win, sample-ratio mismatch.

compare([("A", 1200, 310), ("B", 1180, 365)])   # counts in, a pyarrow.Table out (SCHEMA)
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import pyarrow as pa

from analytics.filters import AnalyticsError

# Two-sided 95 %.
Z = NormalDist().inv_cdf(0.975)

# Enough for ±0.5 % on a probability at 95 %: 1.96 * sqrt(0.25 / 100_000) ≈ 0.0031.
DRAWS = 100_000

SCHEMA = pa.schema(
    [
        ("variant", pa.string()),
        ("customers", pa.int64()),
        ("conversions", pa.int64()),
        ("rate", pa.float64()),
        ("rate_low", pa.float64()),
        ("rate_high", pa.float64()),
        ("lift", pa.float64()),
        ("lift_low", pa.float64()),
        ("lift_high", pa.float64()),
        ("chance_to_win", pa.float64()),
        ("expected_loss", pa.float64()),
        ("srm_p", pa.float64()),
    ]
)


def compare(
    counts: Sequence[tuple[str, int, int]],
    *,
    weights: Sequence[float] | None = None,
    draws: int = DRAWS,
    seed: int = 0,
) -> pa.Table:
    """Compare variants' conversion rates: one row per variant, in the order given; each column as
    docs/metrics.md ("Experiments") defines it. A variant's draws depend on `seed` and its name only.

    Parameters:
        counts: (variant, exposed customers, conversions) per variant; the first is the reference for lift.
        weights: the planned share of each variant, in the same order; equal shares when None.
        draws: Monte Carlo draws per variant.
        seed: the seed of the draws.
    Returns:
        A pyarrow.Table with SCHEMA; null where undefined (no customers; lift when the reference has none
        or no conversions; lift's interval when the variant has no conversions, its log undefined).
    Raises:
        AnalyticsError: negative counts, more conversions than customers, a repeated variant, weights not
            one positive number per variant, draws < 1.
    """
    _check(counts, weights, draws)
    rates = [_rate(n, x) for _, n, x in counts]
    intervals = [wilson(n, x) for _, n, x in counts]
    lifts = [_lift(counts[0][1:], c[1:]) if i else (None, None, None) for i, c in enumerate(counts)]
    wins, losses = _chance_to_win(counts, draws, seed)
    srm = _srm_p([n for _, n, _ in counts], weights)
    columns = {
        "variant": [v for v, _, _ in counts],
        "customers": [n for _, n, _ in counts],
        "conversions": [x for _, _, x in counts],
        "rate": rates,
        "rate_low": [low for low, _ in intervals],
        "rate_high": [high for _, high in intervals],
        "lift": [lift for lift, _, _ in lifts],
        "lift_low": [low for _, low, _ in lifts],
        "lift_high": [high for _, _, high in lifts],
        "chance_to_win": wins,
        "expected_loss": losses,
        "srm_p": [srm] * len(counts),
    }
    return pa.table(columns, schema=SCHEMA)


def _check(counts: Sequence[tuple[str, int, int]], weights: Sequence[float] | None, draws: int) -> None:
    seen: set[str] = set()
    for variant, customers, conversions in counts:
        if customers < 0 or conversions < 0:
            raise AnalyticsError(f"Variant {variant!r} has negative counts ({customers}, {conversions}).")
        if conversions > customers:
            raise AnalyticsError(
                f"Variant {variant!r} has {conversions} conversions but only {customers} customers."
            )
        if variant in seen:
            raise AnalyticsError(f"Variant {variant!r} appears twice.")
        seen.add(variant)
    if weights is not None:
        if len(weights) != len(counts):
            raise AnalyticsError(f"{len(weights)} weights for {len(counts)} variants.")
        if not all(w > 0 for w in weights):
            raise AnalyticsError(f"Weights must be positive, not {list(weights)}.")
    if draws < 1:
        raise AnalyticsError(f"draws must be at least 1, not {draws}.")


def _rate(customers: int, conversions: int) -> float | None:
    return conversions / customers if customers else None


def wilson(customers: int, conversions: int) -> tuple[float | None, float | None]:
    """The 95 % interval of a rate (Wilson's score interval).

    Returns:
        (low, high); (None, None) without customers.
    """
    if not customers:
        return None, None
    n, z2 = customers, Z * Z
    centre = (conversions + z2 / 2) / (n + z2)
    half = Z / (n + z2) * math.sqrt(conversions * (n - conversions) / n + z2 / 4)
    # At 0 and at all converted the bound is exactly 0 or 1; the arithmetic leaves a rounding crumb.
    low = centre - half if conversions else 0.0
    high = centre + half if conversions < n else 1.0
    return low, high


def _lift(
    reference: tuple[int, int], variant: tuple[int, int]
) -> tuple[float | None, float | None, float | None]:
    (n0, x0), (n1, x1) = reference, variant
    if not n0 or not x0 or not n1:
        return None, None, None
    p0, p1 = x0 / n0, x1 / n1
    lift = p1 / p0 - 1
    if not x1:
        return lift, None, None
    # Var(log p̂) ≈ (1 − p) / (n p), the two samples independent.
    se = math.sqrt((1 - p0) / (n0 * p0) + (1 - p1) / (n1 * p1))
    log_ratio = math.log(p1 / p0)
    return lift, math.exp(log_ratio - Z * se) - 1, math.exp(log_ratio + Z * se) - 1


def _chance_to_win(
    counts: Sequence[tuple[str, int, int]], draws: int, seed: int
) -> tuple[list[float | None], list[float | None]]:
    """Each variant's posterior chance of the highest rate and expected loss; null without customers."""
    exposed = [i for i, (_, n, _) in enumerate(counts) if n]
    wins: list[float | None] = [None] * len(counts)
    losses: list[float | None] = [None] * len(counts)
    if not exposed:
        return wins, losses
    samples = np.stack([_posterior(counts[i], draws, seed) for i in exposed])
    best = samples.max(axis=0)
    share = np.bincount(samples.argmax(axis=0), minlength=len(exposed)) / draws
    loss = (best - samples).mean(axis=1)
    for row, i in enumerate(exposed):
        wins[i], losses[i] = float(share[row]), float(loss[row])
    return wins, losses


def _posterior(count: tuple[str, int, int], draws: int, seed: int) -> np.ndarray:
    variant, customers, conversions = count
    # Seeded by the name as well, so a variant's draws do not depend on its place in the list.
    rng = np.random.default_rng([seed, zlib.crc32(variant.encode())])
    return rng.beta(1 + conversions, 1 + customers - conversions, size=draws)


def _srm_p(customers: Sequence[int], weights: Sequence[float] | None) -> float | None:
    """p-value of Pearson's chi-square test of the exposed counts against the planned shares."""
    total = sum(customers)
    if len(customers) < 2 or not total:
        return None
    shares = [1.0] * len(customers) if weights is None else list(weights)
    expected = [total * w / sum(shares) for w in shares]
    statistic = sum((n - e) ** 2 / e for n, e in zip(customers, expected, strict=True))
    return chi_square_sf(statistic, len(customers) - 1)


def chi_square_sf(x: float, df: int) -> float:
    """P(X ≥ x) for X chi-square with `df` (a positive integer) degrees of freedom, in closed form."""
    if x <= 0:
        return 1.0
    half = x / 2
    if df % 2 == 0:
        # Q(k, h) = e^−h Σ_{i<k} h^i / i!
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    # Q(k + 1/2, h) = erfc(√h) + e^−h Σ_{i=1..k} h^(i−1/2) / Γ(i + 1/2)
    term = math.sqrt(half) / math.gamma(1.5)
    total = 0.0
    for i in range(1, (df - 1) // 2 + 1):
        total += term
        term *= half / (i + 0.5)
    return min(1.0, math.erfc(math.sqrt(half)) + math.exp(-half) * total)
