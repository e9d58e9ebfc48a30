"""What analysts and the business take away: the CLI's sample and report, charts offline, the notebooks."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

import analytics
from analytics import charts
from analytics.sample import write_sample
from bot.facts import EventName
from tests.support.paths import REPO


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    data = tmp_path_factory.mktemp("sample")
    write_sample(data, customers=400, days=21, seed=11, progress=False)
    return data


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROMOBOT_")}
    return subprocess.run(
        [sys.executable, "-m", "analytics", *args],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_sample_writes_realistic_journeys_through_the_bots_writer(tmp_path):
    result = run("sample", "--customers", "300", "--days", "10", "--out", str(tmp_path), "--seed", "5")

    assert result.returncode == 0, result.stderr
    events = analytics.open(tmp_path)
    names = set(events.sql("select distinct event from events").column("event").to_pylist())
    assert {"welcome_sent", "coupon_requested", "declined", "coupon_revealed", "message_read"} <= names
    funnel = {r["step"]: r["customers"] for r in events.funnel().to_pylist()}
    assert (
        0 < funnel["coupon_revealed"] < funnel["coupon_requested"] < funnel["responded"] < funnel["reached"]
    )
    repeat = (
        events.sql("""select count(*) as n from (select customer_id from events where event = 'welcome_sent'
                           group by customer_id having count(*) > 1)""")
        .column("n")[0]
        .as_py()
    )
    assert repeat > 0  # a few come back
    assert not (tmp_path / "wal").exists()  # the sample's log is its own, gone once flushed


def test_the_same_seed_gives_the_same_sample(tmp_path):
    for name in ("a", "b"):
        assert (
            run(
                "sample", "--customers", "50", "--days", "5", "--out", str(tmp_path / name), "--seed", "3"
            ).returncode
            == 0
        )
    first, second = (
        analytics.open(tmp_path / n).funnel().column("customers").to_pylist() for n in ("a", "b")
    )
    assert first == second


def test_the_report_is_one_self_contained_file_and_csv_holds_every_table(sample, tmp_path):
    out = tmp_path / "report.html"

    result = run("report", "--data", str(sample), "--out", str(out), "--csv", str(tmp_path / "csv"))

    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert "<svg" in page
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']https?://""", page)
    reached = analytics.open(sample).funnel().column("customers")[0].as_py()
    assert f"{reached:,}" in page
    # "Used at the till" is a share of the reveals, beside tiles that are shares of everyone reached.
    assert re.findall(r'<div class="name">([^<]*)</div><div class="base">([^<]*)</div>', page) == [
        ("Used at the till", "of those who revealed the code")
    ]
    tables = sorted(p.name for p in (tmp_path / "csv").iterdir())
    assert tables == [
        f"{name}.csv"
        for name in ("buttons", "campaigns", "cohorts", "experiment", "funnel", "sources", "timeline")
    ]
    with open(tmp_path / "csv" / "funnel.csv") as file:
        rows = list(csv.DictReader(file))
    assert rows[0]["step"] == "reached"
    assert int(rows[0]["customers"]) == reached


def test_the_report_reads_promobot_data_as_the_dashboard_does_and_says_when_it_is_empty(sample, tmp_path):
    shown = run("report", "--out", str(tmp_path / "r.html"), env={"PROMOBOT_DATA": str(sample)})
    empty = run("report", "--out", str(tmp_path / "e.html"), env={"PROMOBOT_DATA": str(tmp_path / "none")})

    assert shown.returncode == 0, shown.stderr
    reached = analytics.open(sample).funnel().column("customers")[0].as_py()
    assert f"{reached:,}" in (tmp_path / "r.html").read_text()
    assert "no events" not in shown.stderr
    assert empty.returncode == 0, empty.stderr
    assert f"no events in {tmp_path / 'none'}" in empty.stderr


def test_the_report_command_explains_what_it_needs():
    result = run("report", "--data", "data")

    assert result.returncode == 2
    assert "--out" in result.stderr


def test_charts_render_offline_to_svg_png_and_html(sample, tmp_path):
    events = analytics.open(sample)
    made = [
        charts.funnel_chart(events.funnel()),
        charts.timeline_chart(events.timeline()),
        charts.cohort_heatmap(events.cohorts()),
        charts.buttons_chart(events.buttons()),
    ]

    for index, chart in enumerate(made):
        svg = charts.save(chart, tmp_path / f"c{index}.svg").read_text()
        assert svg.startswith("<svg")
        png = charts.save(chart, tmp_path / f"c{index}.png").read_bytes()
        assert png.startswith(b"\x89PNG")
    page = charts.to_html(made[0])
    assert not re.search(r"""<script[^>]+src=["']https?://""", page)
    with pytest.raises(ValueError, match=r"use \.svg"):
        charts.save(made[0], tmp_path / "chart.pdf")


@pytest.mark.parametrize("period", ["day", "week", "month"])
def test_the_cohorts_chart_names_its_period_and_gives_each_cell_room(sample, period):
    cohorts = analytics.open(sample).cohorts(period)
    spec = charts.cohort_heatmap(cohorts, period=period).to_dict()

    encoding = spec["layer"][0]["encoding"]
    assert encoding["x"]["title"] == f"{period.title()}s after first reach"
    assert encoding["y"]["title"] == f"{period.title()} of first reach"
    assert spec["width"] >= 36 * len(set(cohorts.column("period").to_pylist()))
    with pytest.raises(ValueError, match="unknown period 'year'"):
        charts.cohort_heatmap(cohorts, period="year")


def step_scales(spec: object) -> list[dict]:
    """Every colour scale of a chart's spec that names steps."""
    if isinstance(spec, list):
        return [scale for item in spec for scale in step_scales(item)]
    if not isinstance(spec, dict):
        return []
    scale = spec.get("scale")
    own = [scale] if spec.get("field") == "step" and isinstance(scale, dict) else []
    return own + [scale for value in spec.values() for scale in step_scales(value)]


def test_one_colour_per_step_in_every_chart_and_legends_name_what_is_drawn(sample):
    events = analytics.open(sample)
    timeline = events.timeline()
    drawn = {
        "funnel": (charts.funnel_chart(events.funnel()), None),
        "timeline": (charts.timeline_chart(timeline), set(timeline.column("step").to_pylist())),
        "buttons": (charts.buttons_chart(events.buttons()), None),
        "sources": (charts.sources_chart(events.sources()), set(charts.SOURCE_STEPS)),
    }

    for name, (chart, steps) in drawn.items():
        scales = step_scales(chart.to_dict())
        assert len(scales) == 1, name
        domain, colours = scales[0]["domain"], scales[0]["range"]
        assert colours == [charts.STEP_COLORS[step] for step in domain], name
        if steps is not None:  # a chart with a legend: it names the steps drawn, no other
            assert set(domain) == steps, name
    assert EventName.CONVERSATION_STARTED not in drawn["timeline"][1]


@pytest.mark.parametrize("name", ["dashboard.ipynb", "explore.ipynb"])
@pytest.mark.parametrize("store", ["sample", "empty"])
def test_the_notebooks_run_top_to_bottom_on_sample_data_and_on_an_empty_store(
    sample, store, name, monkeypatch, tmp_path
):
    # Empty: a new bot's store before its first flush, or `make run`'s ./data (the demo is in data/demo).
    monkeypatch.setenv("PROMOBOT_DATA", str(sample if store == "sample" else tmp_path / "data"))
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)

    NotebookClient(
        notebook,
        timeout=240,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    ).execute()

    errors = [
        o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert errors == []
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
