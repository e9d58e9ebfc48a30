"""The Voilà dashboard in real headless Chromium, with no internet: KPIs equal the analytics API's."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

import analytics
from analytics.report import kpis
from analytics.sample import write_sample
from tests.support.browser import ARTIFACTS, chromium_page, overlapping_labels
from tests.support.dashboard import dashboard_process, kernels, running_dashboard, shown_kpis
from tests.support.paths import REPO
from tests.support.ports import free_port

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    data = tmp_path_factory.mktemp("dashboard") / "data"
    write_sample(data, customers=1500, days=45, seed=3, progress=False)
    with running_dashboard(data) as url:
        yield url, data


def tile(page, key: str) -> str:
    return page.locator(f'.pb-tile[data-kpi="{key}"] .pb-value').inner_text()


def wait_for_reached(page, value: str) -> None:
    page.wait_for_function(
        "value => document.querySelector('.pb-tile[data-kpi=reached] .pb-value').textContent === value",
        arg=value,
    )


def shown_choices(page) -> list[str]:
    """What the campaign and source filters show (a select with no option chosen shows nothing)."""
    shown = page.locator("select").evaluate_all(
        "selects => selects.map(s => s.selectedIndex < 0 ? '' : s.options[s.selectedIndex].text)"
    )
    return [text.replace("\xa0", " ") for text in shown]  # ipywidgets writes spaces as no-break ones


def test_the_dashboard_shows_the_apis_numbers_and_follows_the_filters(dashboard):
    url, data = dashboard
    events = analytics.open(data)
    today = datetime.now(UTC).date()
    last_30 = shown_kpis(kpis(events.funnel(start=today - timedelta(days=29), end=today)))
    all_time = shown_kpis(kpis(events.funnel()))
    spring = shown_kpis(kpis(events.funnel(campaign="spring-sale")))
    spring_till = shown_kpis(kpis(events.funnel(campaign="spring-sale", source="till")))
    variants = [row["variant"] for row in events.experiment(campaign="spring-sale").to_pylist()]
    assert last_30 != all_time

    with chromium_page(offline_except=url) as page:
        started = time.perf_counter()
        page.goto(url + "/", timeout=60_000)
        page.locator(".pb-tile").first.wait_for(timeout=60_000)
        page.locator("svg").first.wait_for(timeout=60_000)
        print(f"charts shown {time.perf_counter() - started:.2f} s after opening the page")

        assert {key: tile(page, key) for key in last_30} == last_30  # the default: last 30 days
        assert shown_choices(page) == ["All campaigns", "All sources"]
        page.locator(".widget-html svg.marks").first.wait_for()
        assert page.locator(".widget-html svg.marks").count() >= 5
        assert overlapping_labels(page) == []  # the charts' font: what vl-convert measured is what is drawn
        assert page.locator("svg.marks").count() >= 4  # funnel, buttons, timeline, cohorts
        assert page.locator("text=import analytics").count() == 0  # no code on the page

        page.get_by_role("button", name="All time").click()
        wait_for_reached(page, all_time["reached"])
        assert {key: tile(page, key) for key in all_time} == all_time

        page.locator("select").first.select_option(label="spring-sale")
        wait_for_reached(page, spring["reached"])
        assert {key: tile(page, key) for key in spring} == spring
        assert page.locator('a[download="funnel.csv"]').count() == 1
        card = page.locator(".widget-html .pb-experiment")
        assert (
            card.locator("tr[data-variant]").evaluate_all("rows => rows.map(r => r.dataset.variant)")
            == variants
        )
        assert card.locator('[data-banner="peeking"]').is_visible()

        page.locator("select").nth(1).select_option(label="till")
        wait_for_reached(page, spring_till["reached"])
        assert {key: tile(page, key) for key in spring_till} == spring_till
        assert shown_choices(page) == ["spring-sale", "till"]

        page.locator("select").first.select_option(label="All campaigns")
        page.locator("select").nth(1).select_option(label="All sources")
        wait_for_reached(page, all_time["reached"])
        assert shown_choices(page) == ["All campaigns", "All sources"]

        assert page.locator(".pb-first-paint").is_hidden()  # the live widgets took its place

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert page.outside_requests == []


def test_the_figures_are_drawn_before_voilas_scripts_load(dashboard):
    url, data = dashboard
    events = analytics.open(data)
    today = datetime.now(UTC).date()
    last_30 = shown_kpis(kpis(events.funnel(start=today - timedelta(days=29), end=today)))

    with chromium_page(offline_except=url) as page:
        blocked = []
        page.route("**/voila/static/**", lambda route: blocked.append(route.request.url) or route.abort())
        page.goto(url + "/", wait_until="commit", timeout=60_000)
        page.locator(".pb-first-paint svg.marks").first.wait_for(state="visible", timeout=60_000)

        # funnel, buttons, timeline, sources, the experiment's cumulative rates, cohorts
        assert page.locator(".pb-first-paint svg.marks").count() == 6
        first_paint = {
            key: page.locator(f'[data-first-paint-kpi="{key}"] .pb-value').inner_text() for key in last_30
        }
        assert first_paint == last_30
        assert page.locator(".widget-dropdown").count() == 0
        assert page.locator("#loading").count() == 0  # the spinner made way for the figures
        page.wait_for_load_state("load")
        assert any(u.endswith("/voila.js") for u in blocked)  # the Voilà app never ran


def test_an_empty_store_shows_a_friendly_message(tmp_path):
    with running_dashboard(tmp_path) as url, chromium_page(offline_except=url) as page:
        page.goto(url + "/", timeout=60_000)
        page.get_by_text("No customers reached yet").wait_for(timeout=60_000)
        assert tile(page, "reached") == "0"


def test_a_token_protects_the_dashboard(tmp_path):
    with running_dashboard(tmp_path, token="s3cret-token") as url:
        assert httpx.get(url + "/", timeout=120).status_code in (302, 403)
        assert httpx.get(url + "/", params={"token": "wrong"}, timeout=120).status_code in (302, 403)
        assert httpx.get(url + "/", params={"token": "s3cret-token"}, timeout=120).status_code == 200


def wait_until(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_closed_page_gives_its_kernel_back_and_an_open_one_keeps_it(tmp_path):
    # Each page opened takes a kernel (about 250 MB) that outlived the page by 15 minutes: a few reloads
    # took gigabytes. A kernel no page is connected to is now stopped once idle; an open page's is kept.
    data = tmp_path / "data"
    write_sample(data, customers=300, days=10, seed=2, progress=False)
    idle_s = 3
    with dashboard_process(data, "--kernel-idle-s", str(idle_s)) as (url, process):
        wait_until(lambda: len(kernels(process)) == 1)  # the pooled kernel, waiting for a visitor
        (pages_kernel,) = kernels(process)  # the next page gets it
        all_time = shown_kpis(kpis(analytics.open(data).funnel()))
        with chromium_page(offline_except=url) as page:
            page.goto(url + "/", timeout=60_000)
            page.get_by_role("button", name="All time").wait_for(timeout=60_000)
            time.sleep(idle_s + 12)  # past the idle time and a culler's round: the page's kernel stays
            assert pages_kernel in kernels(process)
            page.get_by_role("button", name="All time").click()  # and still answers
            wait_for_reached(page, all_time["reached"])
            wait_until(lambda: len(kernels(process)) == 2)  # the pool has a new kernel
            (scripts_kernel,) = kernels(process) - {pages_kernel}
            page.close()
            wait_until(lambda: pages_kernel not in kernels(process), timeout_s=30)  # the closed page's

        # A request that never runs the page's scripts (a script, a link preview) holds no kernel either.
        assert httpx.get(url + "/", timeout=120).status_code == 200
        wait_until(lambda: scripts_kernel not in kernels(process), timeout_s=30)
        wait_until(lambda: len(kernels(process)) == 1)  # and the pool is full again


def test_stopping_the_dashboard_while_its_kernel_warms_up_is_quiet(tmp_path):
    # `make run` stopped right after it started: the pooled kernel is still running the notebook. Asked
    # to shut down, it printed a traceback of the reply it could no longer send; it is now stopped at once.
    data = tmp_path / "data"
    write_sample(data, customers=200, days=5, seed=1, progress=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "analytics", "dashboard", "--data", str(data), "--port", str(free_port())],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    started = []
    for line in process.stdout:
        started.append(line)
        if b"Kernel started" in line:
            break
    time.sleep(2.5)  # the kernel is running the notebook for the pool

    process.terminate()
    rest, _ = process.communicate(timeout=30)

    output = b"".join([*started, rest]).decode(errors="replace")
    assert "Kernel started" in output
    assert "Traceback" not in output, output
    assert "not trusted" not in output, output  # promobot's own notebook: no warning at every page
    assert process.returncode == 0
