"""The layout: no module of bot/ or analytics/ imports one that imports it back, even through others."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter

from tests.support.paths import REPO

PACKAGES = ("bot", "analytics")


def imports_of_every_module() -> dict[str, set[str]]:
    """Each module of the packages, and the modules of the packages it imports (inside functions too)."""
    modules = {
        f"{package}.{path.stem}": path
        for package in PACKAGES
        for path in (REPO / package).glob("*.py")
        if path.stem not in ("__init__", "__main__")
    }
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = (imported & modules.keys()) - {name}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = imports_of_every_module()
    assert len(graph) > 40  # every module was read

    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        raise AssertionError(f"modules that import each other: {' -> '.join(exc.args[1])}") from None
