"""The package's import graph, read from the sources: imports go one way (a cycle makes
two modules one in all but name, and a newcomer cannot tell which to read first)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest_containers

PACKAGE = Path(pytest_containers.__file__).parent


def _imported_modules(source: str, modules: set[str]) -> set[str]:
    """The package's modules that ``source`` imports, at any place: module level, in a
    function, or under ``TYPE_CHECKING`` (a type-only import is a dependency too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "pytest_containers" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] != "pytest_containers":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from pytest_containers import wait
                found.update(alias.name for alias in node.names if alias.name in modules)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports; ``__init__`` (which re-exports the
    public names) is left out, as every submodule's import runs it anyway."""
    modules = {path.stem for path in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        if path.stem == "__init__":
            continue
        imported = _imported_modules(path.read_text(encoding="utf-8"), modules)
        graph[path.stem] = imported - {"__init__", path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            cycle = visit(imported)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle is not None:
            return cycle
    return None


def test_no_module_of_the_package_imports_itself_back() -> None:
    graph = import_graph(PACKAGE)
    assert {"wait", "_containers", "_engine"} <= set(graph)  # the graph was read at all
    assert find_cycle(graph) is None


def test_wait_strategies_do_not_import_the_container_class() -> None:
    assert "_containers" not in import_graph(PACKAGE)["wait"]


def test_a_cycle_is_found_through_lazy_and_type_only_imports(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "a.py").write_text("def f():\n    from pytest_containers.b import g\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pytest_containers import a\n"
    )
    (tmp_path / "c.py").write_text("import pytest_containers.a\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
