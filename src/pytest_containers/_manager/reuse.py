"""Reuse across runs, for local development: ``reuse=True`` keeps a container after the
run for the next run with an identical declaration.

* **The key** (:func:`reuse_key`) is everything that makes the container what it is: the
  spec (its wait excepted: waiting changes nothing), the image id and digest (a moved tag
  or a new build is another image), the networks and aliases, and how tests reach it. It
  is stored on the container as :data:`REUSE_LABEL`.
* **Leases** (:class:`ReusePool`): one process at a time uses a reused container. Each key
  has slots ``<cache>/reuse/<key>-<n>.lock``, an OS ``flock`` held for as long as the
  container is in use (the kernel drops it when its holder dies, however it dies), and a
  state file ``<key>-<n>.json`` naming the slot's container and when it was last used. A
  process that finds slot 0 leased takes slot 1, and so on: concurrent runs each get their
  own container (a pool), and every one of them is reusable later.
* **Expiry** (:func:`sweep_reused`): reused containers carry no run label, so the end of a
  run, the watchdog and the sweep of dead runs never see them. Each run's start-up sweep
  removes those idle longer than ``container_reuse_ttl``, and those no state file names
  (a run killed while creating one); ``--container-prune`` removes every one not in use.

pytest-free; docker-py is only handed in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_containers._base.locks import open_private, private_subdir, read_json, write_json_atomic
from pytest_containers._base.settings import format_duration
from pytest_containers._cleanup.watchdog import (
    LABEL_PREFIX,
    RUN_LABEL,
    Resource,
    remove_resources,
)

if TYPE_CHECKING:
    import docker

    from pytest_containers._base.image import Image
    from pytest_containers._containers.container import Container, ContainerSpec
    from pytest_containers._engine.connection import Access

__all__ = [
    "REUSE_DIR",
    "REUSE_DIR_LABEL",
    "REUSE_LABEL",
    "REUSE_SLOT_LABEL",
    "Lease",
    "ReusePool",
    "ReuseSweep",
    "describe_reuse",
    "prune_lines",
    "reusable_network",
    "reuse_key",
    "reuse_summary",
    "sweep_reused",
]

#: The key of a reused container (see :func:`reuse_key`).
REUSE_LABEL = f"{LABEL_PREFIX}.reuse"
#: Its slot among the containers of that key (``<key>-<slot>.lock``).
REUSE_SLOT_LABEL = f"{LABEL_PREFIX}.reuse-slot"
#: The cache directory whose ``reuse/`` holds its lease and state.
REUSE_DIR_LABEL = f"{LABEL_PREFIX}.reuse-dir"
REUSE_DIR = "reuse"
#: Slots tried per key before a process gives up reusing and starts a plain container.
MAX_SLOTS = 32
#: How long a busy slot is tried again: a sweep holds one for an instant, a run for long.
_BUSY_WAIT = 0.3
_KEY = re.compile(r"[0-9a-f]{8,64}")


# -- the key -----------------------------------------------------------------------


def reusable_network(spec: ContainerSpec) -> bool:
    """Whether a container of ``spec`` can outlive the run: not on a network the run
    makes (``network="name"`` is private to a scope, a ``network_fixture`` is removed at
    its end); Docker's modes and networks made outside the plugin are fine."""
    from pytest_containers._containers.networks import Network, is_docker_mode

    network = spec.network
    if network is None:
        return True
    if isinstance(network, Network):
        labels = (network.raw.attrs or {}).get("Labels") or {}
        return RUN_LABEL not in labels
    return is_docker_mode(network)


def reuse_key(spec: ContainerSpec, image: Image, access: Access | None = None) -> str:
    """The key of what a container of ``spec`` on ``image`` is: every field of the spec
    but its wait, the image's id and digest, the network's engine name (a network made
    outside the plugin keeps its name across runs), and where its ports are published and
    which network the tests reach it on (``access``). 20 hex digits."""
    from pytest_containers._containers.networks import Network

    parts: list[tuple[str, str]] = []
    for spec_field in dataclasses.fields(spec):
        if spec_field.name == "wait":
            continue
        value = getattr(spec, spec_field.name)
        if isinstance(value, Network):
            value = ("network", value.name)
        parts.append((spec_field.name, repr(value)))
    parts.append(("image.id", image.id))
    parts.append(("image.digest", image.digest or ""))
    if access is not None:
        parts.append(("access", repr((access.mode, access.bind_ip, access.network))))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]


# -- leases ------------------------------------------------------------------------


@dataclass
class Lease:
    """One process's hold on slot ``slot`` of ``key``: the flock on ``lock`` lives in
    ``fd`` until :meth:`ReusePool.give_back` or :meth:`ReusePool.forget`."""

    key: str
    slot: int
    lock: Path
    fd: int
    container_id: str | None = None

    @property
    def state(self) -> Path:
        return self.lock.with_suffix(".json")


def _try_lock(path: Path) -> int | None:
    """The descriptor holding an exclusive flock on ``path``, or None when another holds
    it (another process, or another lease of this one: flocks of separate opens exclude
    each other)."""
    fd = open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _slot_path(directory: Path, key: str, slot: int) -> Path:
    return directory / f"{key}-{slot}.lock"


class ReusePool:
    """The reused containers one process leases, and what it reports of them.

    :meth:`start` hands out a ready container for a spec: the one its free slot names
    (still running and passing its wait), else a new one. What it leased goes back with
    :meth:`give_back` (kept for the next lease) or :meth:`forget` (it was removed).
    Thread-safe: a scope's containers may start at once.
    """

    def __init__(self, cache_dir: Path) -> None:
        # Absolute: the containers' labels name it, for the sweeps of every later run.
        self.cache_dir = Path(os.path.abspath(cache_dir))
        self._directory: Path | None = None
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        #: One record per container leased: id, name, image and "reused" or "started".
        self.records: list[dict[str, object]] = []
        #: What the start-up sweep removed (set by the manager's sweep thread).
        self.swept: ReuseSweep | None = None

    @property
    def directory(self) -> Path:
        if self._directory is None:
            self._directory = private_subdir(self.cache_dir, REUSE_DIR)
        return self._directory

    def labels(self, lease: Lease) -> dict[str, str]:
        """The labels that make a container this lease's (and no run's)."""
        return {
            REUSE_LABEL: lease.key,
            REUSE_SLOT_LABEL: str(lease.slot),
            REUSE_DIR_LABEL: str(self.cache_dir),
        }

    def lease(self, key: str) -> Lease | None:
        """The first free slot of ``key``, held until given back; None when
        :data:`MAX_SLOTS` are all in use."""
        for slot in range(MAX_SLOTS):
            path = _slot_path(self.directory, key, slot)
            deadline = time.monotonic() + (_BUSY_WAIT if path.exists() else 0.0)
            while True:
                fd = _try_lock(path)
                if fd is not None or time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
            if fd is None:
                continue
            record = read_json(path.with_suffix(".json")) or {}
            found = record.get("container_id")
            return Lease(key, slot, path, fd, str(found) if found else None)
        return None

    def start(
        self,
        client: docker.DockerClient,
        image: Image,
        spec: ContainerSpec,
        *,
        key: str,
        labels: Mapping[str, str],
        access: Access,
        wait_timeout: float,
    ) -> tuple[Container, bool] | None:
        """A ready container of ``spec`` for this process alone, and whether it is one an
        earlier lease left (True) or new (False); None when every slot is in use.

        The slot's container is taken when it still runs and passes the spec's wait;
        one that exited, is gone or fails its wait is removed, and a new one (with
        ``labels`` and the slot's own) is started in its slot."""
        from pytest_containers._containers.container import start_container

        lease = self.lease(key)
        if lease is None:
            return None
        try:
            container = self._take(client, image, spec, lease, access, wait_timeout)
            reused = container is not None
            if container is None:
                container = start_container(
                    client,
                    image,
                    spec,
                    labels={**labels, **self.labels(lease)},
                    wait_timeout=wait_timeout,
                    name=self._name(spec, lease),
                    access=access,
                )
            lease.container_id = container.id
            self._write(lease, created=not reused)
        except BaseException:
            os.close(lease.fd)
            raise
        with self._lock:
            self._leases[container.id] = lease
            self.records.append(
                {
                    "id": container.id,
                    "name": container.name,
                    "image": image.ref,
                    "state": "reused" if reused else "started",
                }
            )
        return container, reused

    def _take(
        self,
        client: docker.DockerClient,
        image: Image,
        spec: ContainerSpec,
        lease: Lease,
        access: Access,
        wait_timeout: float,
    ) -> Container | None:
        import docker.errors

        from pytest_containers._containers.container import Container, remove_container
        from pytest_containers.errors import ContainerStartupError

        if lease.container_id is None:
            return None
        try:
            raw = client.containers.get(lease.container_id)
        except docker.errors.NotFound:
            return None
        if (raw.labels or {}).get(REUSE_LABEL) != lease.key:
            return None  # not one this slot made: never ours to remove
        container = Container(raw, image, spec, access=access, wait_timeout=wait_timeout)
        try:
            if raw.status != "running":
                raise ContainerStartupError("not running")
            container._wait_ready()  # the engine may have restarted it, or it broke
        except ContainerStartupError:
            with contextlib.suppress(docker.errors.APIError):
                remove_container(container)
            return None
        return container

    def _name(self, spec: ContainerSpec, lease: Lease) -> str:
        unique = uuid.uuid4().hex[:6]
        return f"pytest-containers-reuse-{spec.slug(30)}-{lease.key[:8]}-{lease.slot}-{unique}"

    def _write(self, lease: Lease, *, created: bool = False) -> None:
        record = read_json(lease.state) or {}
        now = time.time()
        write_json_atomic(
            lease.state,
            {
                "key": lease.key,
                "slot": lease.slot,
                "container_id": lease.container_id,
                "created": now if created or not record.get("created") else record["created"],
                "last_used": now,
            },
        )

    def is_leased(self, container_id: str) -> bool:
        with self._lock:
            return container_id in self._leases

    def give_back(self, container_id: str) -> bool:
        """The process is done with the container: it stays for the next lease, idle from
        now on. False when it is not one of this pool's."""
        with self._lock:
            lease = self._leases.pop(container_id, None)
        if lease is None:
            return False
        try:
            self._write(lease)
        finally:
            os.close(lease.fd)
        return True

    def forget(self, container_id: str) -> None:
        """The container was removed (it died, or failed its reset): its slot is free and
        names none."""
        with self._lock:
            lease = self._leases.pop(container_id, None)
        if lease is None:
            return
        try:
            lease.container_id = None
            self._write(lease)
        finally:
            os.close(lease.fd)

    def close(self) -> None:
        """Give back whatever is still leased."""
        with self._lock:
            leased = list(self._leases)
        for container_id in leased:
            with contextlib.suppress(Exception):
                self.give_back(container_id)


# -- expiry ------------------------------------------------------------------------


@dataclass
class ReuseSweep:
    """What :func:`sweep_reused` did."""

    #: Names of the containers removed: idle longer than the ttl, or named by no slot.
    removed: list[str] = field(default_factory=list)
    #: Names of the containers left because a run leases them now.
    in_use: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def sweep_reused(
    client: docker.DockerClient,
    cache_dir: Path,
    *,
    ttl: float,
    everything: bool = False,
    now: float | None = None,
) -> ReuseSweep:
    """Remove the reused containers of ``cache_dir`` that no run leases and that were
    idle longer than ``ttl`` seconds, or that no slot's state names (the run that made one
    died before recording it). With ``everything`` (``--container-prune``): every one of
    ``cache_dir`` that no run leases, and those of cache directories that are gone. Each
    is judged and removed under its slot's lock, so that no run leases it meanwhile."""
    now = time.time() if now is None else now
    result = ReuseSweep()
    cache_dir = Path(os.path.abspath(cache_dir))
    own_dir = str(cache_dir)
    directory: Path | None = None
    # Containers only: every run sweeps, and reused ones own no network or volume.
    listed = client.api.containers(all=True, filters={"label": [REUSE_LABEL]})
    for raw in listed:
        names = raw.get("Names") or []
        name = str(names[0]).lstrip("/") if names else str(raw["Id"])[:12]
        resource = Resource("container", str(raw["Id"]), name, raw.get("Labels") or {})
        key = resource.labels.get(REUSE_LABEL, "")
        slot = resource.labels.get(REUSE_SLOT_LABEL, "")
        labelled_dir = resource.labels.get(REUSE_DIR_LABEL, "")
        if labelled_dir != own_dir or not _KEY.fullmatch(key) or not slot.isdigit():
            # Another cache directory's: the runs using it judge it. Prune removes it
            # only when that directory is gone, and with it any run that could lease it.
            if everything and not (labelled_dir and os.path.isdir(labelled_dir)):
                _remove(client, resource, result)
            continue
        if directory is None:
            directory = private_subdir(cache_dir, REUSE_DIR)
        path = _slot_path(directory, key, int(slot))
        fd = _try_lock(path)
        if fd is None:
            result.in_use.append(resource.name)
            continue
        try:
            record = read_json(path.with_suffix(".json")) or {}
            named = record.get("container_id") == resource.id
            last_used = record.get("last_used")
            idle = now - float(last_used) if isinstance(last_used, (int, float)) else ttl + 1
            doomed = everything or not named or idle > ttl
            if doomed and _remove(client, resource, result) and named:
                write_json_atomic(path.with_suffix(".json"), {"key": key, "slot": int(slot)})
        finally:
            os.close(fd)
    return result


def _remove(client: docker.DockerClient, resource: Resource, result: ReuseSweep) -> bool:
    removed, errors = remove_resources(client, [resource])
    result.removed.extend(r.name for r in removed)
    result.errors.extend(errors)
    return not errors


# -- what the terminal says --------------------------------------------------------


def describe_reuse(enabled: bool, ttl: float) -> str | None:
    """The header's line about reuse, or None when it is off."""
    if not enabled:
        return None
    return (
        "containers: reuse on: containers declared with reuse=True are kept for later "
        f"runs, removed after {format_duration(ttl)} idle (--container-prune removes them)"
    )


def reuse_summary(
    records: list[dict[str, object]], swept: list[str], *, enabled: bool, ttl: float
) -> list[str]:
    """The summary's lines: how many containers were reused and started for reuse, each
    marked, and what the sweeps removed for being idle too long."""
    lines: list[str] = []
    # One line per container: leased again later in the run (another module, another
    # worker), it is still the one it was at its first lease.
    by_id: dict[object, dict[str, object]] = {}
    for record in records:
        first = by_id.setdefault(record["id"], dict(record))
        if record.get("state") == "started":
            first["state"] = "started"
    if enabled and by_id:
        reused = sum(1 for r in by_id.values() if r.get("state") == "reused")
        lines.append(
            f"containers: reuse: {reused} reused, {len(by_id) - reused} started; kept for the "
            f"next run (removed after {format_duration(ttl)} idle)"
        )
        for record in by_id.values():
            lines.append(f"  {record['state']:<8} {record['name']}  ({record['image']})")
    if swept:
        lines.append(
            f"containers: removed {len(swept)} reused container(s) idle longer than "
            f"{format_duration(ttl)}: {', '.join(sorted(set(swept)))}"
        )
    return lines


def prune_lines(client: docker.DockerClient, cache_dir: Path) -> list[str]:
    """``--container-prune``: remove every reused container of ``cache_dir`` that no run
    leases now (and those of cache directories that are gone), and say what it did."""
    result = sweep_reused(client, cache_dir, ttl=0.0, everything=True)
    lines = [f"removed {len(result.removed)} reused container(s)"]
    if result.in_use:
        lines.append(
            f"kept {len(result.in_use)} reused container(s) that a run uses now: "
            + ", ".join(sorted(result.in_use))
        )
    lines.extend(f"could not remove {message}" for message in result.errors)
    return lines
