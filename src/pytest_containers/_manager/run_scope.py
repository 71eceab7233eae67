"""``scope="run"``: one container for the whole run, shared by every xdist worker. The
first process to need it starts it and records its id, once per run
(:class:`~pytest_containers._base.once.OncePerRun`: the recorded container running is
what is found; starting one and recording it is what is made, under a machine-wide lock);
the others attach to it. One that died is replaced once per run: the record counts the
replacements, and a second death fails each test that needs it. The run's end removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import docker
import docker.errors

from pytest_containers._base.image import Image
from pytest_containers._base.locks import ensure_private_dir, exclusive, key_path, private_subdir
from pytest_containers._base.once import OncePerRun
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


class _Held(NamedTuple):
    """The run's container, and how often this run replaced it (``0``: the first)."""

    container: Container
    replaced: int


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
    it and it runs, else started by ``start`` (and recorded for the others). One found
    dead is replaced once; found dead again, it raises :class:`ContainerError`."""
    directory = private_subdir(ensure_private_dir(cache_dir), RUN_SCOPED_DIR)
    fingerprint = spec_fingerprint(spec)
    lock = key_path(directory, run_id, fingerprint, suffix=".lock")
    once = OncePerRun(
        lock,
        lock.with_suffix(".json"),
        run_id=run_id,
        timeout=timeout * 2,
        what=f"run-scoped {spec.image}",
        about={"spec": fingerprint},
    )

    def find() -> _Held | None:
        record = once.recorded()
        if record is None:
            return None
        attached = _attach(client, str(record.get("container_id")), image, spec, access, timeout)
        return None if attached is None else _Held(attached, _replaced(record))

    def make() -> _Held:
        record = once.recorded()
        if record is None:
            return _Held(start(), 0)
        # Under the lock, the recorded container was found not running: it died (killed,
        # removed, the engine restarted). Replaced once per run.
        if _replaced(record) >= 1:
            raise _died_again(client, str(record.get("container_id")), spec)
        return _Held(start(), _replaced(record) + 1)

    held, _ = once.get(
        find=find,
        make=make,
        describe=lambda held: {"container_id": held.container.id, "replaced": held.replaced},
        # Nothing of a failure is recorded (a start that failed, a container that died
        # again): the next asker looks at the recorded container itself, so there is no
        # failure to replay either.
        failure=lambda error: None,
        replay=lambda fields: ContainerError(str(fields.get("message")), image=spec.image),
    )
    return held.container


def _replaced(record: Mapping[str, object]) -> int:
    return int(str(record.get("replaced") or 0))


def _died_again(
    client: docker.DockerClient, container_id: str, spec: ContainerSpec
) -> ContainerError:
    fault = container_fault(client, container_id, container_id[:12])
    what = fault.message if fault is not None else "is not running"
    return ContainerError(
        f"the run-scoped container of {spec.image} died again after it was "
        f"replaced once ({what}); the tests that need it fail",
        image=spec.image,
    )


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
