"""Everything one pytest process does with the engine: the lazily made client, the image
cache, and the containers it started, grouped by the scope that owns them.

pytest-free: the plugin tells it when a scope starts and ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import docker
import docker.errors

from pytest_containers._cache import ImageCache, PullPolicy
from pytest_containers._cleanup import (
    HOST_LABEL,
    PID_LABEL,
    RUN_LABEL,
    SCOPE_LABEL,
    WORKER_LABEL,
    RunHold,
    Watchdog,
    hold_run,
    start_watchdog,
    sweep_dead_runs,
)
from pytest_containers._containers import (
    Container,
    ContainerSpec,
    docker_host,
    remove_container,
    start_container,
)
from pytest_containers._engine import connect
from pytest_containers._image import Image
from pytest_containers._lockfile import Pin
from pytest_containers._locks import (
    default_cache_dir,
    ensure_private_dir,
    exclusive,
    key_path,
    read_json,
    write_json_atomic,
)
from pytest_containers._pull import PullProgress
from pytest_containers._settings import Settings
from pytest_containers.errors import ContainerError, EngineUnavailableError

if TYPE_CHECKING:
    from pytest_containers._build import BuildProgress, BuildSpec


@dataclass
class _Scope:
    """The containers one scope (a test, class, module, ... or the run) holds."""

    containers: dict[ContainerSpec, Container] = field(default_factory=dict)


def spec_fingerprint(spec: ContainerSpec) -> str:
    """A digest of the spec that is the same in every process of a run."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]


class ContainerManager:
    """Images and containers for one pytest process (a worker, or the only process)."""

    def __init__(
        self,
        settings: Settings,
        *,
        run_id: str,
        worker: str,
        whole_run: bool = True,
        on_progress: Callable[[PullProgress], None] | None = None,
        on_build_progress: Callable[[BuildProgress], None] | None = None,
        pins: Mapping[str, Pin] | None = None,
    ) -> None:
        self.settings = settings
        self.run_id = run_id
        self.worker = worker
        #: True for the process that ends the run (xdist's controller, or the only one).
        self.whole_run = whole_run
        self._on_progress = on_progress
        self._on_build_progress = on_build_progress
        self._pins = pins
        self._built: dict[BuildSpec, Image] = {}
        self._build_locks: dict[BuildSpec, threading.Lock] = {}
        self._client: docker.DockerClient | None = None
        self._client_error: EngineUnavailableError | None = None
        self._cache: ImageCache | None = None
        self._lock = threading.RLock()
        self._scopes: dict[str, _Scope] = {}
        self.cache_dir = settings.cache_dir or default_cache_dir()
        #: Whether this process started or joined a run-scoped container.
        self.used_run_scope = False
        #: Containers kept for debugging (--container-keep), by id, with their test.
        self.kept: dict[str, Container] = {}
        self._failed: set[str] = set()
        self._hold: RunHold | None = None
        self._watchdog: Watchdog | None = None

    # -- the engine and the images -------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        """The docker-py client, made on first use; a missing engine is reported once."""
        with self._lock:
            if self._client is None:
                if self._client_error is not None:
                    raise self._client_error
                try:
                    self._client = connect()
                except EngineUnavailableError as error:
                    self._client_error = error
                    raise
                self._guard(self._client)
            return self._client

    def _guard(self, client: docker.DockerClient) -> None:
        """Before the first container: mark this run alive, start the watchdog that
        removes this process's containers if it dies, and sweep what dead runs left."""
        self._hold = hold_run(ensure_private_dir(self.cache_dir), self.run_id)
        self._watchdog = start_watchdog(
            run_id=self.run_id,
            worker=self.worker,
            pid=os.getpid(),
            whole_run=self.whole_run,
            run_lock=self._hold.path,
        )

        def sweep() -> None:
            with contextlib.suppress(Exception):  # best effort: --container-prune reports
                sweep_dead_runs(client, self.cache_dir, own_run_id=self.run_id)

        threading.Thread(target=sweep, name="pytest-containers-sweep", daemon=True).start()

    @property
    def cache(self) -> ImageCache:
        with self._lock:
            if self._cache is None:
                self._cache = ImageCache(
                    self.client,
                    cache_dir=ensure_private_dir(self.cache_dir),
                    run_id=self.run_id,
                    policy=PullPolicy(self.settings.pull),
                    mirror=self.settings.mirror,
                    stall_timeout=self.settings.stall_timeout,
                    # A test waits on this: retry what may pass, but not for a minute.
                    retry_budget=10.0,
                    pins=self._pins,
                    require_pins=self.settings.lock == "strict",
                    archive_dir=self.settings.archive,
                    on_progress=self._on_progress,
                )
            return self._cache

    def image(self, image: str, *, platform: str | None = None) -> Image:
        """The image in the engine, pulled under the cache's locks if the policy says so."""
        return self.cache.get(image, platform=platform)

    def prefetch(self, images: Iterable[tuple[str, str | None]]) -> None:
        """Start pulling these images in the background; errors wait for their tests."""
        wanted = list(images)
        if not wanted:
            return
        # No engine, or no cache directory: each test reports that for itself.
        with contextlib.suppress(ContainerError):
            self.cache.prefetch(wanted)

    def build(self, spec: BuildSpec) -> Image:
        """The image built from ``spec``: once per process (hashing a context is not
        free), and once per content key across workers and runs (build_image's lock)."""
        from pytest_containers._build import build_image

        with self._lock:
            lock = self._build_locks.setdefault(spec, threading.Lock())
        with lock:
            if spec not in self._built:
                self._built[spec] = build_image(
                    self.client,
                    self.cache,
                    spec,
                    cache_dir=ensure_private_dir(self.cache_dir),
                    on_progress=self._on_build_progress,
                )
            return self._built[spec]

    def resolved_images(self) -> list[Image]:
        pulled = self._cache.resolved() if self._cache is not None else []
        return pulled + list(self._built.values())

    # -- containers ---------------------------------------------------------------

    def labels(self, scope: str) -> dict[str, str]:
        """Labels that say who made a container, for cleanup and for `docker ps`."""
        return {
            RUN_LABEL: self.run_id,
            WORKER_LABEL: self.worker,
            PID_LABEL: str(os.getpid()),
            HOST_LABEL: socket.gethostname(),
            SCOPE_LABEL: scope,
        }

    def _name(self, spec: ContainerSpec) -> str:
        slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", spec.name or spec.image.split("/")[-1])
        return f"pytest-containers-{self.run_id[:8]}-{slug.strip('-')[:40]}-{uuid.uuid4().hex[:6]}"

    def start(
        self,
        spec: ContainerSpec,
        *,
        scope: str = "function",
        scope_key: str = "",
        build: BuildSpec | None = None,
    ) -> Container:
        """A ready container for ``spec`` (of the image built from ``build``, if given).
        Within one scope key the same spec gives the same container; ``function`` scope
        always starts a new one (the caller releases it)."""
        if build is not None:
            image = self.build(build)
        else:
            image = self.image(spec.image, platform=spec.platform)
        if scope == "function":
            return self._start(image, spec, "function")
        key = f"{scope}:{scope_key}"
        with self._lock:
            held = self._scopes.setdefault(key, _Scope())
            if spec not in held.containers:
                if scope == "run":
                    self.used_run_scope = True
                    held.containers[spec] = self._run_scoped(image, spec)
                else:
                    held.containers[spec] = self._start(image, spec, scope)
            return held.containers[spec]

    def _start(self, image: Image, spec: ContainerSpec, scope: str) -> Container:
        return start_container(
            self.client,
            image,
            spec,
            labels=self.labels(scope),
            wait_timeout=self.settings.timeout,
            name=self._name(spec),
        )

    def _run_scoped(self, image: Image, spec: ContainerSpec) -> Container:
        """One container for the whole run: the first worker starts it under a lock and
        records its id; the others attach to it. The run's end removes it."""
        directory = ensure_private_dir(self.cache_dir) / "run-scoped"
        directory.mkdir(exist_ok=True)
        fingerprint = spec_fingerprint(spec)
        lock = key_path(directory, self.run_id, fingerprint, suffix=".lock")
        state = lock.with_suffix(".json")
        with exclusive(lock, timeout=self.settings.timeout * 2, what=f"run-scoped {spec.image}"):
            record = read_json(state)
            if record and record.get("run_id") == self.run_id:
                attached = self._attach(str(record.get("container_id")), image, spec)
                if attached is not None:
                    return attached
            container = self._start(image, spec, "run")
            write_json_atomic(
                state, {"run_id": self.run_id, "container_id": container.id, "spec": fingerprint}
            )
            return container

    def _attach(self, container_id: str, image: Image, spec: ContainerSpec) -> Container | None:
        try:
            raw = self.client.containers.get(container_id)
        except docker.errors.NotFound:
            return None
        if raw.status != "running":
            return None
        return Container(
            raw, image, spec, host=docker_host(self.client), wait_timeout=self.settings.timeout
        )

    def mark_failed(self, container: Container) -> None:
        """A test that used ``container`` failed: --container-keep=failed keeps it."""
        self._failed.add(container.id)

    def release(self, container: Container) -> None:
        """The owner is done with ``container``: remove it, unless it is to be kept."""
        keep = self.settings.keep
        if keep == "always" or (keep == "failed" and container.id in self._failed):
            self.kept[container.id] = container
            return
        remove_container(container)

    def end_scope(self, scope: str, scope_key: str) -> None:
        """Release the containers a scope held (run scope: see remove_run_containers)."""
        with self._lock:
            held = self._scopes.pop(f"{scope}:{scope_key}", None)
        if held is not None and scope != "run":
            for container in held.containers.values():
                self.release(container)

    def close(self) -> None:
        """Release every container this process still holds (run-scoped ones excepted:
        they belong to the whole run), stop background pulls, and tell the watchdog that
        this process ends normally."""
        with self._lock:
            scopes, self._scopes = self._scopes, {}
        for key, held in scopes.items():
            if not key.startswith("run:"):
                for container in held.containers.values():
                    self.release(container)
        if self._cache is not None:
            self._cache.close()

    def stop_guard(self) -> None:
        """Last of all: the watchdog may go, and the run is no longer alive here."""
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._hold is not None:
            self._hold.release()
            self._hold = None

    def remove_run_containers(self, *, keep: Iterable[str] = ()) -> int:
        """At the end of the whole run: remove what is left with this run's label
        (run-scoped containers, and those of workers that died) but the ids in ``keep``.
        Returns how many."""
        removed = 0
        kept = set(keep) | set(self.kept)
        # A bare client: this runs as the process exits, with no watchdog or sweep to start.
        client = self._client or connect()
        filters: dict[str, str | list[str] | bool] = {"label": f"{RUN_LABEL}={self.run_id}"}
        # The low-level list: containers.list() inspects each one, racing with watchdogs.
        for entry in client.api.containers(all=True, filters=filters):
            if entry["Id"] in kept:
                continue
            try:
                client.api.remove_container(entry["Id"], force=True, v=True)
                removed += 1
            except docker.errors.NotFound:
                pass
        return removed
