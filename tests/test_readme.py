"""Every Python example in the README runs, as a user would paste it, against the local
registry (Docker Hub names through the mirror)."""

from __future__ import annotations

import re
import shutil
import uuid

import docker
import pytest

from tests.testenv import MIRROR_OPTION, ROOT, run_containers, run_networks

pytestmark = pytest.mark.docker

_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
EXAMPLES = [
    block for block in _BLOCK.findall((ROOT / "README.md").read_text()) if "def test_" in block
]


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.usefixtures("builds_cleaned")
@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example{n}" for n in range(len(EXAMPLES))])
def test_a_readme_example_passes(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, example: str
) -> None:
    pytester.makepyfile(test_example=example)
    # The build example's context, where the README says it is (relative to the rootdir).
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
