"""The business's dashboard: widgets over the analytics API, shown by Voilà from its notebook (package data).

KPI tiles, warnings when a campaign's single-use codes run low or ran out, funnel, timeline, cohort heatmap
(of reveals or of codes used at the till), buttons and a per-campaign comparison; filters for campaign and
dates; a refresh button; CSV downloads of the tables shown. Charts are SVG drawn on the server by vl-convert,
so the page needs no internet. Only the analytics API is used: no SQL of its own.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import os
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from analytics import charts
from analytics.pools import CodePools, PoolLevel
from analytics.query import Events
from analytics.report import kpi_texts, kpis
from bot.facts import STEP_LABELS, FunnelStep

# Package data, like the Voilà template beside it: an installed package (a wheel, the container image) has
# them too. notebooks/dashboard.ipynb links here for analysts who open it in JupyterLab.
SHARE = Path(__file__).resolve().with_name("share")
NOTEBOOK = SHARE / "dashboard.ipynb"
PRESETS = ("Last 7 days", "Last 30 days", "All time", "Custom")
COHORT_STEPS = (FunnelStep.COUPON_REVEALED, FunnelStep.REDEEMED)

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
.pb-row { display: flex; flex-flow: row wrap; }
.pb-pools { margin: 4px 0 8px; font-size: 14px; }
.pb-pool { padding: 6px 12px; margin: 4px 0; border-radius: 8px; background: #f0f2f5; color: #1c1e21; }
.pb-pool[data-pool-state="low"] { background: #fff4e5; color: #663c00; }
.pb-pool[data-pool-state="gone"] { background: #fdecea; color: #611a15; font-weight: 600; }
.pb-first-paint { padding: 0 16px; }
.pb-first-paint .pb-note { color: #65676b; font-size: 13px; }
</style>
"""
# Shown by the live widgets once they are drawn: the page's first paint (its figures, as plain HTML that the
# browser draws before any script has loaded) steps aside for them.
LIVE = "<style>.pb-first-paint { display: none; }</style>"
FIRST_PAINT = {"promobot": {"first_paint": True}}  # output metadata: the Voilà template shows it at once


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


def kpi_tiles_html(figures: dict, attribute: str = "data-kpi") -> str:
    tiles = [(kpi.key, kpi.label, text) for kpi, text in kpi_texts(figures)]
    return (
        '<div class="pb-tiles">'
        + "".join(
            f'<div class="pb-tile" {attribute}="{key}"><div class="pb-value">{value}</div>'
            f'<div class="pb-name">{name}</div></div>'
            for key, name, value in tiles
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
            f"{row['reveals']:,} reveals found no code left ({row['customers']:,} customers got the "
            f"“all gone” message), the first at {row['first_seen']:%Y-%m-%d %H:%M} UTC"
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
    """The widgets; `Dashboard(events).show()` is what the notebook displays.

    Built ahead of time by Voilà's waiting kernel (`follow()` keeps it current until the page is opened),
    it is shown at once when someone opens the page.
    """

    def __init__(self, events: Events, pools: CodePools | None = None) -> None:
        import ipywidgets as w

        self.events = events
        self.code_pools = pools if pools is not None else CodePools.of(events.source)
        self.campaign = w.Dropdown(description="Campaign", options=[("All campaigns", None)])
        self.preset = w.ToggleButtons(options=PRESETS, value="Last 30 days", description="Dates")
        self.start = w.DatePicker(description="From", disabled=True)
        self.end = w.DatePicker(description="To", disabled=True)
        self.refresh_button = w.Button(description="Refresh", icon="refresh", button_style="primary")
        self.status = w.HTML()
        self.kpis = w.HTML()
        self.pools = w.HTML()
        self.cohort_step = w.ToggleButtons(
            options=[(STEP_LABELS[step], step) for step in COHORT_STEPS], description="Cohorts"
        )
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
                self.cohort_step,
                w.HBox([self.cohorts, self.comparison], layout=w.Layout(flex_flow="row wrap")),
                self.downloads,
            ]
        )
        filters = w.HBox(
            [self.campaign, self.preset, self.start, self.end, self.refresh_button],
            layout=w.Layout(flex_flow="row wrap", align_items="center"),
        )
        self.widget = w.VBox(
            [
                w.HTML(STYLE + "<h2>Promotion dashboard</h2>"),
                filters,
                self.status,
                self.pools,  # shown whatever the dates: a pool runs out today
                self.empty,
                self.body,
                w.HTML(LIVE),  # last: the first paint stays until everything above is drawn
            ]
        )
        # Updates run one at a time (filters on the kernel's thread, a refresh behind it); `_shown` guards
        # what the widgets show, so a first paint never mixes two updates.
        self._updating = threading.RLock()
        self._shown_lock = threading.Lock()
        self._figures: dict = {}
        self._shown: dict | None = None  # the filters the widgets show figures for
        self._opened = threading.Event()
        self._quiet_in: int | None = None  # the thread setting controls itself: no update per control

        self.preset.observe(self._preset_changed, names="value")
        for control in (self.campaign, self.start, self.end, self.cohort_step):
            control.observe(lambda _change: self._quiet() or self.update(), names="value")
        self.refresh_button.on_click(lambda _button: self.refresh())
        self._list_campaigns()
        self.update()

    def _quiet(self) -> bool:
        return self._quiet_in == threading.get_ident()

    @contextlib.contextmanager
    def _setting_controls(self) -> Iterator[None]:
        self._quiet_in = threading.get_ident()
        try:
            yield
        finally:
            self._quiet_in = None

    def _preset_changed(self, change) -> None:
        custom = change["new"] == "Custom"
        self.start.disabled = self.end.disabled = not custom
        if custom and self.start.value is None:
            with self._setting_controls():
                self.start.value, self.end.value = date_range("Last 30 days", None, None)
        self.update()

    def refresh(self) -> None:
        """Read the store again (new files, a new campaign), then redraw once."""
        with self._updating:
            self.events.refresh()
            self._list_campaigns()
            self.update()

    def _list_campaigns(self) -> None:
        campaigns = self.events.campaigns().column("campaign_id").to_pylist()
        current = self.campaign.value
        with self._setting_controls():
            self.campaign.options = [("All campaigns", None), *((c, c) for c in campaigns)]
            self.campaign.value = current if current in campaigns else None

    def is_current(self) -> bool:
        """Whether the figures on show are those of the store's files and of today's date presets."""
        return not self.events.changed() and self.filters() == self._shown

    def current(self) -> Dashboard:
        """Bring the figures up to date (files written since, a new day for the presets); a dashboard that
        is current is not computed again."""
        with self._updating:
            if self.events.changed():
                self.refresh()
            elif self.filters() != self._shown:
                self.update()
        return self

    def follow(self, every_s: float = 10.0) -> None:
        """Until the page is shown, keep the figures current in the background, checking the store every
        `every_s` seconds: the waiting kernel of a busy store has today's figures ready when someone comes."""

        def run() -> None:
            while not self._opened.wait(every_s):
                self.current()

        threading.Thread(target=run, name="dashboard-follow", daemon=True).start()

    def show(self) -> None:
        """Display the dashboard: its figures as plain HTML first, which the page draws before its scripts
        have loaded (Voilà's template shows outputs marked FIRST_PAINT at once), then the live widgets,
        which take their place when they are drawn. Figures found out of date are shown as they are,
        marked so, and updated in the background: the widgets connect meanwhile."""
        from IPython.display import HTML, display

        self._opened.set()
        stale = not self.is_current()
        display(HTML(self.first_paint_html(stale=stale)), metadata=FIRST_PAINT)
        display(self.widget)
        if stale:
            threading.Thread(target=self.current, name="dashboard-refresh", daemon=True).start()

    def first_paint_html(self, stale: bool = False) -> str:
        """The figures on show, laid out as the widgets lay them out, without the controls."""
        with self._shown_lock:
            if self._figures.get("reached", 0) == 0:
                figures = self.pools.value + self.empty.value
            else:
                figures = (
                    kpi_tiles_html(self._figures, attribute="data-first-paint-kpi")
                    + self.pools.value
                    + f'<div class="pb-row">{self.funnel.value}{self.buttons.value}</div>'
                    + self.timeline.value
                    + f'<div class="pb-row">{self.cohorts.value}{self.comparison.value}</div>'
                )
            status = self.status.value
        note = "Newer events are being read; the figures update in a moment." if stale else ""
        return (
            f'<div class="pb-first-paint">{STYLE}<h2>Promotion dashboard</h2>'
            f'<p class="pb-note">{status} {note} The filters appear in a moment.</p>{figures}</div>'
        )

    def filters(self) -> dict:
        start, end = date_range(self.preset.value, self.start.value, self.end.value)
        if start is not None and end is not None and start > end:
            start, end = end, start
        return {"campaign": self.campaign.value, "start": start, "end": end}

    def update(self) -> None:
        """Compute everything first, then show it all at once: tiles and charts never disagree on screen."""
        with self._updating:
            shown, figures, chosen = self._compute()
            with self._shown_lock:
                if figures["reached"] == 0:
                    self.body.layout.display = "none"
                else:
                    self.empty.value = ""
                    self.body.layout.display = None
                for widget, value in shown.items():
                    widget.value = value
                self._figures, self._shown = figures, chosen

    def _compute(self) -> tuple[dict, dict, dict]:
        """New values for the widgets, the KPI figures and the filters they are for."""
        chosen = self.filters()
        funnel = self.events.funnel(**chosen)
        figures = kpis(funnel)
        scope = "all time" if chosen["start"] is None else f"{chosen['start']} to {chosen['end']} (UTC)"
        status = (
            f"<span data-scope>Showing {html.escape(chosen['campaign'] or 'all campaigns')}, "
            f"{scope}. Updated {datetime.now(UTC):%H:%M:%S} UTC.</span>"
        )
        pools = self._pools(chosen)
        if figures["reached"] == 0:
            empty = (
                '<div class="pb-empty"><b>No customers reached yet in this selection.</b><br>Once customers '
                "press Get Started (try the Messenger simulator in local mode), their journeys show up here; "
                "press Refresh, or widen the dates.</div>"
            )
            return (
                {
                    self.empty: empty,
                    self.status: status,
                    self.pools: pools,
                    self.kpis: kpi_tiles_html(figures),
                },
                figures,
                chosen,
            )
        timeline = self.events.timeline(**chosen)
        cohort_step = self.cohort_step.value
        cohorts = self.events.cohorts("week", step=cohort_step, **chosen)
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
            self.cohorts: charts.to_svg(charts.cohort_heatmap(cohorts, cohort_step))
            if cohorts.num_rows
            else "",
            self.buttons: charts.to_svg(charts.buttons_chart(buttons)) if buttons.num_rows else "",
            self.comparison: "<h3>Campaigns</h3>" + table_html(comparison),
            self.downloads: '<div class="pb-downloads">Download: '
            + " ".join(csv_link(name, table) for name, table in tables.items())
            + "</div>",
            self.status: status,
            self.pools: pools,
            self.kpis: kpi_tiles_html(figures),  # last: tests and people read the tiles as "done"
        }
        return shown, figures, chosen

    def _pools(self, chosen: dict) -> str:
        """The chosen campaigns' codes left (from the bot's store) and reveals refused for want of one."""
        campaigns = self.events.campaigns().column("campaign_id").to_pylist()
        chosen_campaigns = [c for c in campaigns if chosen["campaign"] in (None, c)]
        levels = self.code_pools.levels(chosen_campaigns)
        return pools_html(levels, self.events.pool_empty(**chosen), self.code_pools.problem)

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
        source = str(Path(source).resolve())  # the notebook's kernel runs in the notebook's directory
    # Our Voilà template (the lab one, minus its CDN stylesheets) lives in analytics/share.
    jupyter_path = os.pathsep.join(filter(None, [str(SHARE), os.environ.get("JUPYTER_PATH")]))
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
        "--VoilaKernelManager.fill_delay=5",
        "--theme=light",
        f"--token={token}",
        "--VoilaConfiguration.multi_kernel_manager_class=analytics.kernels.PromptKernelManager",
        # Each open page holds a kernel: stop the ones nobody looks at.
        "--MappingKernelManager.cull_idle_timeout=900",
        "--MappingKernelManager.cull_interval=60",
    ]
    # Become Voilà: signals (Ctrl-C, SIGTERM from a supervisor) reach the server itself.
    os.execve(sys.executable, command, env)  # noqa: S606 - a fixed argv, no shell involved
    return 0  # not reached
