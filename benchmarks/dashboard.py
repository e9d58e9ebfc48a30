"""Dashboard benchmark: time from opening the page to the charts shown, with 1M events, in headless Chromium.

    python benchmarks/dashboard.py [--opens 3]

Uses the 1M-event store of benchmarks/analytics.py (made on first use). Voilà keeps one kernel ready: it has
read the store and computed the page's figures, and checks when the page is opened that no file was written
since. Two times per open: "charts", from the request to the charts drawn (the page's first paint, plain HTML
that needs none of Voilà's scripts), and "live", to the filters drawn (Voilà's scripts loaded, its widgets
connected to the kernel). Each open waits for Voilà's refilled kernel to be ready and idle; the first open
after start is reported apart. For scale, the same run times the analytics API alone drawing the same page
(funnel, timeline, cohorts, buttons, per-campaign comparison), and the page again after a file is written
(the kernel then reads the store again).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_data import dataset  # noqa: E402

from tests.support.ports import free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--opens", type=int, default=3)
    args = parser.parse_args()
    root = dataset(1_000_000)

    import analytics
    from analytics.dashboard import Dashboard, warm_up

    warm_up()
    started = time.perf_counter()
    Dashboard(analytics.open(root))
    api_seconds = time.perf_counter() - started

    port = free_port()
    log = open(REPO / "benchmarks" / ".data" / "voila.log", "w")  # noqa: SIM115 - the server's whole life
    server = subprocess.Popen(
        [sys.executable, "-m", "analytics", "dashboard", "--data", str(root), "--port", str(port)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PROMOBOT_DASHBOARD_TOKEN": ""},
    )
    from playwright.sync_api import sync_playwright

    timings = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            for index in range(args.opens + 2):
                wait_for_pool(REPO / "benchmarks" / ".data" / "voila.log", index + 1)
                wait_for_idle(server.pid)
                label = "first open after start" if index == 0 else f"open {index}"
                if index == args.opens + 1:
                    label = "open after a new file"
                    with new_file(root):
                        charts, live = open_page(browser, f"http://127.0.0.1:{port}/")
                else:
                    charts, live = open_page(browser, f"http://127.0.0.1:{port}/")
                print(f"{label:<24} {charts:6.2f} s to charts {live:6.2f} s to live filters", flush=True)
                if 0 < index <= args.opens:
                    timings.append((charts, live))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    charts, live = (statistics.median(t[i] for t in timings) for i in (0, 1))
    label = f"median of opens 1–{args.opens}"
    print(f"{label:<24} {charts:6.2f} s to charts {live:6.2f} s to live filters")
    print(f"{'analytics API alone':<24} {api_seconds:6.2f} s (the page's queries and charts, in-process)")


def open_page(browser, url: str) -> tuple[float, float]:
    """Seconds from the request to the first chart drawn, and to the live filters drawn."""
    page = browser.new_page()
    started = time.perf_counter()
    page.goto(url, wait_until="commit", timeout=120_000)
    page.locator("svg.marks").first.wait_for(state="visible", timeout=120_000)
    charts = time.perf_counter() - started
    page.locator(".widget-dropdown select").first.wait_for(state="visible", timeout=120_000)
    live = time.perf_counter() - started
    page.close()
    return charts, live


@contextlib.contextmanager
def new_file(root: Path) -> Iterator[None]:
    """A file written into the store as a running bot would (a copy of one: same events, read once)."""
    newest = max((root / "events").glob("*/*.parquet"), key=lambda path: path.name)
    copy = newest.with_name("bench-" + newest.name)
    copy.write_bytes(newest.read_bytes())
    try:
        yield
    finally:
        copy.unlink()


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants, from /proc."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        pending.extend(int(child) for child in children)
    return total


def wait_for_idle(pid: int, timeout_s: float = 120) -> None:
    """Wait until the server and its kernels use under 5% of a core for a second."""
    deadline = time.monotonic() + timeout_s
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        if now - before < 0.05:
            return
        before = now
    raise SystemExit("the dashboard's server did not settle")


def wait_for_pool(log: Path, fills: int, timeout_s: float = 180) -> None:
    """Wait until Voilà has refilled its pool of ready kernels `fills` times."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count("is filled with") >= fills:
            return
        time.sleep(0.2)
    raise SystemExit("the dashboard's kernel pool did not fill")


if __name__ == "__main__":
    main()
