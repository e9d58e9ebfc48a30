"""A self-contained HTML report (KPIs, charts as inline SVG, tables) and CSV exports of every metric table."""

from __future__ import annotations

import contextlib
import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from analytics import charts
from analytics.filters import AnalyticsError, Filters
from analytics.metrics import Metrics
from bot.facts import KPIS, STEP_LABELS, FunnelStep, Kpi


def kpis(funnel: pa.Table) -> dict[str, float | int]:
    """Each headline figure of bot.facts.KPIS by its key: `reached` a count, the others % of the customers
    at the step each is a share of (0.0 when there are none)."""
    counts = dict(zip(funnel.column("step").to_pylist(), funnel.column("customers").to_pylist(), strict=True))

    def pct(kpi: Kpi) -> float:
        whole = counts.get(kpi.share_of, 0)
        return round(100.0 * counts.get(kpi.step, 0) / whole, 1) if whole else 0.0

    return {
        kpi.key: counts.get(FunnelStep.REACHED, 0) if kpi.step is FunnelStep.REACHED else pct(kpi)
        for kpi in KPIS
    }


def kpi_base(kpi: Kpi) -> str:
    """What a KPI's percentage is a share of, when not of the customers reached ("" then), in words."""
    if kpi.share_of is FunnelStep.REACHED:
        return ""
    return f"of those who {STEP_LABELS[kpi.share_of].lower()}"


def kpi_texts(figures: dict[str, float | int]) -> list[tuple[Kpi, str]]:
    """Each KPI with its figure as shown: a count with thousands separators, or a percentage."""
    return [
        (kpi, f"{figures[kpi.key]:,}" if kpi.step is FunnelStep.REACHED else f"{figures[kpi.key]}%")
        for kpi in KPIS
    ]


def metric_tables(events: Metrics, filters: Filters | None = None, **keywords: Any) -> dict[str, pa.Table]:
    """Every metric table of one question, by name: funnel, timeline, cohorts, buttons, sources, campaigns,
    and the experiment when the question has one (its campaign's variants, or the only campaign with some)."""
    question = Filters.of(filters, **keywords)
    tables = {
        "funnel": events.funnel(question),
        "timeline": events.timeline(question),
        "cohorts": events.cohorts("week", question),
        "buttons": events.buttons(question),
        "sources": events.sources(question),
        "campaigns": events.campaigns(),
    }
    with contextlib.suppress(AnalyticsError):  # no variants to compare in this question
        tables["experiment"] = events.experiment(question)
    return tables


def write_csv(tables: dict[str, pa.Table], directory: Path) -> list[Path]:
    """Each table as `<name>.csv` in `directory` (made if missing); returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in tables.items():
        path = directory / f"{name}.csv"
        pacsv.write_csv(table, path)
        written.append(path)
    return written


def _table_html(table: pa.Table) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in table.column_names)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row.values())
        + "</tr>"
        for row in table.to_pylist()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_report(events: Metrics, **filters: Any) -> str:
    """One self-contained HTML page of every metric of the question the keywords name (Filters' fields)."""
    tables = metric_tables(events, **filters)
    figures = kpis(tables["funnel"])
    tiles = [(kpi.label, text, kpi_base(kpi)) for kpi, text in kpi_texts(figures)]
    chart_svgs = [
        charts.to_svg(charts.funnel_chart(tables["funnel"])),
        charts.to_svg(charts.timeline_chart(tables["timeline"])),
        charts.to_svg(charts.cohort_heatmap(tables["cohorts"])) if tables["cohorts"].num_rows else "",
        charts.to_svg(charts.buttons_chart(tables["buttons"])) if tables["buttons"].num_rows else "",
    ]
    scope = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None) or "all campaigns, all dates"
    sections = "".join(
        f"<h2>{html.escape(name.title())}</h2>{_table_html(table)}" for name, table in tables.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>promobot report</title>
<style>
body {{ font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 32px;
       color: #1c1e21; }}
.tiles {{ display: flex; gap: 12px; flex-wrap: wrap; margin: 16px 0 24px; }}
.tile {{ background: #f0f2f5; border-radius: 12px; padding: 14px 18px; min-width: 150px; }}
.tile .value {{ font-size: 26px; font-weight: 700; }}
.tile .name {{ color: #65676b; }}
.tile .base {{ color: #65676b; font-size: 12px; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 24px; }}
table {{ border-collapse: collapse; margin-bottom: 16px; }}
td, th {{ border-bottom: 1px solid #e4e6eb; padding: 4px 10px; text-align: left; }}
</style></head><body>
<h1>promobot report</h1>
<p>{html.escape(scope)} · generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC</p>
<div class="tiles">{
        "".join(
            f'<div class="tile"><div class="value">{v}</div><div class="name">{n}</div>'
            + (f'<div class="base">{b}</div>' if b else "")
            + "</div>"
            for n, v, b in tiles
        )
    }</div>
<div class="charts">{"".join(chart_svgs)}</div>
{sections}
</body></html>
"""
