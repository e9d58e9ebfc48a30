"""The business's dashboard: widgets over the analytics API, shown by Voilà from notebooks/dashboard.ipynb.

KPI tiles, funnel, timeline, cohort heatmap, buttons and a per-campaign comparison; filters for campaign and
dates; a refresh button; CSV downloads of the tables shown. Charts are SVG drawn on the server by vl-convert,
so the page needs no internet. Only the analytics API is used: no SQL of its own.
"""

from __future__ import annotations

import base64
import html
import io
import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from analytics import charts
from analytics.query import Events
from analytics.report import kpis

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "dashboard.ipynb"
PRESETS = ("Last 7 days", "Last 30 days", "All time", "Custom")

STYLE = """
<style>
.pb-tiles { display: flex; gap: 12px; flex-wrap: wrap; margin: 4px 0 8px; }
.pb-tile { background: #f0f2f5; border-radius: 12px; padding: 12px 16px; min-width: 150px; }
.pb-tile .pb-value { font-size: 28px; font-weight: 700; color: #1c1e21; }
.pb-tile .pb-name { color: #65676b; font-size: 13px; }
.pb-empty { padding: 32px; border-radius: 12px; background: #f7f8fa; color: #4b4f56; font-size: 15px; }
.pb-downloads a { margin-right: 14px; }
.pb-table table { border-collapse: collapse; font-size: 13px; }
.pb-table td, .pb-table th { border-bottom: 1px solid #e4e6eb; padding: 3px 10px; text-align: left; }
</style>
"""


def warm_up() -> None:
    """Start the chart renderer (its first chart is slow) before anyone is waiting for a page."""
    import altair as alt

    charts.to_svg(alt.Chart(alt.Data(values=[{"x": 1}])).mark_point().encode(x="x:Q"))


def date_range(
    preset: str, custom_start: date | None, custom_end: date | None, today: date | None = None
) -> tuple[date | None, date | None]:
    """The inclusive UTC days a preset means."""
    today = today or datetime.now(UTC).date()
    if preset == "Last 7 days":
        return today - timedelta(days=6), today
    if preset == "Last 30 days":
        return today - timedelta(days=29), today
    if preset == "Custom":
        return custom_start, custom_end
    return None, None


def kpi_tiles_html(figures: dict) -> str:
    tiles = [
        ("reached", "Customers reached", f"{figures['reached']:,}"),
        ("responded", "Responded", f"{figures['responded_pct']}%"),
        ("saw", "Saw the coupon", f"{figures['saw_coupon_pct']}%"),
        ("revealed", "Revealed the code", f"{figures['revealed_pct']}%"),
        ("declined", "Declined", f"{figures['declined_pct']}%"),
    ]
    return (
        '<div class="pb-tiles">'
        + "".join(
            f'<div class="pb-tile" data-kpi="{key}"><div class="pb-value">{value}</div>'
            f'<div class="pb-name">{name}</div></div>'
            for key, name, value in tiles
        )
        + "</div>"
    )


def csv_link(name: str, table: pa.Table) -> str:
    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<a download="{name}.csv" href="data:text/csv;base64,{encoded}">{html.escape(name)}.csv</a>'


def table_html(table: pa.Table, limit: int = 50) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.column_names)
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row.values())
        + "</tr>"
        for row in table.slice(0, limit).to_pylist()
    )
    return f'<div class="pb-table"><table><tr>{head}</tr>{rows}</table></div>'


class Dashboard:
    """The widgets; `Dashboard(events).widget` is what the notebook shows."""

    def __init__(self, events: Events) -> None:
        import ipywidgets as w

        self.events = events
        self.campaign = w.Dropdown(description="Campaign", options=[("All campaigns", None)])
        self.preset = w.ToggleButtons(options=PRESETS, value="Last 30 days", description="Dates")
        self.start = w.DatePicker(description="From", disabled=True)
        self.end = w.DatePicker(description="To", disabled=True)
        self.refresh_button = w.Button(description="Refresh", icon="refresh", button_style="primary")
        self.status = w.HTML()
        self.kpis = w.HTML()
        self.funnel = w.HTML()
        self.timeline = w.HTML()
        self.cohorts = w.HTML()
        self.buttons = w.HTML()
        self.comparison = w.HTML()
        self.downloads = w.HTML()
        self.empty = w.HTML()
        self.body = w.VBox(
            [
                self.kpis,
                w.HBox([self.funnel, self.buttons], layout=w.Layout(flex_flow="row wrap")),
                self.timeline,
                w.HBox([self.cohorts, self.comparison], layout=w.Layout(flex_flow="row wrap")),
                self.downloads,
            ]
        )
        filters = w.HBox(
            [self.campaign, self.preset, self.start, self.end, self.refresh_button],
            layout=w.Layout(flex_flow="row wrap", align_items="center"),
        )
        self.widget = w.VBox(
            [w.HTML(STYLE + "<h2>Promotion dashboard</h2>"), filters, self.status, self.empty, self.body]
        )

        self.preset.observe(self._preset_changed, names="value")
        self._quiet = False
        for control in (self.campaign, self.start, self.end):
            control.observe(lambda _change: self._quiet or self.update(), names="value")
        self.refresh_button.on_click(lambda _button: self.refresh())
        self._list_campaigns()
        self.update()

    def _preset_changed(self, change) -> None:
        custom = change["new"] == "Custom"
        self.start.disabled = self.end.disabled = not custom
        if custom and self.start.value is None:
            self._quiet = True
            try:
                self.start.value, self.end.value = date_range("Last 30 days", None, None)
            finally:
                self._quiet = False
        self.update()

    def refresh(self) -> None:
        """Read the store again (new files, a new campaign), then redraw once."""
        self.events.refresh()
        self._list_campaigns()
        self.update()

    def _list_campaigns(self) -> None:
        campaigns = self.events.campaigns().column("campaign_id").to_pylist()
        current = self.campaign.value
        self._quiet = True
        try:
            self.campaign.options = [("All campaigns", None), *((c, c) for c in campaigns)]
            self.campaign.value = current if current in campaigns else None
        finally:
            self._quiet = False

    def filters(self) -> dict:
        start, end = date_range(self.preset.value, self.start.value, self.end.value)
        if start is not None and end is not None and start > end:
            start, end = end, start
        return {"campaign": self.campaign.value, "start": start, "end": end}

    def update(self) -> None:
        """Compute everything first, then show it all at once: tiles and charts never disagree on screen."""
        chosen = self.filters()
        funnel = self.events.funnel(**chosen)
        figures = kpis(funnel)
        scope = "all time" if chosen["start"] is None else f"{chosen['start']} to {chosen['end']} (UTC)"
        status = (
            f"<span data-scope>Showing {html.escape(chosen['campaign'] or 'all campaigns')}, "
            f"{scope}. Updated {datetime.now(UTC):%H:%M:%S} UTC.</span>"
        )
        if figures["reached"] == 0:
            self.kpis.value, self.status.value = kpi_tiles_html(figures), status
            self.empty.value = (
                '<div class="pb-empty"><b>No customers reached yet in this selection.</b><br>Once customers '
                "press Get Started (try the Messenger simulator in local mode), their journeys show up here; "
                "press Refresh, or widen the dates.</div>"
            )
            self.body.layout.display = "none"
            return
        timeline = self.events.timeline(**chosen)
        cohorts = self.events.cohorts(period="week", campaign=chosen["campaign"])
        buttons = self.events.buttons(**chosen)
        comparison = self._comparison(chosen)
        tables = {
            "funnel": funnel,
            "timeline": timeline,
            "cohorts": cohorts,
            "buttons": buttons,
            "campaigns": comparison,
        }
        shown = {
            self.funnel: charts.to_svg(charts.funnel_chart(funnel)),
            self.timeline: charts.to_svg(charts.timeline_chart(timeline)),
            self.cohorts: charts.to_svg(charts.cohort_heatmap(cohorts)) if cohorts.num_rows else "",
            self.buttons: charts.to_svg(charts.buttons_chart(buttons)) if buttons.num_rows else "",
            self.comparison: "<h3>Campaigns</h3>" + table_html(comparison),
            self.downloads: '<div class="pb-downloads">Download: '
            + " ".join(csv_link(name, table) for name, table in tables.items())
            + "</div>",
            self.status: status,
            self.kpis: kpi_tiles_html(figures),  # last: tests and people read the tiles as "done"
        }
        self.empty.value = ""
        self.body.layout.display = None
        for widget, value in shown.items():
            widget.value = value

    def _comparison(self, chosen: dict) -> pa.Table:
        """Reached and the share revealing, per campaign, for the chosen dates."""
        rows = []
        for campaign in self.events.campaigns().column("campaign_id").to_pylist():
            if chosen["campaign"] not in (None, campaign):
                continue
            figures = kpis(self.events.funnel(campaign=campaign, start=chosen["start"], end=chosen["end"]))
            rows.append({"campaign": campaign, **figures})
        return pa.Table.from_pylist(rows) if rows else pa.table({"campaign": pa.array([], pa.string())})


def serve(data: str | None = None, host: str = "127.0.0.1", port: int = 8866) -> int:
    """`python -m analytics dashboard`: Voilà on `host:port`, protected by PROMOBOT_DASHBOARD_TOKEN if set."""
    source = data or os.environ.get("PROMOBOT_DATA", "data")
    if not source.startswith("s3://"):
        source = str(Path(source).resolve())  # the notebook's kernel runs in notebooks/
    # Our Voilà template (the lab one, minus its CDN stylesheets) lives in analytics/share.
    jupyter_path = os.pathsep.join(
        filter(None, [str(Path(__file__).with_name("share")), os.environ.get("JUPYTER_PATH")])
    )
    env = {**os.environ, "PROMOBOT_DATA": source, "JUPYTER_PATH": jupyter_path}
    token = os.environ.get("PROMOBOT_DASHBOARD_TOKEN", "")
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(
            "The dashboard is exposed beyond this machine: set PROMOBOT_DASHBOARD_TOKEN to protect it.",
            file=sys.stderr,
        )
    command = [
        sys.executable,
        "-m",
        "voila",
        str(NOTEBOOK),
        "--no-browser",
        f"--port={port}",
        f"--Voila.ip={host}",
        "--strip_sources=True",
        "--template=promobot",
        # A kernel that has already run the notebook waits for the next visitor: the page opens at once.
        "--preheat_kernel=True",
        "--pool_size=1",
        "--theme=light",
        f"--token={token}",
        # Each open page holds a kernel: stop the ones nobody looks at.
        "--MappingKernelManager.cull_idle_timeout=900",
        "--MappingKernelManager.cull_interval=60",
    ]
    # Become Voilà: signals (Ctrl-C, SIGTERM from a supervisor) reach the server itself.
    os.execve(sys.executable, command, env)  # noqa: S606 - a fixed argv, no shell involved
    return 0  # not reached
