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
MAX_LINES = 650
MIN_SUBPACKAGES = {"pipeline": 6, "vpn_head": 5}
MAX_TOP_MODULES = {"pipeline": 4, "vpn_head": 3}
HEAVY = ("torch", "cv2", "av", "decord", "luigi", "matplotlib")
"""Third-party packages ``pipeline.cache`` never needs: reading a cache takes h5py, NumPy and pandas only."""


def modules() -> dict[str, Path]:
    """Every module of the project's packages at any depth, by dotted name (``pipeline.cache.reader``)."""
    return {".".join(path.relative_to(REPO).with_suffix("").parts): path for package in PACKAGES
            for path in sorted((REPO / package).rglob("*.py")) if path.stem != "__init__"}


def subpackages(package: str) -> list[Path]:
    """The sub-package folders of a package (one level down)."""
    return sorted(p.parent for p in (REPO / package).glob("*/__init__.py"))


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from vpn_head.engine import loop`
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
    (tmp_path / "m.py").write_text("def f():\n    from vpn_head.engine import loop\n    import pipeline.cache.reader\n")
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


def test_modules_walks_sub_packages():
    found = modules()
    assert "pipeline.cache.reader" in found and "vpn_head.model.vpn" in found and "tasks.cache" in found


@pytest.mark.parametrize("package", LIBRARY)
def test_packages_are_grouped_into_sub_packages(package):
    subs = subpackages(package)
    top = [p.stem for p in (REPO / package).glob("*.py") if p.stem != "__init__"]
    assert len(subs) >= MIN_SUBPACKAGES[package], f"{package}: {len(subs)} sub-packages"
    assert len(top) <= MAX_TOP_MODULES[package], f"{package} keeps {sorted(top)} at its top"
    folders = [p for p in (REPO / package).rglob("*") if p.is_dir() and p.name != "__pycache__"]
    assert all((folder / "__init__.py").is_file() for folder in folders), "a folder without __init__.py"


@pytest.mark.parametrize("init", sorted(str(p.relative_to(REPO)) for package in PACKAGES
                                        for p in (REPO / package).rglob("__init__.py")))
def test_init_files_stay_light(init):
    """An ``__init__`` imports nothing: importing ``pipeline.cache.layout`` must not load torch through a parent."""
    tree = ast.parse((REPO / init).read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], f"{init} imports"


def test_cache_package_needs_no_heavy_library():
    for name, path in modules().items():
        if name.startswith("pipeline.cache."):
            heavy = {i for i in imports_of(path) if i.split(".")[0] in HEAVY}
            assert not heavy, f"{name} imports {sorted(heavy)}"


def test_head_never_imports_the_build():
    for name, path in modules().items():
        if name.startswith("vpn_head."):
            build = {i for i in imports_of(path) if i.startswith(("pipeline.build", "pipeline.tools"))}
            assert not build, f"{name} imports {sorted(build)}"


def test_no_alias_modules():
    """Every module does work of its own: no file that only re-exports another's names."""
    for name, path in modules().items():
        body = [n for n in ast.parse(path.read_text(encoding="utf-8")).body
                if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert not body or not all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body), f"{name} is an alias"


def test_docs_where_things_live_lists_exactly_the_modules():
    layout = (REPO / "docs" / "layout.md").read_text(encoding="utf-8")
    section = layout.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `((?:pipeline|tasks|vpn_head)/[\w/]+\.py)` \|", section, flags=re.M))
    on_disk = {str(path.relative_to(REPO)) for path in modules().values()}
    assert listed == on_disk, f"missing from docs/layout.md: {sorted(on_disk - listed)}; gone: {sorted(listed - on_disk)}"


CITED = re.compile(r"(?<![\w/.])((?:docs|bench|tests|pipeline|vpn_head|tasks)/[\w/.-]+\.(?:md|py))")


def test_every_file_the_code_cites_exists():
    """A module that names a file of the repository (``docs/design.md``, ``bench/bench_crops.py``) names one that
    is there; files under ``bench/results`` are written by runs and are not checked."""
    missing = set()
    for path in [*modules().values(), *sorted((REPO / "bench").glob("*.py"))]:
        for cited in CITED.findall(path.read_text(encoding="utf-8")):
            if not cited.startswith("bench/results") and not (REPO / cited).exists():
                missing.add(f"{path.relative_to(REPO)} cites {cited}")
    assert not missing, sorted(missing)


def test_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"
    head = "\n".join(lines[:12])
    assert "make demo" in head and "make test" in head
    for page in ("datasets", "make", "layout", "cache", "head", "finetune", "scale", "fidelity", "design"):
        assert (REPO / "docs" / f"{page}.md").is_file(), f"docs/{page}.md"
