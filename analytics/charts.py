"""Altair charts of the metrics' tables, and their output as SVG, PNG or HTML that need no internet.

save(funnel_chart(events.funnel()), "funnel.svg")
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import altair as alt
import pyarrow as pa
import vl_convert

from analytics.definitions import PERIODS
from bot.facts import STEP_LABELS as STEP_NAMES
from bot.facts import STEPS, EventName, FunnelStep

# Every chart function returns one of these; the output functions take either.
Chart = alt.Chart | alt.LayerChart

# One colour per step, in every chart.
STEP_COLORS: dict[str, str] = {
    FunnelStep.REACHED: "#4c78a8",
    FunnelStep.RESPONDED: "#72b7b2",
    FunnelStep.COUPON_REQUESTED: "#54a24b",
    FunnelStep.COUPON_SEEN: "#eeca3b",
    FunnelStep.COUPON_REVEALED: "#f58518",
    FunnelStep.REDEEMED: "#e45756",
    FunnelStep.DECLINED: "#b279a2",
    EventName.CONVERSATION_STARTED: "#9d755d",
}
# Steps, and the event a click was stored as, by their names for people.
STEP_LABELS: dict[str, str] = {
    **{str(step): label for step, label in STEP_NAMES.items()},
    EventName.CONVERSATION_STARTED: "Get Started",
}
_ORDER = [*STEPS, EventName.CONVERSATION_STARTED]
# vl-convert lays labels out with the widths it measures; a browser then draws them in its own font. Arial,
# Liberation Sans and Helvetica have the same widths, and every system has one of them: labels stay where
# they were laid out. With `system-ui` (DejaVu Sans on Debian, wider) they ran into each other.
_FONT = "Arial, Liberation Sans, Helvetica, sans-serif"
_DAYS = alt.Axis(format="%b %d")


def _step_color(field: str = "step", *, legend: bool = True, steps: Iterable[str] | None = None) -> alt.Color:
    """Each step's colour; the legend names `steps` (those the chart draws) only, in the funnel's order."""
    shown = set(_ORDER if steps is None else steps)
    domain = [s for s in _ORDER if s in STEP_COLORS and s in shown]
    return alt.Color(
        f"{field}:N",
        scale=alt.Scale(domain=domain, range=[STEP_COLORS[s] for s in domain]),
        legend=alt.Legend(title=None, labelExpr=_label_expr(), orient="bottom") if legend else None,
    )


def _label_expr() -> str:
    cases = " : ".join(f"datum.label == '{step}' ? '{label}'" for step, label in STEP_LABELS.items())
    return f"{cases} : datum.label"


def _records(table: pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if hasattr(value, "isoformat"):
                row[key] = value.isoformat()
        if "step" in row:
            row["label"] = STEP_LABELS.get(row["step"], row["step"])
    return rows


def _style(chart: Chart, title: str, width: int = 560) -> Chart:
    styled: Chart = (
        # Room for long step names on the left and the counts printed past the longest bar.
        chart.properties(title=title, width=width, padding={"left": 12, "right": 60, "top": 8, "bottom": 8})
        .configure(font=_FONT)
        .configure_title(fontSize=15, anchor="start")
        .configure_axis(labelFontSize=12, titleFontSize=12, grid=False)
        # Fewer labels rather than labels that run into each other.
        .configure_axisQuantitative(labelOverlap=True, labelSeparation=8)
        .configure_axisTemporal(labelOverlap=True, labelSeparation=12)
        .configure_view(stroke=None)
    )
    return styled


def funnel_chart(funnel: pa.Table) -> Chart:
    """Customers at each step, with the share of those reached."""
    rows = _records(funnel)
    for row in rows:
        pct = row.get("pct_of_reached")
        row["text"] = f"{row['customers']:,}" + (f" ({pct:.0f}%)" if pct is not None else "")
    base = alt.Chart(alt.InlineData(values=rows)).encode(
        y=alt.Y("label:N", sort=[STEP_LABELS[s] for s in STEPS], title=None, axis=alt.Axis(labelLimit=220)),
        x=alt.X("customers:Q", title="Customers"),
    )
    bars = base.mark_bar(cornerRadiusEnd=3).encode(
        color=_step_color(legend=False),
        tooltip=[
            alt.Tooltip("label:N", title="Step"),
            "customers:Q",
            "pct_of_reached:Q",
            "pct_of_previous:Q",
        ],
    )
    text = base.mark_text(align="left", dx=4, fontSize=12).encode(text="text:N")
    return _style(alt.LayerChart(layer=[bars, text]), "Funnel")


def timeline_chart(timeline: pa.Table) -> Chart:
    """Each step per day."""
    rows = _records(timeline)
    chart = (
        alt.Chart(alt.InlineData(values=rows))
        .mark_line(point=True)
        .encode(
            x=alt.X("day:T", title=None, axis=_DAYS),
            y=alt.Y("customers:Q", title="Customers"),
            color=_step_color(steps={row["step"] for row in rows}),
            tooltip=["day:T", alt.Tooltip("label:N", title="Step"), "customers:Q"],
        )
    )
    return _style(chart, "By day")


def cohort_heatmap(cohorts: pa.Table, step: str = FunnelStep.COUPON_REVEALED, period: str = "week") -> Chart:
    """Share of each cohort who reached `step` (the cohorts' step: revealed the code by default), `period`
    (the cohorts' own: day, week or month) by period; incomplete periods are faded."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}: one of {', '.join(PERIODS)}")
    rows = _records(cohorts)
    for row in rows:
        row["text"] = f"{row['share'] * 100:.0f}%"
    base = alt.Chart(alt.InlineData(values=rows)).encode(
        x=alt.X("period:O", title=f"{period.title()}s after first reach", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("cohort:O", title=f"{period.title()} of first reach", sort="ascending"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "share:Q",
            title=STEP_LABELS[step],
            scale=alt.Scale(scheme="oranges", domain=[0, 1]),
            legend=alt.Legend(format="%", orient="bottom"),
        ),
        opacity=alt.condition("datum.complete", alt.value(1.0), alt.value(0.45)),
        tooltip=["cohort:O", "period:O", "customers:Q", alt.Tooltip("share:Q", format=".1%"), "complete:N"],
    )
    text = base.mark_text(fontSize=11).encode(text="text:N")
    title = f"Cohorts: {STEP_LABELS[step].lower()}"
    # Rows tall enough for the cohorts' axis title to stand beside them, not above the chart; cells wide
    # enough for their share.
    height = max(24 * len({row["cohort"] for row in rows}), 160)
    width = max(36 * len({row["period"] for row in rows}), 420)
    return _style(alt.LayerChart(layer=[cells, text]).properties(height=height), title, width=width)


def buttons_chart(buttons: pa.Table) -> Chart:
    """Clicks per button."""
    rows = _records(buttons)
    for row in rows:
        row["label"] = STEP_LABELS.get(row["step"], row["button"])
    chart = (
        alt.Chart(alt.InlineData(values=rows))
        .mark_bar(cornerRadiusEnd=3)
        .encode(
            y=alt.Y("label:N", title=None, sort="-x", axis=alt.Axis(labelLimit=220)),
            # Buttons of several campaigns that stand for the same step make one bar.
            x=alt.X("sum(clicks):Q", title="Clicks"),
            color=_step_color(legend=False),
            tooltip=[alt.Tooltip("label:N", title="Button"), alt.Tooltip("sum(clicks):Q", title="Clicks")],
        )
    )
    return _style(chart, "Buttons")


# The source chart's steps: where each place's customers got to.
SOURCE_STEPS = (FunnelStep.REACHED, FunnelStep.COUPON_REVEALED, FunnelStep.REDEEMED)


def sources_chart(sources: pa.Table) -> Chart:
    """Customers per source (Events.sources): reached, revealed and used at the till, side by side."""
    rows = []
    for row in sources.to_pylist():
        name = row["source"] if not row.get("title") else f"{row['source']} ({row['title']})"
        for step in SOURCE_STEPS:
            rows.append(
                {"source": name, "step": str(step), "label": STEP_LABELS[step], "customers": row[step]}
            )
    chart = (
        alt.Chart(alt.InlineData(values=rows))
        .mark_bar(cornerRadiusEnd=3)
        .encode(
            y=alt.Y("source:N", title=None, sort=None, axis=alt.Axis(labelLimit=220)),
            yOffset=alt.YOffset("step:N", sort=[str(s) for s in SOURCE_STEPS]),
            x=alt.X("customers:Q", title="Customers"),
            color=_step_color(steps=SOURCE_STEPS),
            tooltip=[
                alt.Tooltip("source:N", title="Source"),
                alt.Tooltip("label:N", title="Step"),
                "customers:Q",
            ],
        )
    )
    return _style(chart, "By source")


def experiment_chart(timeline: pa.Table, step: str = FunnelStep.COUPON_REVEALED) -> Chart:
    """Each variant's cumulative rate of `step` by entry day (Events.experiment_timeline), with its 95 %
    interval as a band: rates that settle, and intervals that narrow, as customers come."""
    rows = _records(timeline)
    base = alt.Chart(alt.InlineData(values=rows)).encode(x=alt.X("day:T", title=None, axis=_DAYS))
    band = base.mark_area(opacity=0.18).encode(
        y="rate_low:Q", y2="rate_high:Q", color=alt.Color("variant:N", legend=None)
    )
    line = base.mark_line(point=True).encode(
        color=alt.Color("variant:N", title="Variant", legend=alt.Legend(orient="bottom")),
        y=alt.Y("rate:Q", title=STEP_LABELS[step] + " (cumulative)", axis=alt.Axis(format="%")),
        tooltip=[
            "day:T",
            "variant:N",
            "customers:Q",
            "conversions:Q",
            alt.Tooltip("rate:Q", format=".1%"),
            alt.Tooltip("rate_low:Q", format=".1%"),
            alt.Tooltip("rate_high:Q", format=".1%"),
        ],
    )
    return _style(alt.LayerChart(layer=[band, line]), f"{STEP_LABELS[step]} by variant, cumulative")


# -- output, all offline -----------------------------------------------------------------------------------


def to_svg(chart: Chart) -> str:
    """The chart as SVG text, drawn by vl-convert."""
    return vl_convert.vegalite_to_svg(chart.to_dict())


def to_png(chart: Chart, scale: float = 2.0) -> bytes:
    """The chart as a PNG image, drawn by vl-convert at `scale`."""
    return vl_convert.vegalite_to_png(chart.to_dict(), scale=scale)


def to_html(chart: Chart) -> str:
    """A whole HTML page with Vega's JavaScript inlined: interactive, and no CDN."""
    return chart.to_html(inline=True)


def save(chart: Chart, path: str | Path) -> Path:
    """Write a chart as .svg, .png or .html, by the file's suffix."""
    path = Path(path)
    match path.suffix.lower():
        case ".svg":
            path.write_text(to_svg(chart), encoding="utf-8")
        case ".png":
            path.write_bytes(to_png(chart))
        case ".html":
            path.write_text(to_html(chart), encoding="utf-8")
        case _:
            raise ValueError(f"cannot save a chart as {path.suffix!r}: use .svg, .png or .html")
    return path


def use_offline_renderer() -> None:
    """Make notebooks show charts as SVG drawn by vl-convert, so they render with no internet."""
    alt.renderers.enable("svg")
