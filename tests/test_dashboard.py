"""The dashboard's widgets in-process: API figures, shown first as plain HTML, kept current; warnings when a
campaign's single-use codes run low, read from a real SQLite store beside the events."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import ipywidgets
import pytest

import analytics
from analytics.dashboard import FIRST_PAINT, Dashboard
from analytics.pools import CodePools
from analytics.report import kpis
from analytics.sample import write_sample
from bot.campaign import parse_campaign
from bot.config import SQLITE_FILE
from bot.database import Database
from bot.events import Event
from bot.facts import KPIS, ButtonStep, EventName
from bot.flow import button_payload, plan_replies, record
from bot.links import links_command
from bot.messenger import parse_body
from bot.recipients import create_broadcast
from bot.store import FileStore, write_events
from tests.support import payloads
from tests.support.builders import customer_event
from tests.support.campaigns import single_use
from tests.support.dashboard import shown_kpis


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
    # funnel, buttons, timeline, sources, the experiment's cumulative rates (the sample's spring sale is the
    # one campaign with variants), cohorts
    assert first_paint.count('class="marks"') == 6
    assert "data-kpi=" not in first_paint  # the live tiles are the only ones with that name
    # "Used at the till" is a share of the reveals, beside tiles that are shares of everyone reached.
    for markup in (dashboard.kpis.value, first_paint):
        bases = re.findall(r'<div class="pb-name">([^<]*)</div><div class="pb-base">([^<]*)</div>', markup)
        assert bases == [("Used at the till", "of those who revealed the code")]
    assert 'class="pb-first-paint"' in first_paint


def test_every_id_on_the_page_is_unique_and_every_reference_finds_its_own(store):
    # The cohorts' legend is a gradient, drawn by reference (`fill="url(#…)"`); a page resolves a reference
    # to the first element of that id, and the first paint, hidden once the widgets are drawn, holds the
    # same charts: a shared id would draw the live legend with the hidden one's gradient, i.e. not at all.
    dashboard = Dashboard(analytics.open(store))
    page = dashboard.first_paint_html() + "".join(
        widget.value for widget in vars(dashboard).values() if isinstance(widget, ipywidgets.HTML)
    )

    ids = re.findall(r'\bid="([^"]+)"', page)
    assert "url(#" in page
    assert len(ids) == len(set(ids)) > 0
    assert set(re.findall(r"url\(#([^)]+)\)", page)) <= set(ids)


def test_the_campaigns_table_names_and_writes_each_figure_as_the_tiles_do(store):
    dashboard = Dashboard(analytics.open(store))
    dashboard.preset.value = "All time"
    events = analytics.open(store)
    campaigns = events.campaigns().column("campaign_id").to_pylist()
    table = dashboard.comparison.value

    assert re.findall(r"<th>([^<]*)</th>", table) == ["Campaign", *(kpi.label for kpi in KPIS)]
    assert len(campaigns) > 1
    for campaign in campaigns:
        row = re.search(rf'<tr data-campaign="{campaign}">(.*?)</tr>', table)
        assert row is not None, campaign
        shown = shown_kpis(kpis(events.funnel(campaign=campaign)))
        assert re.findall(r"<td>([^<]*)</td>", row.group(1)) == [campaign, *shown.values()]


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


def test_used_at_the_till_is_the_share_of_reveals_redeemed(store):
    dashboard = Dashboard(analytics.open(store))
    dashboard.preset.value = "All time"
    customers = {row["step"]: row["customers"] for row in analytics.open(store).funnel().to_pylist()}

    shown = tiles(dashboard.kpis.value, "data-kpi")["redeemed"]

    assert customers["redeemed"] > 0
    assert shown == f"{round(100 * customers['redeemed'] / customers['coupon_revealed'], 1)}%"
    assert "Used at the till" in dashboard.kpis.value


def test_the_cohorts_can_show_codes_used_at_the_till(store):
    dashboard = Dashboard(analytics.open(store))
    revealed = dashboard.cohorts.value

    dashboard.cohort_step.value = "redeemed"

    assert "used at the till" in dashboard.cohorts.value
    assert dashboard.cohorts.value != revealed


def test_the_experiment_card_shows_the_apis_comparison(store):
    dashboard = Dashboard(analytics.open(store))
    dashboard.preset.value = "All time"
    expected = analytics.open(store).experiment(campaign="spring-sale").to_pylist()

    card = dashboard.experiment.value

    assert re.findall(r'data-variant="([^"]+)"', card) == [row["variant"] for row in expected] == ["A", "B"]
    a_row, b_row = re.findall(r"<tr data-variant=.*?</tr>", card)
    assert f"<td>{expected[0]['customers']:,}</td>" in a_row
    assert f"<td>{expected[1]['rate'] * 100:.1f} % (" in b_row
    assert 'data-banner="peeking"' in card
    assert 'download="experiment.csv"' in dashboard.downloads.value
    assert card in dashboard.first_paint_html()

    dashboard.experiment_step.value = "redeemed"
    assert "Used at the till by variant" in dashboard.experiment.value
    dashboard.campaign.value = "summer-sale"  # no variants: no card
    assert dashboard.experiment.value == ""
    assert dashboard.experiment_box.layout.display == "none"


def test_the_source_filter_and_the_funnel_by_source(store):
    dashboard = Dashboard(analytics.open(store))
    events = analytics.open(store)
    dashboard.preset.value = "All time"
    sources = events.sources().to_pylist()
    assert {"till", "flyer", "direct"} <= {row["source"] for row in sources}
    assert [o for _, o in dashboard.source.options][1:] == sorted(row["source"] for row in sources)
    for row in sources:
        assert f'data-source="{row["source"]}"><td>' in dashboard.sources.value

    dashboard.source.value = "till"

    assert tiles(dashboard.kpis.value, "data-kpi") == shown_kpis(kpis(events.funnel(source="till")))
    assert "source till" in dashboard.status.value
    assert re.findall(r'data-source="([^"]+)"', dashboard.sources.value) == ["till"]


def test_the_campaigns_entry_links_are_listed_even_before_any_customer(tmp_path):
    environ = {"PROMOBOT_DATA": str(tmp_path)}
    assert links_command("spring", "till,flyer", None, page="cornerbakery", environ=environ) == 0

    dashboard = Dashboard(analytics.open(tmp_path))

    assert 'data-links="2"' in dashboard.links.value
    assert "https://m.me/cornerbakery?ref=spring.flyer" in dashboard.first_paint_html()


# -- the bot's store: code pools and health ---------------------------------------------------------------


def test_the_health_strip_shows_the_bots_store(store):
    database = Database.open(None, store)
    reveal_in(database, "spring-sale", range(7000, 7001))  # a webhook now; its reply owed, not yet due
    dashboard = Dashboard(analytics.open(store))

    assert 'data-health="ok"' in dashboard.health.value
    assert "last webhook" in dashboard.health.value
    assert dashboard.health.value in dashboard.first_paint_html()
    database.close()

    assert Dashboard(analytics.open(store / "elsewhere")).health.value == ""  # no bot ran there


def test_the_audience_now_and_the_broadcasts_of_the_chosen_campaign(store):
    database = Database.open(None, store)
    campaign = parse_campaign({**single_use(valid_days=7), "id": "spring-sale"})
    now_ms = int(time.time() * 1000)
    for customer, ts in (("5001", now_ms - 3_600_000), ("5002", now_ms - 2 * 86_400_000)):  # 1 h, 2 days ago
        body = payloads.envelope(payloads.text(customer, "hello", ts=ts, mid=f"m_{customer}"))
        events = [event for action in parse_body(body) for event in record(campaign, action)]
        asyncio.run(database.record(events, []))
    broadcast = create_broadcast(database, "spring-sale", 60)

    dashboard = Dashboard(analytics.open(store))
    one_open = "1 customer may be sent it now (their Messenger window is open)"

    assert f"<b>spring-sale</b>: {one_open}" in dashboard.reach.value
    assert "1 window closed" in dashboard.reach.value
    assert f'data-broadcast="{broadcast}"' in dashboard.reach.value
    dashboard.campaign.value = "summer-sale"
    assert "data-broadcast" not in dashboard.reach.value
    assert f"<b>summer-sale</b>: {one_open}" in dashboard.reach.value
    database.close()


# -- the code pools, in the bot's store ---------------------------------------------------------------------


def reveal_in(database: Database, campaign_id: str, customers: range) -> None:
    """Each customer's click on *Reveal the coupon*, recorded as the bot records it: a code handed out."""
    campaign = parse_campaign({**single_use(valid_days=7), "id": campaign_id})
    for customer in customers:
        payload = button_payload(campaign, ButtonStep.REVEAL)
        body = payloads.envelope(payloads.postback(str(customer), payload, mid=f"m_reveal_{customer}"))
        events = [event for action in parse_body(body) for event in record(campaign, action)]
        asyncio.run(database.record(events, [reply for event in events for reply in plan_replies(event)]))


def no_expiry(_revealed_at: datetime) -> None:
    return None


def pool_lines(markup: str) -> dict[str, tuple[str, str]]:
    found = re.findall(r'data-pool="([\w-]+)" data-pool-state="(\w+)">(.*?)</div>', markup)
    return {campaign: (state, text) for campaign, state, text in found}


def test_the_dashboard_warns_when_a_campaigns_codes_run_low_or_ran_out(store):
    # The bot's own SQLite file in the data directory the dashboard reads, as `make run` leaves it.
    database = Database.open(None, store)
    database.add_codes("spring-sale", [f"SPR-{n:03d}" for n in range(40)], no_expiry)
    database.add_codes("summer-sale", ["SUM-1", "SUM-2"], no_expiry)
    reveal_in(database, "spring-sale", range(8000, 8036))  # 4 of 40 left: 10%, not fewer
    reveal_in(database, "summer-sale", range(9000, 9002))  # all gone

    dashboard = Dashboard(analytics.open(store))
    lines = pool_lines(dashboard.pools.value)
    assert lines["spring-sale"] == ("ok", "<b>spring-sale</b>: 4 of 40 codes left.")
    assert lines["summer-sale"][0] == "gone"
    assert lines["summer-sale"][1].startswith("No codes left — <b>summer-sale</b>: 0 of 2 codes left.")

    reveal_in(database, "spring-sale", range(8036, 8037))  # 3 of 40: fewer than 10%
    dashboard.refresh()
    lines = pool_lines(dashboard.pools.value)
    assert lines["spring-sale"][0] == "low"
    assert "Codes running low — <b>spring-sale</b>: 3 of 40 codes left" in lines["spring-sale"][1]
    assert dashboard.pools.value in dashboard.first_paint_html()
    database.close()


def test_reveals_that_found_no_code_are_counted_for_the_chosen_campaign(store):
    # The loyalty codes ran out an hour ago (the sample's own reveals after they ran out depend on the time
    # of day it is made); its pool is in no store here.
    gone = datetime.now(UTC) - timedelta(hours=1)
    refusals = [
        customer_event(f"gone-{n}", n * 60, EventName.COUPON_POOL_EMPTY, start=gone, campaign="loyalty")
        for n in range(3)
    ]
    write_events(FileStore(str(store)), refusals, "refused-00000001")
    events = analytics.open(store)
    (refused,) = events.pool_empty(campaign="loyalty").to_pylist()
    dashboard = Dashboard(events)

    state, text = pool_lines(dashboard.pools.value)["loyalty"]
    assert state == "gone"
    assert f"{refused['reveals']:,} reveals found no code left ({refused['customers']:,} customers" in text
    dashboard.campaign.value = "spring-sale"
    assert "loyalty" not in pool_lines(dashboard.pools.value)


def test_a_data_directory_without_the_bots_store_shows_no_pools_and_creates_none(store, monkeypatch):
    monkeypatch.delenv("PROMOBOT_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    pools = CodePools.of(str(store))

    assert pools.levels(["spring-sale"]) == []
    assert not (store / SQLITE_FILE).exists()
    assert CodePools.of("s3://bucket/promobot").levels(["spring-sale"]) == []
    assert (
        CodePools.of(str(store), {"DATABASE_URL": f"sqlite:///{store / 'other.sqlite3'}"}).levels(
            ["spring-sale"]
        )
        == []
    )
    assert not (store / "other.sqlite3").exists()
