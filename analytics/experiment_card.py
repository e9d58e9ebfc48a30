"""The dashboard's experiment card: variants compared on a step, with the warnings a reader needs first.

Built from `Events.experiment` (one row per variant); pure: a table in, HTML out.
"""

from __future__ import annotations

import html
import math
from typing import Any

import pyarrow as pa

from analytics.panels import percent
from bot.facts import STEP_LABELS, FunnelStep
from bot.words import count

SRM_ALPHA = 0.001  # below this, the exposed counts are not in the planned shares
MIN_CUSTOMERS = 100  # per variant, before a comparison says anything
MIN_CONVERSIONS = 5
WINNER_CHANCE = 0.95

PEEKING = (
    "Looking every day and stopping as soon as one variant looks ahead picks false winners far more often "
    "than the figures say: decide beforehand how many customers each variant needs, and judge then."
)


def banners(table: pa.Table, step: str = FunnelStep.COUPON_REVEALED) -> list[tuple[str, str]]:
    """The card's warnings and verdict, most important first, as (kind, text): kinds `srm`, `too-few`,
    `winner`, `no-winner`, `peeking` (always last)."""
    rows = table.to_pylist()
    said: list[tuple[str, str]] = []
    step_name = STEP_LABELS[FunnelStep(step)].lower()
    srm_p = rows[0]["srm_p"] if rows else None
    if srm_p is not None and srm_p < SRM_ALPHA:
        counts = " / ".join(f"{row['customers']:,}" for row in rows)
        said.append(
            (
                "srm",
                f"Sample ratio mismatch (p = {srm_p:.1g}): the variants' customers ({counts}) are not in the "
                "planned shares. The assignment or the data is off (a campaign file changed mid-test, a "
                "variant failing to send): do not trust this comparison until that is explained.",
            )
        )
    short = [row for row in rows if row["customers"] < MIN_CUSTOMERS or row["conversions"] < MIN_CONVERSIONS]
    if short:
        now = ", ".join(f"{row['variant']}: {row['customers']:,} and {row['conversions']:,}" for row in rows)
        said.append(
            (
                "too-few",
                f"Too few customers to say anything yet: each variant needs about {MIN_CUSTOMERS} customers "
                f"and {MIN_CONVERSIONS} who {step_name} (now {now}).",
            )
        )
    elif not said:
        best = max(rows, key=lambda row: row["chance_to_win"] or 0.0)
        chance = best["chance_to_win"] or 0.0
        if chance >= WINNER_CHANCE:
            said.append(
                (
                    "winner",
                    f"{best['variant']} is likely the best: {percent(chance)} chance to be best on "
                    f"“{step_name}”; choosing it gives up {_points(best['expected_loss'])} on average, "
                    "counting the cases where it is not.",
                )
            )
        else:
            said.append(
                (
                    "no-winner",
                    f"No clear winner yet: the best, {best['variant']}, has {percent(chance)} chance to be "
                    f"best (a winner needs {percent(WINNER_CHANCE)}).",
                )
            )
    said.append(("peeking", PEEKING))
    return said


def experiment_html(table: pa.Table, step: str = FunnelStep.COUPON_REVEALED) -> str:
    """The card: banners, then a row per variant (customers, the step's rate and interval, lift against the
    first variant, chance to win, expected loss, and the guardrails: declined and send failures)."""
    rows = table.to_pylist()
    if not rows:
        return ""
    step_name = STEP_LABELS[FunnelStep(step)]
    notes = "".join(
        f'<div class="pb-banner" data-banner="{kind}">{html.escape(text)}</div>'
        for kind, text in banners(table, step)
    )
    mixed, forced = rows[0].get("excluded_mixed") or 0, rows[0].get("excluded_forced") or 0
    excluded = ""
    if mixed or forced:
        excluded = (
            f'<p class="pb-note" data-excluded="{mixed + forced}">Not counted: {count(mixed, "customer")} who'
            f" saw two variants, {forced:,} who came through a link that chose their variant.</p>"
        )
    head = "".join(
        f"<th>{html.escape(name)}</th>"
        for name in (
            "Variant",
            "Customers",
            step_name,
            "Lift vs " + str(rows[0]["variant"]),
            "Chance to be best",
            "Expected loss",
            "Declined",
            "Send failures",
        )
    )
    body = "".join(
        f'<tr data-variant="{html.escape(str(row["variant"]))}">'
        f"<td>{html.escape(str(row['variant']))}</td>"
        f"<td>{row['customers']:,}</td>"
        f"<td>{percent(row['rate'])} ({percent(row['rate_low'])}–{percent(row['rate_high'])})</td>"
        f"<td>{_lift(row, index)}</td>"
        f"<td>{percent(row['chance_to_win'])}</td>"
        f"<td>{_points(row['expected_loss'])}</td>"
        f"<td>{_share(row.get('declined'), row['customers'])}</td>"
        f"<td>{_share(row.get('send_failed'), row['customers'])}</td>"
        "</tr>"
        for index, row in enumerate(rows)
    )
    return (
        f'<div class="pb-experiment"><h3>Experiment: {html.escape(step_name.lower())} by variant</h3>{notes}'
        f'<div class="pb-table"><table><tr>{head}</tr>{body}</table></div>{excluded}'
        '<p class="pb-note">Rates with their 95 % intervals; lift with its 95 % interval; chance to be best '
        "and expected loss (the rate given up, on average, if this variant is not the best) from the "
        "posterior of each rate.</p></div>"
    )


def _points(value: float | None) -> str:
    """A difference of rates in percentage points."""
    if value is None or math.isnan(value):
        return "–"
    return f"{value * 100:.2f} pp"


def _lift(row: dict[str, Any], index: int) -> str:
    if index == 0:
        return "reference"
    if row["lift"] is None:
        return "–"

    def signed(value: float | None) -> str:
        return "?" if value is None else f"{value * 100:+.0f} %"

    return f"{signed(row['lift'])} ({signed(row['lift_low'])} to {signed(row['lift_high'])})"


def _share(part: int | None, whole: int) -> str:
    if part is None:
        return "–"
    return f"{part:,} ({percent(part / whole)})" if whole else f"{part:,}"
