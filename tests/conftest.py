from __future__ import annotations

from collections.abc import Callable, Iterator

import docker
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
