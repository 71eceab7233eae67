"""The house rules a reviewer would otherwise check by eye: plugin.py holds hooks only,
and test modules share helpers through conftest.py and testenv.py, never each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "pytest_containers"


def test_plugin_py_is_short_and_holds_hooks_only() -> None:
    source = (PACKAGE / "plugin.py").read_text()
    assert len(source.splitlines()) <= 200
    tree = ast.parse(source)
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert functions, "plugin.py defines the hooks"
    assert [name for name in functions if not name.startswith("pytest_")] == []


def test_no_test_module_imports_another() -> None:
    offenders = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            module = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
            if module.startswith("tests.") and module.rpartition(".")[2].startswith("test_"):
                offenders.append(f"{path.name} imports {module}")
    assert offenders == []


def test_the_tests_mirror_the_package_folders() -> None:
    """A test of ``_images/cache.py`` is found in ``tests/images/``."""
    folders = {path.parent.name.lstrip("_") for path in PACKAGE.glob("*/__init__.py")}
    tests = {path.parent.name for path in (ROOT / "tests").glob("*/__init__.py")}
    assert folders == tests
