"""Reading ``container`` markers: pure, no engine."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_containers import DeclarationError
from pytest_containers._manager.declaration import MARKER, Declaration, declare
from pytest_containers._suite.markers import declarations, image_for, param


def _declaration(*images: str, index: int = 0) -> Declaration:
    declared = declare(MARKER, images, {"name": "db"})
    return Declaration(**{**declared.__dict__, "index": index})


def test_a_marker_with_one_image_runs_it_for_every_test() -> None:
    declaration = _declaration("redis:7")
    assert image_for(declaration, SimpleNamespace()) == "redis:7"
    # Another parameter of the test does not change it.
    other = SimpleNamespace(callspec=SimpleNamespace(params={"n": 3}))
    assert image_for(declaration, other) == "redis:7"


def test_a_marker_with_several_images_runs_the_one_the_test_was_made_for() -> None:
    declaration = _declaration("redis:6", "redis:7", index=1)
    picked = SimpleNamespace(callspec=SimpleNamespace(params={param(declaration): "redis:7"}))
    assert image_for(declaration, picked) == "redis:7"
    # The parameter of another marker of the same test is not this one's.
    elsewhere = SimpleNamespace(callspec=SimpleNamespace(params={"_container_image_0": "x:1"}))
    assert image_for(declaration, elsewhere) == "redis:6"


def _node(*marks: pytest.MarkDecorator, tmp_path: Path) -> SimpleNamespace:
    node = SimpleNamespace(nodeid="test_x.py::test_x", config=SimpleNamespace(rootpath=tmp_path))
    node.iter_markers_with_node = lambda name: [(node, mark.mark) for mark in marks]
    return node


@pytest.mark.parametrize(
    ("marks", "says"),
    [
        ([pytest.mark.container("redis:7", build="ctx")], "takes an image or build=, not both"),
        ([pytest.mark.container()], "needs an image"),
        ([pytest.mark.container("redis:7", dockerfile="D")], "dockerfile only go with build="),
        ([pytest.mark.container(7)], "images must be non-empty strings, got 7"),
        ([pytest.mark.container("Not An Image")], "Not An Image"),
        ([pytest.mark.container("redis:7", start="later")], "invalid container start 'later'"),
        (
            [pytest.mark.container("redis:7", scope="module", reset=7)],
            "reset= takes a command",
        ),
        (
            [pytest.mark.container("redis:7"), pytest.mark.container("redis:6")],
            "several container markers are named 'redis'",
        ),
    ],
)
def test_a_malformed_marker_is_a_collection_error_that_says_why(
    marks: list[pytest.MarkDecorator], says: str, tmp_path: Path
) -> None:
    with pytest.raises(DeclarationError, match=re.escape(says)) as caught:
        declarations(_node(*marks, tmp_path=tmp_path))
    assert str(caught.value).startswith("test_x.py::test_x: ")
