"""``scope="run"``: one container for the whole run, shared by every xdist worker. The
first process to need it starts it under a machine-wide lock and records its id; the
others attach to it. One that died is replaced once per run; the run's end removes it."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from pytest_containers._base.image import Image
from pytest_containers._base.locks import (
    ensure_private_dir,
    exclusive,
    key_path,
    private_subdir,
    read_json,
    write_json_atomic,
)
from pytest_containers._cleanup.sweep import RUN_SCOPED_DIR
from pytest_containers._containers.container import Container, ContainerSpec
from pytest_containers._containers.faults import container_fault
from pytest_containers._containers.networks import (
    Network,
    create_network,
    is_docker_mode,
    network_name,
)
from pytest_containers._engine.connection import Access
from pytest_containers.errors import ContainerError


def spec_fingerprint(spec: ContainerSpec) -> str:
    """A digest of the spec that is the same in every process of a run."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]


def run_scoped(
    client: docker.DockerClient,
    *,
    cache_dir: Path,
    run_id: str,
    image: Image,
    spec: ContainerSpec,
    access: Access,
    timeout: float,
    start: Callable[[], Container],
) -> Container:
    """The run's container for ``spec``: attached to when a process of the run started
    it and it runs, else started by ``start`` (and recorded for the others)."""
    directory = private_subdir(ensure_private_dir(cache_dir), RUN_SCOPED_DIR)
    fingerprint = spec_fingerprint(spec)
    lock = key_path(directory, run_id, fingerprint, suffix=".lock")
    state = lock.with_suffix(".json")
    with exclusive(lock, timeout=timeout * 2, what=f"run-scoped {spec.image}"):
        record = read_json(state)
        replaced = 0
        if record and record.get("run_id") == run_id:
            container_id = str(record.get("container_id"))
            attached = _attach(client, container_id, image, spec, access, timeout)
            if attached is not None:
                return attached
            # It died (killed, removed, the engine restarted): replaced once per run.
            fault = container_fault(client, container_id, container_id[:12])
            replaced = int(str(record.get("replaced") or 0)) + 1
            if replaced > 1:
                what = fault.message if fault is not None else "is not running"
                raise ContainerError(
                    f"the run-scoped container of {spec.image} died again after it was "
                    f"replaced once ({what}); the tests that need it fail",
                    image=spec.image,
                )
        container = start()
        write_json_atomic(
            state,
            {
                "run_id": run_id,
                "container_id": container.id,
                "spec": fingerprint,
                "replaced": replaced,
            },
        )
        return container


def _attach(
    client: docker.DockerClient,
    container_id: str,
    image: Image,
    spec: ContainerSpec,
    access: Access,
    timeout: float,
) -> Container | None:
    try:
        raw = client.containers.get(container_id)
    except docker.errors.NotFound:
        return None
    if raw.status != "running":
        return None
    container = Container(raw, image, spec, access=access, wait_timeout=timeout)
    if isinstance(spec.network, Network):
        container.network = spec.network
    elif isinstance(spec.network, str) and not is_docker_mode(spec.network):
        # The worker that started it made the network; this one finds it by name.
        for name in (raw.attrs.get("NetworkSettings") or {}).get("Networks") or {}:
            with contextlib.suppress(docker.errors.NotFound):
                found = client.networks.get(name)
                container.network = Network(found, logical=spec.network)
    return container


def run_network(
    client: docker.DockerClient,
    *,
    cache_dir: Path,
    run_id: str,
    logical: str,
    labels: dict[str, str],
    timeout: float,
) -> Network:
    """The run's one network of this logical name, for run-scoped containers, which any
    worker may start: the first makes it under a lock, the others find it by its name
    (the whole run id in it). The end of the run removes it."""
    directory = private_subdir(ensure_private_dir(cache_dir), RUN_SCOPED_DIR)
    lock = key_path(directory, run_id, "network", logical, suffix=".lock")
    name = network_name(run_id, logical, unique=run_id)
    with exclusive(lock, timeout=timeout, what=f"run-scoped network {logical}"):
        for found in client.networks.list(names=[name]):
            if found.name == name:
                return Network(found, logical=logical)
        return create_network(client, name=name, logical=logical, labels=labels)
