"""The business's dashboard: widgets over the analytics API, shown by Voilà from its notebook (package data).

Dashboard(analytics.open("data")).show()   # what the notebook does; `python -m analytics dashboard` serves it
"""

from __future__ import annotations

import contextlib
import html
import re
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import pyarrow as pa

from analytics import charts
from analytics.entry_links import links_html, stored_links
from analytics.experiment_card import experiment_html
from analytics.filters import AnalyticsError
from analytics.panels import (
    campaigns_html,
    csv_link,
    health_html,
    kpi_tiles_html,
    pools_html,
    reach_html,
    sources_html,
)
from analytics.pools import CodePools
from analytics.query import Events
from analytics.report import kpis
from bot.facts import STEP_LABELS, FunnelStep

# Package data, like the Voilà template beside it: an installed package (a wheel, the container image) has
# them too. notebooks/dashboard.ipynb links here for analysts who open it in JupyterLab.
SHARE = Path(__file__).resolve().with_name("share")
NOTEBOOK = SHARE / "dashboard.ipynb"
# The value of a filter's "All …" choice: ipywidgets shows a Dropdown whose value is None as blank.
ALL = ""
PRESETS = ("Last 7 days", "Last 30 days", "All time", "Custom")
COHORT_STEPS = (FunnelStep.COUPON_REVEALED, FunnelStep.REDEEMED)

STYLE = """
<style>
.pb-tiles { display: flex; gap: 12px; flex-wrap: wrap; margin: 4px 0 8px; }
.pb-tile { background: #f0f2f5; border-radius: 12px; padding: 12px 16px; min-width: 150px; }
.pb-tile .pb-value { font-size: 28px; font-weight: 700; color: #1c1e21; }
.pb-tile .pb-name { color: #65676b; font-size: 13px; }
.pb-tile .pb-base { color: #65676b; font-size: 12px; }
.pb-empty { padding: 32px; border-radius: 12px; background: #f7f8fa; color: #4b4f56; font-size: 15px; }
.pb-downloads a { margin-right: 14px; }
.pb-table table { border-collapse: collapse; font-size: 13px; }
.pb-table td, .pb-table th { border-bottom: 1px solid #e4e6eb; padding: 3px 10px; text-align: left; }
.pb-row { display: flex; flex-flow: row wrap; }
.pb-pools { margin: 4px 0 8px; font-size: 14px; }
.pb-pool { padding: 6px 12px; margin: 4px 0; border-radius: 8px; background: #f0f2f5; color: #1c1e21; }
.pb-pool[data-pool-state="low"] { background: #fff4e5; color: #663c00; }
.pb-pool[data-pool-state="gone"] { background: #fdecea; color: #611a15; font-weight: 600; }
.pb-banner { padding: 6px 12px; margin: 4px 0; border-radius: 8px; background: #f0f2f5; font-size: 14px; }
.pb-banner[data-banner="srm"], .pb-banner[data-banner="too-few"] { background: #fff4e5; color: #663c00; }
.pb-banner[data-banner="winner"] { background: #e7f5e9; color: #1e4620; }
.pb-note { color: #65676b; font-size: 13px; }
.pb-health { padding: 4px 12px; margin: 4px 0; border-radius: 8px; font-size: 13px; background: #e7f5e9; }
.pb-health[data-health="warn"] { background: #fff4e5; color: #663c00; }
.pb-health[data-health="fail"] { background: #fdecea; color: #611a15; }
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

    charts.to_svg(alt.Chart(alt.InlineData(values=[{"x": 1}])).mark_point().encode(x="x:Q"))


class Chosen(TypedDict):
    """The filters the controls choose, as the metrics' keywords."""

    campaign: str | None
    source: str | None
    start: date | None
    end: date | None


Shown = dict[Any, str]  # a widget (ipywidgets has no types) -> the HTML it shows


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


class Dashboard:
    """The widgets: filters, KPI tiles, code pools, charts, tables and downloads over one store.

    Parameters:
        events: the store's events.
        pools: the bot's transactional store (default: the one beside `events`).
    """

    def __init__(self, events: Events, pools: CodePools | None = None) -> None:
        import ipywidgets as w

        self.events = events
        self.code_pools = pools if pools is not None else CodePools.of(events.source)
        self.campaign = w.Dropdown(description="Campaign", options=[("All campaigns", ALL)])
        self.source = w.Dropdown(description="Source", options=[("All sources", ALL)])
        self.preset = w.ToggleButtons(options=PRESETS, value="Last 30 days", description="Dates")
        self.start = w.DatePicker(description="From", disabled=True)
        self.end = w.DatePicker(description="To", disabled=True)
        self.refresh_button = w.Button(description="Refresh", icon="refresh", button_style="primary")
        self.status = w.HTML()
        self.health = w.HTML()
        self.kpis = w.HTML()
        self.pools = w.HTML()
        self.cohort_step = w.ToggleButtons(
            options=[(STEP_LABELS[step], step) for step in COHORT_STEPS], description="Cohorts"
        )
        self.experiment_step = w.ToggleButtons(
            options=[(STEP_LABELS[step], step) for step in COHORT_STEPS], description="Compare on"
        )
        self.funnel = w.HTML()
        self.timeline = w.HTML()
        self.sources = w.HTML()
        self.experiment = w.HTML()
        self.experiment_box = w.VBox([self.experiment_step, self.experiment])
        self.links = w.HTML()
        self.reach = w.HTML()
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
                self.sources,
                self.experiment_box,
                self.cohort_step,
                w.HBox([self.cohorts, self.comparison], layout=w.Layout(flex_flow="row wrap")),
                self.downloads,
            ]
        )
        filters = w.HBox(
            [self.campaign, self.source, self.preset, self.start, self.end, self.refresh_button],
            layout=w.Layout(flex_flow="row wrap", align_items="center"),
        )
        self.widget = w.VBox(
            [
                w.HTML(STYLE + "<h2>Promotion dashboard</h2>"),
                filters,
                self.status,
                self.health,
                self.pools,  # shown whatever the dates: a pool runs out today
                self.empty,
                self.body,
                self.reach,  # whatever the dates: who may be sent a campaign now
                self.links,  # whatever the figures: a shop with no customers yet needs its links first
                w.HTML(LIVE),  # last: the first paint stays until everything above is drawn
            ]
        )
        # Updates run one at a time (filters on the kernel's thread, a refresh behind it); `_shown` guards
        # what the widgets show, so a first paint never mixes two updates.
        self._updating = threading.RLock()
        self._shown_lock = threading.Lock()
        self._figures: dict[str, float | int] = {}
        self._shown: Chosen | None = None  # the filters the widgets show figures for
        self._opened = threading.Event()
        self._quiet_in: int | None = None  # the thread setting controls itself: no update per control

        self.preset.observe(self._preset_changed, names="value")
        for control in (
            self.campaign,
            self.source,
            self.start,
            self.end,
            self.cohort_step,
            self.experiment_step,
        ):
            control.observe(self._control_changed, names="value")
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

    def _control_changed(self, _change: dict[str, Any]) -> None:
        if not self._quiet():
            self.update()

    def _preset_changed(self, change: dict[str, Any]) -> None:
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
        """The campaigns and sources the store has, as the filters' choices."""
        campaigns = self.events.campaigns().column("campaign_id").to_pylist()
        sources = self.events.sources().column("source").to_pylist()
        current, source = self.campaign.value, self.source.value
        with self._setting_controls():
            self.campaign.options = [("All campaigns", ALL), *((c, c) for c in campaigns)]
            self.campaign.value = current if current in campaigns else ALL
            self.source.options = [("All sources", ALL), *((s, s) for s in sorted(sources))]
            self.source.value = source if source in sources else ALL

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
        `every_s` seconds."""

        def run() -> None:
            while not self._opened.wait(every_s):
                self.current()

        threading.Thread(target=run, name="dashboard-follow", daemon=True).start()

    def show(self) -> None:
        """Display the figures as plain HTML (marked FIRST_PAINT), then the live widgets that replace it;
        figures found out of date are shown marked so and updated in the background."""
        from IPython.display import HTML, display

        self._opened.set()
        stale = not self.is_current()
        # IPython's display functions carry no type hints.
        display(HTML(self.first_paint_html(stale=stale)), metadata=FIRST_PAINT)  # type: ignore[no-untyped-call]
        display(self.widget)  # type: ignore[no-untyped-call]
        if stale:
            threading.Thread(target=self.current, name="dashboard-refresh", daemon=True).start()

    def first_paint_html(self, stale: bool = False) -> str:
        """The figures on show, laid out as the widgets lay them out, without the controls."""
        with self._shown_lock:
            if self._figures.get("reached", 0) == 0:
                figures = self.pools.value + self.empty.value + self.reach.value + self.links.value
            else:
                figures = (
                    kpi_tiles_html(self._figures, attribute="data-first-paint-kpi")
                    + self.pools.value
                    + f'<div class="pb-row">{self.funnel.value}{self.buttons.value}</div>'
                    + self.timeline.value
                    + self.sources.value
                    + self.experiment.value
                    + f'<div class="pb-row">{self.cohorts.value}{self.comparison.value}</div>'
                    + self.reach.value
                    + self.links.value
                )
            status = self.status.value + self.health.value
        # The page keeps this, hidden, once the widgets show the same charts: its ids (a legend's gradient,
        # clip paths) must not be theirs, or the widgets' references would find the hidden ones: drawn empty.
        figures = re.sub(r'(\bid="|url\(#|href="#)', r"\1first-paint-", figures)
        note = "Newer events are being read; the figures update in a moment." if stale else ""
        return (
            f'<div class="pb-first-paint">{STYLE}<h2>Promotion dashboard</h2>'
            f'<p class="pb-note">{status} {note} The filters appear in a moment.</p>{figures}</div>'
        )

    def filters(self) -> Chosen:
        """The filters the controls choose (the dates of the preset, in order)."""
        start, end = date_range(self.preset.value, self.start.value, self.end.value)
        if start is not None and end is not None and start > end:
            start, end = end, start
        return {
            "campaign": self.campaign.value or None,
            "source": self.source.value or None,
            "start": start,
            "end": end,
        }

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

    def _compute(self) -> tuple[Shown, dict[str, float | int], Chosen]:
        """New values for the widgets, the KPI figures and the filters they are for."""
        chosen = self.filters()
        funnel = self.events.funnel(**chosen)
        figures = kpis(funnel)
        scope = "all time" if chosen["start"] is None else f"{chosen['start']} to {chosen['end']} (UTC)"
        source = f", source {chosen['source']}" if chosen["source"] else ""
        named = html.escape((chosen["campaign"] or "all campaigns") + source)
        status = (
            f"<span data-scope>Showing {named}, {scope}. Updated {datetime.now(UTC):%H:%M:%S} UTC.</span>"
        )
        pools = self._pools(chosen)
        health = health_html(self.code_pools.health())
        reach = self._reach(chosen)
        links = links_html(stored_links(self.events.source), chosen["campaign"])
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
                    self.health: health,
                    self.reach: reach,
                    self.links: links,
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
        sources = self.events.sources(**chosen)
        experiment_step = self.experiment_step.value
        experiment, experiment_chart = self._experiment(chosen, experiment_step)
        tables = {
            "funnel": funnel,
            "timeline": timeline,
            "sources": sources,
            "cohorts": cohorts,
            "buttons": buttons,
            "campaigns": comparison,
        }
        if experiment is not None:
            tables["experiment"] = experiment
        shown: Shown = {
            self.funnel: charts.to_svg(charts.funnel_chart(funnel)),
            self.timeline: charts.to_svg(charts.timeline_chart(timeline)),
            self.cohorts: charts.to_svg(charts.cohort_heatmap(cohorts, cohort_step))
            if cohorts.num_rows
            else "",
            self.buttons: charts.to_svg(charts.buttons_chart(buttons)) if buttons.num_rows else "",
            self.sources: f'<div class="pb-row">{charts.to_svg(charts.sources_chart(sources))}'
            f"{sources_html(sources)}</div>"
            if sources.num_rows
            else "",
            self.experiment: ""
            if experiment is None
            else experiment_html(experiment, experiment_step) + experiment_chart,
            self.comparison: "<h3>Campaigns</h3>" + campaigns_html(comparison),
            self.downloads: '<div class="pb-downloads">Download: '
            + " ".join(csv_link(name, table) for name, table in tables.items())
            + "</div>",
            self.status: status,
            self.pools: pools,
            self.health: health,
            self.reach: reach,
            self.links: links,
            self.kpis: kpi_tiles_html(figures),  # last: tests and people read the tiles as "done"
        }
        self.experiment_box.layout.display = "none" if experiment is None else None
        return shown, figures, chosen

    def _reach(self, chosen: Chosen) -> str:
        """The chosen campaigns' audience now and their broadcasts, from the bot's store."""
        return reach_html(*self.code_pools.reach(self._chosen_campaigns(chosen)))

    def _chosen_campaigns(self, chosen: Chosen) -> list[str]:
        """The store's campaigns the filters choose: one, or all of them."""
        campaigns = self.events.campaigns().column("campaign_id").to_pylist()
        return [c for c in campaigns if chosen["campaign"] in (None, c)]

    def _experiment(self, chosen: Chosen, step: str) -> tuple[pa.Table | None, str]:
        """The chosen campaign's comparison of variants and its cumulative chart; None when it has none."""
        try:
            table = self.events.experiment(step=step, **chosen)
        except AnalyticsError:
            return None, ""  # no campaign with variants in the selection
        if table.num_rows == 0:
            return None, ""
        timeline = self.events.experiment_timeline(step=step, **chosen)
        return table, charts.to_svg(charts.experiment_chart(timeline, step)) if timeline.num_rows else ""

    def _pools(self, chosen: Chosen) -> str:
        """The chosen campaigns' codes left (from the bot's store) and reveals refused for want of one."""
        levels = self.code_pools.levels(self._chosen_campaigns(chosen))
        return pools_html(levels, self.events.pool_empty(**chosen), self.code_pools.problem)

    def _comparison(self, chosen: Chosen) -> pa.Table:
        """Reached and the share revealing, per campaign, for the chosen dates."""
        rows = []
        for campaign in self._chosen_campaigns(chosen):
            question: Chosen = {**chosen, "campaign": campaign}
            figures = kpis(self.events.funnel(**question))
            rows.append({"campaign": campaign, **figures})
        return pa.Table.from_pylist(rows) if rows else pa.table({"campaign": pa.array([], pa.string())})
