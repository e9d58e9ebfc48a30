"""The container image, reproduced without a registry: the Containerfile's build step (a non-editable install
of the copied sources into a fresh venv) and its final stage's layout, commands and environment, run from the
application directory; the bot serves a signed conversation, the dashboard shows it in Chromium."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bot.messenger import sign
from tests.support import payloads
from tests.support.bot_process import stored_events
from tests.support.browser import ARTIFACTS, chromium_page
from tests.support.fake_graph import FakeGraph
from tests.support.home import APP_SECRET, PAGE_TOKEN, VERIFY_TOKEN
from tests.support.paths import REPO
from tests.support.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CONTAINERFILE = REPO / "Containerfile"
IMAGE_VENV = "/opt/promobot"
IMAGE_APP = "/home/promobot/app"


def instructions(stage: str) -> list[tuple[str, str]]:
    """The (instruction, arguments) of one stage of the Containerfile, continuation lines joined."""
    logical, pending = [], ""
    for line in CONTAINERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest))
    return stages[0] if stage == "build" else stages[-1]


@dataclass
class Image:
    """The image's layout here: the venv stands for /opt/promobot, `app` for the working directory."""

    venv: Path
    app: Path

    def local(self, text: str) -> str:
        return text.replace(IMAGE_VENV, str(self.venv)).replace(IMAGE_APP, str(self.app))

    def env(self, **extra: str) -> dict[str, str]:
        """The final stage's ENV, as a container started from the image has it (PATH first)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMOBOT_", "PYTHON"))}
        for keyword, rest in instructions("final"):
            if keyword == "ENV":
                for pair in shlex.split(rest):
                    name, _, value = pair.partition("=")
                    env[name] = self.local(value.replace("$PATH", env["PATH"]))
        return {**env, **extra}

    def command(self, keyword: str, port: int) -> list[str]:
        """The exec-form CMD (or the HEALTHCHECK's) of the final stage, on a free loopback port."""
        [rest] = [rest for k, rest in instructions("final") if k == keyword]
        argv = json.loads(rest[rest.index("CMD ") + 4 :] if keyword == "HEALTHCHECK" else rest)
        # The container maps its port 8000; here the port is a free one, and nothing listens beyond loopback.
        return [a.replace("8000", str(port)).replace("0.0.0.0", "127.0.0.1") for a in argv]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    """The build stage (COPY of the sources, its pip install, not editable) and the final stage's files."""
    root = tmp_path_factory.mktemp("image")
    source, venv, app = root / "src", root / "opt-promobot", root / "home-promobot-app"
    source.mkdir()
    for keyword, rest in instructions("build"):
        if keyword == "COPY":
            *names, _destination = rest.split()
            for name in names:
                copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
                copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    [install] = [
        rest for keyword, rest in instructions("build") if keyword == "RUN" and "pip install" in rest
    ]
    argv = [Image(venv, app).local(word) for word in shlex.split(install)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([*argv, "--quiet"], cwd=source, env=env, check=True)
    shutil.rmtree(source)  # as the final stage, which copies only the venv
    for keyword, rest in instructions("final"):
        if keyword == "COPY" and "--from=" not in rest:
            *names, destination = [word for word in rest.split() if not word.startswith("--")]
            target = Path(
                Image(venv, app).local(destination if destination.startswith("/") else f"{app}/{destination}")
            )
            target.mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy(REPO / name, target)
    return Image(venv, app)


def wait_until(check, what: str, process: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"{what}: exited with {process.returncode}\n{log.read_text(errors='replace')}"
            )
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what}: not ready in {timeout_s} s\n{log.read_text(errors='replace')}")


@contextmanager
def started(argv: list[str], image: Image, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`argv` run as the container runs it: from the application directory, with the image's environment."""
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, cwd=image.app, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_the_image_holds_the_installed_package_not_the_sources(image):
    where = subprocess.run(
        ["python", "-c", "import analytics.dashboard as d, bot; print(bot.__file__); print(d.NOTEBOOK)"],
        cwd=image.app,
        env=image.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()

    assert all(Path(path).is_relative_to(image.venv) for path in where), where
    assert Path(where[1]).is_file()  # the dashboard's notebook came with the package


def test_the_images_command_serves_the_bot_and_the_dashboard_shows_what_it_recorded(image, tmp_path):
    port = free_port()
    with FakeGraph(PAGE_TOKEN) as graph:
        secrets = {
            "PROMOBOT_APP_SECRET": APP_SECRET,
            "PROMOBOT_VERIFY_TOKEN": VERIFY_TOKEN,
            "PROMOBOT_PAGE_TOKEN": PAGE_TOKEN,
            "PROMOBOT_GRAPH_URL": graph.url,
        }
        bot_log = tmp_path / "bot.log"
        with started(image.command("CMD", port), image, image.env(**secrets), bot_log) as bot:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, "the bot", bot, bot_log)
            healthcheck = subprocess.run(image.command("HEALTHCHECK", port), env=image.env(), check=False)
            assert healthcheck.returncode == 0

            body = payloads.envelope(payloads.postback("5001", "GET_STARTED", ref="till-qr"))
            answer = httpx.post(
                f"{url}/webhook",
                content=body,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(APP_SECRET, body)},
            )
            assert (answer.status_code, answer.text) == (200, "EVENT_RECEIVED")
            graph.wait_for("5001", 1)

            bot.send_signal(signal.SIGTERM)  # docker stop
            assert bot.wait(timeout=30) == 0, bot_log.read_text()

    data = image.app / "data"
    assert [e["event"] for e in stored_events(data)] == ["conversation_started", "welcome_sent"]

    port = free_port()
    token = "container-dashboard-token"
    dashboard_log = tmp_path / "dashboard.log"
    # README: `docker run … -e PROMOBOT_DASHBOARD_TOKEN=… promobot python -m analytics dashboard --host …`
    argv = ["python", "-m", "analytics", "dashboard", "--host", "127.0.0.1", "--port", str(port)]
    env = image.env(PROMOBOT_DASHBOARD_TOKEN=token)
    with started(argv, image, env, dashboard_log) as dashboard:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{url}/api/status").status_code < 500,
            "the dashboard",
            dashboard,
            dashboard_log,
        )
        with chromium_page(offline_except=url) as page:
            page.goto(f"{url}/?token={token}", timeout=120_000)
            page.wait_for_function(
                "document.querySelector('.pb-tile[data-kpi=reached] .pb-value')?.textContent === '1'",
                timeout=120_000,
            )
            assert page.locator("svg.marks").count() >= 1  # charts drawn by the installed vl-convert
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "container-dashboard.png"), full_page=True)
