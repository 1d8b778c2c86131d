"""The shape of the code base: no import circle, the library never imports the Luigi layer, modules stay small.

These read the source (``ast``), so they see imports inside functions too, which a runtime check would miss.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("pipeline", "tasks", "vpn_head")
LIBRARY = ("pipeline", "vpn_head")
"""Library packages: they never import luigi or ``tasks`` (the thin Luigi layer that calls them)."""
MAX_LINES = 600


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name (``pipeline.cache.reader``)."""
    return {f"{package}.{path.stem}": path for package in PACKAGES
            for path in sorted((REPO / package).glob("*.py")) if path.stem != "__init__"}


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from vpn_head import engine`
    return names


def find_circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` (module -> modules it imports), or [] when there is none."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str]:
        state[module], _ = "open", stack.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return stack[stack.index(other):] + [other]
            if other not in state and (circle := visit(other)):
                return circle
        state[module], _ = "done", stack.pop()
        return []

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return []


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: (imports_of(path) & set(found)) - {name} for name, path in found.items()}


def test_find_circle_sees_a_circle_and_its_absence():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_function_level_imports(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from vpn_head import engine\n    import pipeline.cache.reader\n")
    assert {"vpn_head.engine.loop", "pipeline.cache.reader"} <= imports_of(tmp_path / "m.py")


def test_no_import_circle():
    assert find_circle(import_graph()) == []


@pytest.mark.parametrize("name", [n for n in modules() if n.split(".")[0] in LIBRARY])
def test_library_never_imports_luigi_or_tasks(name):
    forbidden = {other for other in imports_of(modules()[name]) if other.split(".")[0] in ("luigi", "tasks")}
    assert not forbidden, f"{name} imports {sorted(forbidden)}"


@pytest.mark.parametrize("name", list(modules()))
def test_module_is_small_enough_to_read(name):
    lines = len(modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines (over {MAX_LINES}); split it by job"


def test_readme_where_things_live_lists_exactly_the_modules():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `((?:pipeline|tasks|vpn_head)/\w+\.py)` \|", section, flags=re.M))
    on_disk = {f"{package}/{path.name}" for package in PACKAGES for path in (REPO / package).glob("*.py")
               if path.stem != "__init__"}
    assert listed == on_disk, f"missing from README: {sorted(on_disk - listed)}; gone: {sorted(listed - on_disk)}"
