"""The dashboard as tests see it: `python -m analytics dashboard` on a free port, its KPI tiles as shown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.paths import REPO
from tests.support.ports import free_port


def shown_kpis(figures: dict) -> dict[str, str]:
    """The dashboard's KPI tiles as the page shows them, from the analytics API's figures."""
    return {
        "reached": f"{figures['reached']:,}",
        "responded": f"{figures['responded']}%",
        "saw": f"{figures['saw']}%",
        "revealed": f"{figures['revealed']}%",
        "redeemed": f"{figures['redeemed']}%",
        "declined": f"{figures['declined']}%",
    }


@contextmanager
def running_dashboard(data: Path, token: str = "") -> Iterator[str]:
    """`python -m analytics dashboard` on a free port; yields its URL once it listens."""
    with dashboard_process(data, token=token) as (url, _process):
        yield url


@contextmanager
def dashboard_process(
    data: Path, *options: str, token: str = ""
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`python -m analytics dashboard` with `options` on a free port; yields its URL and process once it
    listens."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "analytics", "dashboard", "--data", str(data), "--port", str(port), *options],
        cwd=REPO,
        env={**os.environ, "PROMOBOT_DASHBOARD_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        if not listening(port, process):
            process.kill()
            raise AssertionError(process.stdout.read().decode(errors="replace"))
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(timeout=30)


def kernels(process: subprocess.Popen[bytes]) -> set[int]:
    """The process ids of the notebook kernels the dashboard's process runs."""
    import psutil

    found = set()
    for child in psutil.Process(process.pid).children():
        try:
            if "ipykernel_launcher" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:  # stopped meanwhile, or a zombie not yet reaped: not a kernel any more
            pass
    return found


def listening(port: int, process: subprocess.Popen, timeout_s: float = 60) -> bool:
    # Only a connection: every page request makes Voilà start a kernel.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False
