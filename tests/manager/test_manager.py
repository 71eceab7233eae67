"""The manager behind the fixtures, against the real engine."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import docker
import pytest

from pytest_containers._base.settings import Settings
from pytest_containers._containers.container import ContainerSpec
from pytest_containers._manager.manager import ContainerManager
from tests.testenv import BUSYBOX, DOCKER_PY_POOL, REGISTRY, open_descriptors, run_containers

pytestmark = pytest.mark.docker


def test_fifty_containers_started_and_released_leave_nothing_and_leak_nothing(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    run_id = uuid.uuid4().hex
    manager = ContainerManager(
        Settings(mirror=REGISTRY, cache_dir=tmp_path), run_id=run_id, worker="main"
    )
    spec = ContainerSpec.from_kwargs(BUSYBOX, command=["sleep", "30"])
    try:
        manager.release(manager.start(spec))  # warm up: client, cache, watchdog, sweep
        (sockets, fds), threads = open_descriptors(), threading.active_count()
        for _ in range(50):
            manager.release(manager.start(spec))
        manager.wait_for_removals()  # removals run in the background, off the tests' path
        assert run_containers(docker_client, run_id) == []
        sockets_after, fds_after = open_descriptors()
        assert fds_after <= fds + 2
        # One pool (the manager's client) may fill up; a socket per container would not fit.
        assert sockets_after <= sockets + DOCKER_PY_POOL
        assert threading.active_count() <= threads + 1
    finally:
        manager.close()
        manager.guard.stop()
    assert run_containers(docker_client, run_id) == []
