"""The errors, as a user sees them: every one importable from the package, listed in the
table of docs/reference/errors.md, and copied or pickled with all it carries. Pure: no engine."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import pytest

import pytest_containers
from pytest_containers import errors
from tests.testenv import ROOT


def _error_classes() -> list[str]:
    return [
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == errors.__name__
    ]


def test_every_error_is_exported_from_errors_and_the_package() -> None:
    names = _error_classes()
    assert len(names) >= 15
    assert sorted(names) == sorted(errors.__all__)
    for name in names:
        assert name in pytest_containers.__all__
        assert getattr(pytest_containers, name) is getattr(errors, name)


def test_every_error_is_in_the_error_table_of_the_docs() -> None:
    page = (ROOT / "docs" / "reference" / "errors.md").read_text()
    rows = re.findall(r"^\| `(\w+)`", page, re.MULTILINE)
    assert sorted(rows) == sorted(_error_classes())


@pytest.mark.parametrize(
    "error",
    [
        errors.CacheDirError("bad dir", path=Path("/c")),
        errors.ArchiveError("bad tar", path=Path("/a.tar"), image="redis:7", corrupt=True),
        errors.LockFileError("bad line", path=Path("containers.lock"), line=3),
        errors.ImagePullError("no", image="redis:7", registry="r", reason="x", kind="stalled"),
        errors.ContainerStartupError("exited", image="redis:7", exit_code=1, logs="boom"),
        errors.NetworkError("gone", network="backend", image="redis:7"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_error_copies_and_pickles_with_everything_it_carries(
    error: errors.ContainerError,
) -> None:
    # The fixtures copy an error to name the test in it; keyword-only data broke that.
    for clone in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert type(clone) is type(error)
        assert vars(clone) == vars(error)
        assert clone.args == error.args
        assert str(clone) == str(error)
    named = copy.copy(error)
    named.test = "test_x.py::test_y"
    assert str(named).startswith("test_x.py::test_y: ")
    assert error.test is None
