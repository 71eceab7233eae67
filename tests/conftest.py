from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import docker
import docker.errors
import pytest

from tests.testenv import REGISTRY, RegistryLog, push_unique_image, remove_image


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The engine the suite runs against (scripts/testenv.sh made sure one answers)."""
    client = docker.from_env(timeout=120)
    yield client
    client.close()


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
