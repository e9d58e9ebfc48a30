"""The dashboard's widgets in-process: API figures, shown first as plain HTML, kept current."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

import analytics
from analytics.dashboard import FIRST_PAINT, Dashboard
from analytics.report import kpis
from analytics.sample import write_sample
from bot.events import Event
from bot.facts import EventName
from bot.store import FileStore, write_events
from tests.conftest import shown_kpis


@pytest.fixture
def store(tmp_path):
    data = tmp_path / "data"
    write_sample(data, customers=300, days=20, seed=5, progress=False)
    return data


def tiles(markup: str, attribute: str) -> dict[str, str]:
    pattern = rf'{attribute}="(\w+)"><div class="pb-value">([^<]*)</div>'
    return dict(re.findall(pattern, markup))


def last_30_days(events) -> dict[str, str]:
    today = datetime.now(UTC).date()
    return shown_kpis(kpis(events.funnel(start=today - timedelta(days=29), end=today)))


def test_the_first_paint_shows_the_widgets_figures_and_charts(store):
    dashboard = Dashboard(analytics.open(store))
    expected = last_30_days(analytics.open(store))

    first_paint = dashboard.first_paint_html()

    assert tiles(dashboard.kpis.value, "data-kpi") == expected
    assert tiles(first_paint, "data-first-paint-kpi") == expected
    assert first_paint.count('class="marks"') == 4  # funnel, buttons, timeline, cohorts
    assert "data-kpi=" not in first_paint  # the live tiles are the only ones with that name
    assert 'class="pb-first-paint"' in first_paint


def test_files_written_after_it_was_built_are_read_when_it_is_brought_up_to_date(store):
    dashboard = Dashboard(analytics.open(store))
    before = tiles(dashboard.kpis.value, "data-kpi")
    assert dashboard.is_current()

    newcomer = Event(
        event_id="newcomer.w",
        ts=datetime.now(UTC) - timedelta(hours=1),
        page_id="p",
        customer_id="newcomer",
        campaign_id="spring-sale",
        event=EventName.WELCOME_SENT,
    )
    write_events(FileStore(str(store)), [newcomer], "other-writer-00000001")  # a second writer's new file

    assert not dashboard.is_current()
    assert "being read" in dashboard.first_paint_html(stale=True)
    dashboard.current()
    after = tiles(dashboard.kpis.value, "data-kpi")
    assert after == last_30_days(analytics.open(store))
    assert int(after["reached"]) == int(before["reached"]) + 1
    assert dashboard.is_current()


def test_a_current_dashboard_is_not_computed_again(store):
    dashboard = Dashboard(analytics.open(store))
    status = dashboard.status.value
    dashboard.events.funnel = None  # any query now would fail
    assert dashboard.current() is dashboard
    assert dashboard.status.value == status


def test_filters_change_the_figures_and_the_first_paint(store):
    dashboard = Dashboard(analytics.open(store))
    events = analytics.open(store)

    dashboard.preset.value = "All time"
    dashboard.campaign.value = "summer-sale"

    expected = shown_kpis(kpis(events.funnel(campaign="summer-sale")))
    assert tiles(dashboard.kpis.value, "data-kpi") == expected
    assert tiles(dashboard.first_paint_html(), "data-first-paint-kpi") == expected
    assert dashboard.is_current()


def test_an_empty_store_paints_the_friendly_message(tmp_path):
    dashboard = Dashboard(analytics.open(tmp_path))
    assert "No customers reached yet" in dashboard.first_paint_html()
    assert tiles(dashboard.kpis.value, "data-kpi")["reached"] == "0"


def test_show_displays_the_first_paint_marked_for_the_template_then_the_widgets(store, monkeypatch):
    displayed = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kwargs: displayed.append((obj, kwargs)))
    dashboard = Dashboard(analytics.open(store))

    dashboard.show()

    (first, first_kwargs), (second, _) = displayed
    assert first_kwargs == {"metadata": FIRST_PAINT}
    assert 'class="pb-first-paint"' in first.data
    assert second is dashboard.widget


def test_a_waiting_dashboard_follows_the_store_until_it_is_shown(store, monkeypatch):
    monkeypatch.setattr("IPython.display.display", lambda obj, **kwargs: None)
    dashboard = Dashboard(analytics.open(store))
    before = tiles(dashboard.kpis.value, "data-kpi")
    dashboard.follow(every_s=0.05)

    write_sample(store, customers=200, days=5, seed=8, progress=False)

    deadline = time.monotonic() + 60
    while tiles(dashboard.kpis.value, "data-kpi") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tiles(dashboard.kpis.value, "data-kpi") == last_30_days(analytics.open(store))
    dashboard.show()
    time.sleep(0.5)
    assert not any(t.name == "dashboard-follow" for t in threading.enumerate())  # shown: it stops
