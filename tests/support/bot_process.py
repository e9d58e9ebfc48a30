"""The bot as users run it, in its own process on a real port: `python -m bot serve` (server mode), or the
local-mode bot that `python -m bot run-local` starts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import psutil

from bot.config import Mode
from bot.messenger import sign
from tests.support.home import APP_SECRET, environment
from tests.support.paths import REPO
from tests.support.ports import free_port


class BotProcess:
    """The bot in `mode`: server (`python -m bot serve`, with the test secrets) or local (as run-local)."""

    def __init__(self, data: Path, graph_url: str, mode: Mode = Mode.SERVER, **env: str) -> None:
        self.data = data
        self.mode = mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        defaults = {
            "PROMOBOT_GRAPH_URL": graph_url,
            "PROMOBOT_PUBLIC_URL": self.url,
            "PROMOBOT_GRAPH_TIMEOUT": "0.5",
        }
        self.env = {**os.environ, **environment(data, **{**defaults, **env})}
        self.log_path = data.parent / f"bot-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> BotProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *bot_command(self.mode), "--port", str(self.port)],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the bot exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the bot did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, body: bytes, *, signature: str | None = "auto", **headers: str) -> httpx.Response:
        if signature == "auto":
            signature = sign(APP_SECRET, body)
        if signature is not None:
            headers["X-Hub-Signature-256"] = signature
        return self.client.post(
            "/webhook", content=body, headers={"Content-Type": "application/json", **headers}
        )

    def stop(self) -> int:
        """SIGTERM, as a container runtime or a PaaS sends it; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=30)
        self.client.close()
        return status

    def kill(self) -> None:
        """SIGKILL to the server and the processes it started (its sender): the machine or dyno dies."""
        assert self.process is not None
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.process.kill()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.process.wait(timeout=30)
        psutil.wait_procs(children, timeout=30)
        self.client.close()

    def __enter__(self) -> BotProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def bot_command(mode: Mode) -> list[str]:
    """The interpreter's arguments that start the bot in `mode` (before `--port`)."""
    if mode is Mode.LOCAL:
        return ["-m", "bot.local"]  # what `python -m bot run-local` starts
    return ["-m", "bot", "serve"]


def stored_events(data: Path) -> list[dict]:
    """Every stored row, duplicates included, read with DuckDB as analytics does."""
    files = list((data / "events").glob("*/*.parquet"))
    if not files:
        return []
    connection = duckdb.connect()
    relation = connection.execute(
        f"select * from read_parquet('{data}/events/*/*.parquet', hive_partitioning = true) order by ts"
    )
    columns = [c[0] for c in relation.description]
    return [dict(zip(columns, row, strict=True)) for row in relation.fetchall()]


def wait_until_idle(bot: BotProcess, timeout_s: float = 15) -> None:
    """Wait until the bot owes no reply (its health says so)."""
    deadline = time.monotonic() + timeout_s
    while bot.client.get("/healthz").json()["replies_owed"]:
        assert time.monotonic() < deadline, "replies still in flight"
        time.sleep(0.02)


def run_bot(*args: str, env: dict[str, str], answer: str | None = None) -> subprocess.CompletedProcess:
    """`python -m bot ARGS` run to its end in the repository, with `env` over this process's environment
    cleared of promobot's variables (a developer's shell may hold a real page's); `answer` is its input."""
    clean = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PROMOBOT_") and name != "DATABASE_URL"
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=REPO,
        env={**clean, **env},
        input=answer,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
