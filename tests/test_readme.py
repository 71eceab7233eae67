"""Every Python example of the README and of docs/ runs, as a user would paste it, against
the local registry (Docker Hub names through the mirror); every relative link of those
pages leads to a file and heading that exist."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import docker
import pytest

from tests import pages
from tests.testenv import MIRROR_OPTION, ROOT, run_containers, run_networks

EXAMPLES = pages.examples()


def test_the_readme_and_the_docs_have_examples() -> None:
    ids = [example_id for example_id, _ in EXAMPLES]
    assert sum(example_id.startswith("README.md-") for example_id in ids) >= 4
    assert sum(example_id.startswith("docs/") for example_id in ids) >= 10


@pytest.mark.docker
@pytest.mark.usefixtures("builds_cleaned")
@pytest.mark.parametrize(
    "example", [code for _, code in EXAMPLES], ids=[example_id for example_id, _ in EXAMPLES]
)
def test_an_example_passes(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, example: str
) -> None:
    pytester.makepyfile(test_example=example)
    # The build examples' context, where the pages say it is (relative to the rootdir).
    shutil.copytree(ROOT / "examples" / "app", pytester.path / "examples" / "app")
    run_id = uuid.uuid4().hex
    result = pytester.runpytest_subprocess(
        MIRROR_OPTION, f"--testrunuid={run_id}", "-p", "no:cacheprovider", timeout=300
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1, result.stdout.str()
    assert set(outcomes) <= {"passed", "seconds"}, result.stdout.str()
    assert run_containers(docker_client, run_id) == []
    assert run_networks(docker_client, run_id) == []


@pytest.mark.parametrize("page", pages.PAGES, ids=pages.name)
def test_every_relative_link_leads_to_a_file_and_heading(page: Path) -> None:
    broken = []
    for link in pages.relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.is_relative_to(ROOT) or not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and (target.suffix != ".md" or anchor not in pages.anchors(target)):
            broken.append(f"{link}: no heading #{anchor} in {pages.name(target)}")
    assert broken == []


@pytest.mark.parametrize("page", pages.PAGES, ids=pages.name)
def test_headings_get_the_same_anchor_on_github_and_in_mkdocs(page: Path) -> None:
    # GitHub turns each space into a hyphen, MkDocs a run of them into one; ASCII
    # headings without such runs get the same anchor from both, so one link serves both.
    odd = [h for h in pages.headings(page) if not h.isascii() or "--" in pages.slug(h)]
    assert odd == []
