"""``scope="run"`` against the real engine, without pytest runs: each call of
``run_scoped`` is what another worker of the run would do (the record in the cache
directory is all they share), so "started once" means one call of ``start``."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from pytest_containers._base.image import Image
from pytest_containers._containers.container import Container, ContainerSpec
from pytest_containers._engine.connection import access_for
from pytest_containers._manager.run_scope import run_scoped
from pytest_containers.errors import ContainerError
from tests.testenv import Starter

pytestmark = pytest.mark.docker

COMMAND = ["sleep", "300"]


def _ask(
    client: docker.DockerClient, busybox: Image, start: Starter, cache: Path, run_id: str
) -> Container:
    return run_scoped(
        client,
        cache_dir=cache,
        run_id=run_id,
        image=busybox,
        spec=ContainerSpec.from_kwargs(busybox.ref, command=COMMAND),
        access=access_for(client),
        timeout=30,
        start=lambda: start(busybox, command=COMMAND),
    )


def _record(cache: Path) -> dict[str, object]:
    (path,) = (cache / "run-scoped").glob("*.json")
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def test_the_run_starts_its_container_once_and_later_askers_attach_to_it(
    docker_client: docker.DockerClient, busybox: Image, start: Starter, tmp_path: Path
) -> None:
    first = _ask(docker_client, busybox, start, tmp_path, "run-1")
    again = _ask(docker_client, busybox, start, tmp_path, "run-1")
    assert again.id == first.id
    assert [c.id for c in start.made] == [first.id]
    assert (_record(tmp_path)["container_id"], _record(tmp_path)["replaced"]) == (first.id, 0)
    # Another run has a container of its own.
    other = _ask(docker_client, busybox, start, tmp_path, "run-2")
    assert other.id != first.id


def test_a_dead_run_container_is_replaced_once_then_fails_with_one_message(
    docker_client: docker.DockerClient, busybox: Image, start: Starter, tmp_path: Path
) -> None:
    first = _ask(docker_client, busybox, start, tmp_path, "run-1")
    docker_client.api.kill(first.id)
    replacement = _ask(docker_client, busybox, start, tmp_path, "run-1")
    assert replacement.id != first.id
    assert _record(tmp_path)["replaced"] == 1
    assert _ask(docker_client, busybox, start, tmp_path, "run-1").id == replacement.id

    docker_client.api.kill(replacement.id)
    said = []
    for _ in range(2):
        with pytest.raises(ContainerError, match="died again after it was replaced once") as e:
            _ask(docker_client, busybox, start, tmp_path, "run-1")
        said.append(e.value.message)
    assert said[0] == said[1]
    assert replacement.id[:12] in said[0]
    assert len(start.made) == 2  # the second death started nothing
