"""`make run`: the bot in local mode and the dashboard on one machine, with no Facebook app.

Seeds a demo store on the first run, starts the bot (`python -m bot.local --port N`, on 127.0.0.1 only) and
the dashboard as processes of their own, and stops both on Ctrl-C, events flushed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bot.config import Mode

DEMO = Path("data/demo")  # kept apart from ./data, where a live bot's events go
BOT_URL = "http://127.0.0.1:8000"
DASHBOARD_URL = "http://127.0.0.1:8866"


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_local() -> int:
    # Ctrl-C in the terminal, or SIGTERM from a supervisor: both stop the two servers cleanly.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    env = {
        **os.environ,
        "PROMOBOT_DATA": str(DEMO),
        # The demo hands out single-use codes, so the simulator's messages link to the till page.
        "PROMOBOT_CAMPAIGN": os.environ.get("PROMOBOT_CAMPAIGN", "data/demo-campaign.toml"),
        "PROMOBOT_FLUSH_SECONDS": os.environ.get("PROMOBOT_FLUSH_SECONDS", "5"),
    }
    if not (DEMO / "events").exists():
        print(f"First run: writing sample journeys to {DEMO}/ for the dashboard …", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "analytics",
                "sample",
                "--customers",
                "2000",
                "--days",
                "28",
                "--out",
                str(DEMO),
            ],
            check=True,
            env=env,
        )
    servers = {
        "bot": subprocess.Popen([sys.executable, "-m", "bot.local", "--port", "8000"], env=env),
        "dashboard": subprocess.Popen(
            [sys.executable, "-m", "analytics", "dashboard", "--data", str(DEMO), "--port", "8866"], env=env
        ),
    }
    processes = list(servers.values())
    interrupted = False
    try:
        if wait_until_up(f"{BOT_URL}/healthz", processes) and wait_until_up(DASHBOARD_URL, processes):
            print(
                f"\n  Messenger simulator: {BOT_URL}/\n  Dashboard:           {DASHBOARD_URL}/\n\n"
                "  Press Ctrl-C to stop.\n",
                flush=True,
            )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Stopping already: a second Ctrl-C (or a terminal's SIGINT to the whole group) changes nothing; the
        # servers get 30 s each to finish, then are killed.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        exited = [name for name, process in servers.items() if process.poll() is not None]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        status = 0
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                status = 1
    if exited and not interrupted:
        # A bad campaign file, a port in use…: the server said why, above. `make run` must not look fine.
        print(
            f"Stopped: the {' and the '.join(exited)} could not run (see above).", file=sys.stderr, flush=True
        )
        return 1
    print("Stopped; events flushed.", flush=True)
    return status


def wait_until_up(url: str, processes: list[subprocess.Popen[bytes]], timeout_s: float = 120) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - a fixed loopback URL
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    return False


def serve_local(argv: list[str] | None = None) -> None:
    """`python -m bot.local [--port N]`: the bot alone in local mode, on 127.0.0.1 (`run_local` starts it)."""
    from bot.server import serve

    parser = argparse.ArgumentParser(prog="python -m bot.local", description=serve_local.__doc__)
    parser.add_argument("--port", type=int, default=8000)
    # No --host: local mode hands its signing secret to any browser that asks, so never beyond this machine.
    serve(Mode.LOCAL, host="127.0.0.1", port=parser.parse_args(argv).port)


if __name__ == "__main__":
    serve_local()
