"""The summary of images, as the README and the docs show it (pure logic)."""

from __future__ import annotations

from pytest_containers._base.image import Image
from pytest_containers._suite.run_report import summary_lines
from tests import pages

README_IMAGES = [
    Image(
        "redis:7",
        "docker.io/library/redis:7@sha256:1f0e4c7a9b2d" + "0" * 52,
        "sha256:" + "e" * 64,
        digest="sha256:1f0e4c7a9b2d" + "0" * 52,
        source="pulled",
        seconds=0.41,
        pinned=True,
    ),
    Image(
        "postgres:16",
        "docker.io/library/postgres:16",
        "sha256:" + "f" * 64,
        digest="sha256:9a2c41d07e5b" + "0" * 52,
        source="loaded",
        seconds=1.18,
    ),
    Image(
        "build:tests/app",
        "build:tests/app",
        "sha256:5d1c0b7e8f3a" + "0" * 52,
        source="built",
        seconds=3.02,
    ),
]


def _shown_summaries() -> list[list[str]]:
    header = "------------------------------ containers: images ------------------------------\n"
    shown = []
    for page in pages.PAGES:
        for block in page.read_text().split(header)[1:]:
            shown.append(block.split("```", 1)[0].rstrip("\n").splitlines())
    return shown


def test_the_summary_the_readme_and_docs_show_is_what_the_plugin_prints() -> None:
    shown = _shown_summaries()
    assert len(shown) >= 2
    for lines in shown:
        assert lines == summary_lines(README_IMAGES)
