from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from pytest_containers._base.image import Image
from tests.testenv import (
    MIRROR_OPTION,
    REGISTRY,
    RegistryLog,
    Starter,
    leftovers,
    push_unique_image,
    remove_image,
    run_containers,
    run_networks,
    seed_image,
)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The engine the suite runs against (scripts/testenv.sh made sure one answers)."""
    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox(docker_client: docker.DockerClient) -> Image:
    """The busybox seed image, pulled straight from the local registry."""
    return seed_image(docker_client, "busybox", "1.35")


@pytest.fixture(scope="session")
def redis(docker_client: docker.DockerClient) -> Image:
    """The redis seed image, pulled straight from the local registry."""
    return seed_image(docker_client, "redis", "7")


@pytest.fixture(scope="module")
def no_leftovers(docker_client: docker.DockerClient) -> Iterator[None]:
    """At the end of the module, no container started directly by it is left. Requested
    by what starts containers, so tests that start none need no engine."""
    yield
    assert leftovers(docker_client) == []


@pytest.fixture
def start(docker_client: docker.DockerClient, no_leftovers: None) -> Iterator[Starter]:
    """Start containers for one test; removed afterwards."""
    starter = Starter(docker_client)
    yield starter
    starter.remove_all()


@pytest.fixture
def registry_log() -> RegistryLog:
    """The registry's access log from the start of this test on."""
    return RegistryLog()


@pytest.fixture
def unique_image(docker_client: docker.DockerClient) -> Iterator[Callable[[], str]]:
    """Make images that the registry serves and the engine lacks; removed afterwards."""
    made: list[str] = []

    def make() -> str:
        name = push_unique_image(docker_client)
        made.append(name)
        return name

    yield make
    for name in made:
        remove_image(docker_client, f"{REGISTRY}/library/{name}")


@pytest.fixture
def builds_cleaned(docker_client: docker.DockerClient, pytester: pytest.Pytester) -> Iterator[None]:
    """Afterwards, remove the images that inner runs built from contexts under pytester's
    directory (builds outlive runs on purpose, so the test must do it)."""
    yield
    for image in docker_client.images.list(filters={"label": "pytest-containers.build-key"}):
        context = (image.labels or {}).get("pytest-containers.context", "")
        if context.startswith(str(pytester.path)):
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(str(image.id), force=True)


#: Parametrizes a test that runs an inner suite as users do: without xdist and with two
#: workers (the test takes ``workers``, the arguments to add).
SERIAL_AND_XDIST = pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])


class InnerRuns:
    """Runs pytester's suite as users run it: pytest in a subprocess, against the local
    registry through the mirror, each run with its own run id and this test's cache dir."""

    def __init__(self, pytester: pytest.Pytester, cache_dir: Path) -> None:
        self.pytester = pytester
        self.cache_dir = cache_dir
        self.run_ids: list[str] = []

    def __call__(self, *args: str, mirror: str = MIRROR_OPTION) -> pytest.RunResult:
        # --testrunuid is xdist's option: without xdist the run id is the plugin's own.
        run_id = [f"--testrunuid={self.new_run_id()}"] if "no:xdist" not in args else []
        return self.pytester.runpytest_subprocess(
            mirror,
            f"--container-cache-dir={self.cache_dir}",
            *run_id,
            "-p",
            "no:cacheprovider",
            *args,
            timeout=300,
        )

    def new_run_id(self) -> str:
        """A run id for a run the test starts itself; cleaned up like the others."""
        self.run_ids.append(uuid.uuid4().hex)
        return self.run_ids[-1]

    def leftovers(self, docker_client: docker.DockerClient) -> list[str]:
        return [name for run_id in self.run_ids for name in run_containers(docker_client, run_id)]

    def leftover_networks(self, docker_client: docker.DockerClient) -> list[str]:
        return [name for run_id in self.run_ids for name in run_networks(docker_client, run_id)]


@pytest.fixture
def run_suite(
    pytester: pytest.Pytester, docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[InnerRuns]:
    """Run the test's pytester suite; afterwards, remove whatever the runs left."""
    runs = InnerRuns(pytester, tmp_path / "cache")
    yield runs
    for name in runs.leftovers(docker_client):
        with contextlib.suppress(docker.errors.NotFound):  # a watchdog may be quicker
            docker_client.containers.get(name).remove(force=True)
    for name in runs.leftover_networks(docker_client):
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.networks.get(name).remove()
