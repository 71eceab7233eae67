"""The package's import graph, read from the sources: imports go down the layers only, and
never in a cycle (a cycle makes two modules one in all but name, and a newcomer cannot
tell which to read first). The table of layers is ARCHITECTURE.md's drawing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_containers

PACKAGE = Path(pytest_containers.__file__).parent

#: The layers, lowest first: a module may import its own layer's modules and those of
#: the layers below, never those above. A folder is a layer; the top-level modules are
#: placed by hand (``wait`` is the public face of the containers layer).
LAYERS: list[tuple[str, set[str]]] = [
    ("errors", {"errors"}),
    ("base", {"_base"}),
    ("engine", {"_engine"}),
    ("cleanup", {"_cleanup"}),
    ("images", {"_images"}),
    ("containers", {"_containers", "wait", "presets"}),
    ("manager", {"_manager"}),
    ("pytest side", {"_suite", "newhooks", "plugin"}),
]


def module_name(path: Path, package: Path) -> str:
    """``_images/cache.py`` -> ``_images.cache``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(source: str, modules: set[str]) -> set[str]:
    """The package's modules that ``source`` imports, at any place: module level, in a
    function, or under ``TYPE_CHECKING`` (a type-only import is a dependency too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # from pytest_containers._images import cache: the module is cache, not the folder
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names.append(node.module)
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "pytest_containers" or len(parts) < 2:
                continue
            dotted = ".".join(parts[1:])
            # The longest name that is a module: a function's name is not one.
            while dotted and dotted not in modules:
                dotted = dotted.rpartition(".")[0]
            if dotted:
                found.add(dotted)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports. ``__init__`` files are left out as
    importers (every submodule's import runs them anyway), and as imports of a folder when
    a module of it is imported."""
    paths = sorted(package.rglob("*.py"))
    modules = {module_name(path, package) for path in paths} - {""}
    graph: dict[str, set[str]] = {}
    for path in paths:
        name = module_name(path, package)
        if path.stem == "__init__":
            continue
        imported = _imported_modules(path.read_text(encoding="utf-8"), modules)
        folders = {m.rpartition(".")[0] for m in imported}
        graph[name] = imported - {name} - (folders & modules)
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


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module`` (``_images.cache`` is in ``_images``)."""
    top = module.split(".")[0]
    for index, (_, members) in enumerate(LAYERS):
        if top in members:
            return index
    raise LookupError(f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a imports b (layer x above layer y)"`` for each import that goes up."""
    found = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            if layer_of(target) > layer_of(module):
                found.append(
                    f"{module} imports {target} ({LAYERS[layer_of(target)][0]} is above "
                    f"{LAYERS[layer_of(module)][0]})"
                )
    return found


def test_no_module_of_the_package_imports_itself_back() -> None:
    graph = import_graph(PACKAGE)
    assert {"wait", "_containers.container", "_engine.connection"} <= set(graph)
    assert find_cycle(graph) is None


def test_imports_go_down_the_layers_only() -> None:
    graph = import_graph(PACKAGE)
    assert upward_imports(graph) == []


def test_every_module_is_in_a_layer_and_every_folder_is_one() -> None:
    graph = import_graph(PACKAGE)
    for module in graph:
        if module != "__init__":
            layer_of(module)
    folders = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert folders <= set().union(*(members for _, members in LAYERS))


def test_the_layers_are_the_architecture_drawing() -> None:
    drawing = (PACKAGE.parents[1] / "ARCHITECTURE.md").read_text()
    for name, members in LAYERS:
        assert name in drawing
        for member in members:
            assert f"{member}/" in drawing or f"{member}.py" in drawing, member


def test_wait_strategies_do_not_import_the_container_class() -> None:
    assert "_containers.container" not in import_graph(PACKAGE)["wait"]


def test_no_module_below_the_pytest_side_imports_pytest() -> None:
    below = [module for module in import_graph(PACKAGE) if layer_of(module) < len(LAYERS) - 1]
    offenders = []
    for module in below:
        path = PACKAGE / (module.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(name == "pytest" or name.startswith(("pytest.", "_pytest")) for name in names):
                offenders.append(module)
    assert offenders == []


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


def test_an_import_from_a_folder_names_the_module_not_the_folder(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "_low").mkdir()
    (tmp_path / "_low" / "__init__.py").write_text("")
    (tmp_path / "_low" / "x.py").write_text("def f(): ...\n")
    (tmp_path / "_high").mkdir()
    (tmp_path / "_high" / "__init__.py").write_text("")
    (tmp_path / "_high" / "y.py").write_text(
        "from pytest_containers._low import x\nfrom pytest_containers._low.x import f\n"
    )
    (tmp_path / "_low" / "z.py").write_text("from pytest_containers._high.y import g\n")
    graph = import_graph(tmp_path)
    assert graph == {"_low.x": set(), "_high.y": {"_low.x"}, "_low.z": {"_high.y"}}


@pytest.mark.parametrize(
    ("module", "layer"),
    [("errors", "errors"), ("wait", "containers"), ("_suite.state", "pytest side")],
)
def test_each_module_has_the_layer_of_its_folder(module: str, layer: str) -> None:
    assert LAYERS[layer_of(module)][0] == layer
