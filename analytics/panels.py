"""The dashboard's pieces as HTML: KPI tiles, code pool warnings, tables, the funnel by source, downloads."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from analytics.pools import PoolLevel
from analytics.report import kpi_base, kpi_texts
from bot.audience import REASONS, AudienceCounts, BroadcastResult
from bot.facts import KPIS
from bot.health import Check, Status, worst
from bot.words import count


def percent(share: float | None) -> str:
    """A share (0 to 1) as a percentage with one decimal; "–" when there is none."""
    if share is None or math.isnan(share):
        return "–"
    return f"{share * 100:.1f} %"


def kpi_tiles_html(figures: dict[str, float | int], attribute: str = "data-kpi") -> str:
    """The KPI tiles (analytics.report.kpis' figures), each marked with `attribute`."""
    tiles = [(kpi.key, kpi.label, text, kpi_base(kpi)) for kpi, text in kpi_texts(figures)]
    return (
        '<div class="pb-tiles">'
        + "".join(
            f'<div class="pb-tile" {attribute}="{key}"><div class="pb-value">{value}</div>'
            f'<div class="pb-name">{name}</div>'
            + (f'<div class="pb-base">{base}</div>' if base else "")
            + "</div>"
            for key, name, value, base in tiles
        )
        + "</div>"
    )


def pools_html(levels: list[PoolLevel], empty: pa.Table, problem: str | None = None) -> str:
    """A line per campaign with single-use codes (how many are left; a warning when few or none are), and
    the reveals that found its codes all handed out (`empty`: Events.pool_empty)."""
    refused = {row["campaign_id"]: row for row in empty.to_pylist()}
    lines = []
    for level in levels:
        state = "gone" if level.gone else "low" if level.low else "ok"
        text = f"<b>{html.escape(level.campaign_id)}</b>: {level.free:,} of {level.total:,} codes left"
        if state != "ok":
            text = ("No codes left" if level.gone else "Codes running low") + f" — {text}. Add codes to the "
            text += "campaign's codes file and restart the bot"
        lines.append((level.campaign_id, state, text))
    for campaign, row in refused.items():
        known = next((i for i, (c, _, _) in enumerate(lines) if c == campaign), None)
        told = (
            f"{count(row['reveals'], 'reveal')} found no code left"
            f" ({count(row['customers'], 'customer')} got the “all gone” message),"
            f" the first at {row['first_seen']:%Y-%m-%d %H:%M} UTC"
        )
        if known is None:
            lines.append((campaign, "gone", f"<b>{html.escape(campaign)}</b>: {told}"))
        else:
            campaign, state, text = lines[known]
            lines[known] = (campaign, state, f"{text}. {told}")
    notes = "".join(
        f'<div class="pb-pool" data-pool="{html.escape(campaign)}" data-pool-state="{state}">{text}.</div>'
        for campaign, state, text in lines
    )
    if problem:
        notes += f'<div class="pb-pool" data-pool-state="unknown">{html.escape(problem)}</div>'
    return f'<div class="pb-pools">{notes}</div>' if notes else ""


def csv_link(name: str, table: pa.Table) -> str:
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<a download="{name}.csv" href="data:text/csv;base64,{encoded}">{html.escape(name)}.csv</a>'


def campaigns_html(comparison: pa.Table) -> str:
    """Each campaign's headline figures (a row of analytics.report.kpis' figures per campaign), named and
    written as the tiles are."""
    head = "<th>Campaign</th>" + "".join(f"<th>{html.escape(kpi.label)}</th>" for kpi in KPIS)
    rows = "".join(
        f'<tr data-campaign="{html.escape(row["campaign"])}"><td>{html.escape(row["campaign"])}</td>'
        + "".join(f"<td>{text}</td>" for _, text in kpi_texts(row))
        + "</tr>"
        for row in comparison.to_pylist()
    )
    return f'<div class="pb-table"><table><tr>{head}</tr>{rows}</table></div>'


def sources_html(sources: pa.Table) -> str:
    """The funnel by source (Events.sources) as a table: customers reached from each place, and the shares
    of them who responded and revealed the code, and of those who used it at the till."""

    def share(part: int, whole: int) -> str:
        return percent(part / whole if whole else None)

    head = "".join(
        f"<th>{title}</th>"
        for title in ("Source", "Reached", "Responded", "Revealed the code", "Used at the till")
    )

    def name(row: dict[str, Any]) -> str:
        return html.escape(row["source"] + (f" ({row['title']})" if row.get("title") else ""))

    rows = "".join(
        f'<tr data-source="{html.escape(row["source"])}"><td>{name(row)}</td>'
        f"<td>{row['reached']:,}</td><td>{share(row['responded'], row['reached'])}</td>"
        f"<td>{share(row['coupon_revealed'], row['reached'])}</td>"
        f"<td>{row['redeemed']:,} ({share(row['redeemed'], row['coupon_revealed'])})</td></tr>"
        for row in sources.to_pylist()
    )
    return f'<div class="pb-table pb-sources"><table><tr>{head}</tr>{rows}</table></div>'


def health_html(checks: list[Check]) -> str:
    """The bot's health in one line, coloured by the worst check; what to do when one is not ok."""
    if not checks:
        return ""
    state = worst(checks)
    parts = " · ".join(html.escape(f"{check.name}: {check.message}") for check in checks)
    fixes = "".join(
        f"<br>{html.escape(check.name)}: {html.escape(check.fix)}"
        for check in checks
        if check.status is not Status.OK and check.fix
    )
    return f'<div class="pb-health" data-health="{state}"><b>Bot</b> {parts}{fixes}</div>'


def reach_html(audiences: dict[str, AudienceCounts], broadcasts: list[BroadcastResult]) -> str:
    """Who each campaign may be sent now (`python -m bot audience`), and how its broadcasts went."""
    if not audiences and not broadcasts:
        return ""
    lines = []
    for campaign, counts in audiences.items():
        others = ", ".join(
            f"{n:,} {reason.replace('_', ' ')}" for reason in REASONS if (n := counts.skipped.get(reason, 0))
        )
        windows = "their Messenger window is" if counts.eligible == 1 else "their Messenger windows are"
        lines.append(
            f'<div class="pb-pool" data-audience="{html.escape(campaign)}"><b>{html.escape(campaign)}</b>: '
            + f"{count(counts.eligible, 'customer')} may be sent it now"
            + f" ({windows} open)"
            + (f"; not the others: {html.escape(others)}" if others else "")
            + ".</div>"
        )
    rows = "".join(
        f'<tr data-broadcast="{b.broadcast_id}"><td>{b.broadcast_id}</td>'
        f"<td>{html.escape(b.campaign_id)}</td>"
        f"<td>{b.started_at:%Y-%m-%d %H:%M}</td><td>{html.escape(str(b.state))}</td><td>{b.sent:,}</td>"
        f"<td>{html.escape(', '.join(f'{n:,} {r}' for r, n in b.skipped.items() if n) or '–')}</td>"
        f"<td>{b.pending:,}</td></tr>"
        for b in broadcasts
    )
    table = ""
    if broadcasts:
        head = "".join(
            f"<th>{title}</th>"
            for title in ("Broadcast", "Campaign", "Started (UTC)", "State", "Sent", "Skipped", "Pending")
        )
        table = f'<div class="pb-table"><table><tr>{head}</tr>{rows}</table></div>'
    return f'<div class="pb-reach"><h3>Audience and broadcasts</h3>{"".join(lines)}{table}</div>'
