"""Dashboard benchmark: time from opening the page to the charts shown, with 1M events, in headless Chromium.

    python benchmarks/dashboard.py [--opens 3]

Uses the 1M-event store of benchmarks/analytics.py (made on first use). Voilà keeps one kernel ready (it has
imported everything and drawn a chart); the page's own queries and charts run when it is opened. The first
open after start waits for that kernel; later opens are what visitors see. For scale, the same run times the
analytics API alone drawing the same page (funnel, timeline, cohorts, buttons, per-campaign comparison).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_data import dataset  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
            for index in range(args.opens + 1):
                wait_for_pool(REPO / "benchmarks" / ".data" / "voila.log", index + 1)
                page = browser.new_page()
                started = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
                page.locator("svg.marks").first.wait_for(timeout=120_000)
                seconds = time.perf_counter() - started
                page.close()
                label = "first open after start" if index == 0 else f"open {index}"
                print(f"{label:<24} {seconds:6.2f} s to charts", flush=True)
                if index:
                    timings.append(seconds)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    print(f"{'median of later opens':<24} {statistics.median(timings):6.2f} s to charts")
    print(f"{'analytics API alone':<24} {api_seconds:6.2f} s (the page's queries and charts, in-process)")


def wait_for_pool(log: Path, fills: int, timeout_s: float = 180) -> None:
    """Wait until Voilà has refilled its pool of ready kernels `fills` times."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count("is filled with") >= fills:
            time.sleep(1.0)  # the kernel finishes running the notebook's first cells
            return
        time.sleep(0.2)
    raise SystemExit("the dashboard's kernel pool did not fill")


if __name__ == "__main__":
    main()
