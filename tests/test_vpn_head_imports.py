"""vpn_head's import graph: no circles, never luigi or tasks/, no module over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "vpn_head"
MAX_LINES = 600


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
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


def package_graph() -> dict[str, set[str]]:
    modules = {f"vpn_head.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: imports_of(path) & set(modules) for name, path in modules.items()}


def test_find_circle_sees_a_circle_and_its_absence():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_vpn_head_has_no_import_circle():
    assert find_circle(package_graph()) == []


def test_vpn_head_never_imports_luigi_or_tasks_and_stays_small():
    for path in sorted(PACKAGE.glob("*.py")):
        forbidden = {name for name in imports_of(path) if name.split(".")[0] in ("luigi", "tasks")}
        assert not forbidden, f"{path.name} imports {sorted(forbidden)}"
        assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.name} is over {MAX_LINES} lines"
