"""The README and the pages of docs/ as the tests read them: their Python blocks, the
anchors of their headings and their relative links. Pure: no engine, no pytest."""

from __future__ import annotations

import re
from pathlib import Path

from tests.testenv import ROOT

#: Every page a user reads: the README, then docs/ in path order.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
_LINK = re.compile(r"\]\(([^()\s]+)\)")


def name(page: Path) -> str:
    """The page's path from the root of the repository: ``docs/how-to/waits.md``."""
    return page.relative_to(ROOT).as_posix()


def blocks(page: Path, language: str) -> list[str]:
    """The fenced code blocks of ``language`` on the page, in order."""
    return [code for lang, code in _FENCE.findall(page.read_text()) if lang == language]


def examples() -> list[tuple[str, str]]:
    """``(id, code)`` of every Python block that defines a test, on every page; the id
    names the page and the block's place among the page's examples (``README.md-1``)."""
    examples = []
    for page in PAGES:
        defining = [code for code in blocks(page, "python") if "def test_" in code]
        examples += [(f"{name(page)}-{n}", code) for n, code in enumerate(defining, 1)]
    return examples


def _prose(page: Path) -> str:
    return _FENCE.sub("", page.read_text())


def headings(page: Path) -> list[str]:
    return _HEADING.findall(_prose(page))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading (MkDocs gives the same to the headings
    ``tests/test_readme.py`` allows: ASCII, no runs of spaces or hyphens)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in headings(page):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    """The page's links that point into the repository (not ``https://``, not ``mailto:``)."""
    return [
        target
        for target in _LINK.findall(_prose(page))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)
    ]
