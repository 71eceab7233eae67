"""Everything one pytest process does with the engine: the lazily made client, the image
cache, and the containers it started, grouped by the scope that owns them.

pytest-free: the plugin tells it when a scope starts and ends.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import docker
import docker.errors

from pytest_containers._base.image import Image
from pytest_containers._base.locks import (
    default_cache_dir,
    ensure_private_dir,
)
from pytest_containers._base.settings import Settings
from pytest_containers._cleanup.guard import LeftoverGuard
from pytest_containers._cleanup.sweep import (
    PID_LABEL,
    RUN_LABEL,
    SCOPE_LABEL,
    WORKER_LABEL,
    mark_kept,
    own_identity,
    remove_run,
)
from pytest_containers._containers.container import (
    Container,
    ContainerSpec,
    remove_container,
    start_container,
)
from pytest_containers._containers.faults import (
    EngineRecovery,
    container_fault,
    engine_gone,
    retry_unsent,
    test_fault,
)
from pytest_containers._containers.networks import (
    Network,
    create_network,
    is_docker_mode,
    network_name,
    remove_network,
)
from pytest_containers._engine.connection import (
    Access,
    access_for,
    client_endpoint,
    connect,
    is_kubedock,
    kubedock_refusal,
)
from pytest_containers._images.cache import ImageCache, PullPolicy
from pytest_containers._images.lockfile import Pin
from pytest_containers._images.pull import PullProgress
from pytest_containers._manager.early_starts import AheadStarts
from pytest_containers._manager.removals import BackgroundRemovals
from pytest_containers._manager.resets import Reset, ResetShells, describe_reset, run_reset
from pytest_containers._manager.reuse import ReusePool, reusable_network, reuse_key, sweep_reused
from pytest_containers._manager.run_scope import run_network, run_scoped, spec_fingerprint
from pytest_containers.errors import (
    ArchiveError,
    ContainerError,
    EngineUnavailableError,
    ImageBuildError,
)

if TYPE_CHECKING:
    from pytest_containers._images.build import BuildProgress, BuildSpec


@dataclass
class _Scope:
    """The containers one scope (a test, class, module, ... or the run) holds."""

    containers: dict[ContainerSpec, Container] = field(default_factory=dict)


@dataclass
class _PrivateNetwork:
    """A network made for a logical name in one scope instance, and who is on it."""

    network: Network
    #: Ids of the containers on it that are not removed yet.
    users: set[str] = field(default_factory=set)
    #: Containers being started onto it right now.
    pending: int = 0
    #: The run's network of run-scoped containers: other workers use it too, and only
    #: the end of the run removes it.
    shared: bool = False


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
        #: Private networks by (scope instance, logical name), and each user's entry.
        self._networks: dict[tuple[str, str], _PrivateNetwork] = {}
        self._network_of: dict[str, tuple[str, str]] = {}
        self._starting: dict[tuple[str, ContainerSpec], threading.Lock] = {}
        self.cache_dir = settings.cache_dir or default_cache_dir()
        #: Whether this process started or joined a run-scoped container.
        self.used_run_scope = False
        #: Containers kept for debugging (--container-keep), by id, with their test.
        self.kept: dict[str, Container] = {}
        self._failed: set[str] = set()
        #: The run's hold, the watchdog and the start-up sweep (see :mod:`._guard`).
        self.guard = LeftoverGuard(
            cache_dir=self.cache_dir, run_id=run_id, worker=worker, whole_run=whole_run
        )
        #: What this process's end could not remove (see :meth:`close`).
        self.cleanup_errors: list[str] = []
        self._engine: EngineRecovery | None = None
        #: Shared containers replaced after they died (scope key and spec).
        self._replaced: set[str] = set()
        #: Shared containers that died again after their replacement, with the error.
        self._given_up: dict[str, ContainerError] = {}
        #: Removals of released containers, off the tests' path (see :meth:`release`).
        self._removals = BackgroundRemovals(self._remove_now)
        self._ahead: AheadStarts | None = None
        #: Shared containers handed to a test already: later tests get them reset first.
        self._handed: set[str] = set()
        self.reset_shells = ResetShells()  # command resets through a shell kept open
        #: The containers leased for reuse across runs (reuse=True, --container-reuse).
        self._reuse_pool: ReusePool | None = None

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
                retry_unsent(self._client, self.engine)  # a test's own calls too
                self.guard.start(self._client, first=self._sweep_reused)
            return self._client

    def _sweep_reused(self) -> None:
        # Expired reused containers first: it is quick, and leases may wait on it.
        with contextlib.suppress(Exception):
            self.reuse_pool.swept = sweep_reused(
                self.client, self.reuse_pool.cache_dir, ttl=self.settings.reuse_ttl
            )

    @property
    def touched_engine(self) -> bool:
        """Whether this process connected to the engine (and may have left something)."""
        return self._client is not None

    @property
    def access(self) -> Access:
        """How this process's tests reach the containers (see :func:`access_for`)."""
        return access_for(self.client, override=self.settings.host)

    @property
    def cache(self) -> ImageCache:
        with self._lock:
            if self._cache is None:
                archive = self.settings.archive
                if archive is not None and is_kubedock(self.client):
                    # kubedock answers 501 to an image load, and its image "export" is
                    # made up: fail before any of it, with what to do instead.
                    raise ArchiveError(
                        kubedock_refusal(f"load images from the archive {archive}"),
                        path=archive,
                    )
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
        from pytest_containers._images.build import build_image

        if is_kubedock(self.client):
            # kubedock answers 501 to POST /build: say so before hashing any context.
            raise ImageBuildError(
                kubedock_refusal(f"build images (build={spec.display or str(spec.context)!r})"),
                image=spec.display or str(spec.context),
            )
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
        """Labels that say who made a container, for cleanup and for `docker ps`: the
        run, the process, and where it runs (see
        :class:`~pytest_containers._cleanup.sweep.Identity`)."""
        identity = self.guard.identity or own_identity(self.client)
        return {
            RUN_LABEL: self.run_id,
            WORKER_LABEL: self.worker,
            PID_LABEL: str(os.getpid()),
            **identity.labels(),
            SCOPE_LABEL: scope,
        }

    def _name(self, spec: ContainerSpec) -> str:
        return f"pytest-containers-{self.run_id[:8]}-{spec.slug(40)}-{uuid.uuid4().hex[:6]}"

    def start(
        self,
        spec: ContainerSpec,
        *,
        scope: str = "function",
        scope_key: str = "",
        build: BuildSpec | None = None,
        group: str | None = None,
        reuse: bool = False,
    ) -> Container:
        """A ready container for ``spec`` (of the image built from ``build``, if given).
        Within one scope key the same spec gives the same container; ``function`` scope
        always starts a new one (the caller releases it).

        A logical ``network=`` name is a private network of ``group`` (the scope
        instance: ``"function:<test id>"``, ``"module:<module id>"``, ...; by default
        ``scope:scope_key``): made by the first container that names it, removed when
        the last one on it is released.

        An engine that goes away meanwhile is waited for (``engine_grace``) and the start
        tried again; a shared container found dead is replaced once. Raises
        :class:`~pytest_containers.errors.EngineUnavailableError` when the engine does not
        come back, and :class:`~pytest_containers.errors.ContainerError` when a replaced
        container died again.

        ``reuse`` (a shared scope, not run): with ``--container-reuse``, the container is
        leased from those earlier runs kept (see :mod:`~pytest_containers._manager.reuse`).
        """
        group = group if group is not None else f"{scope}:{scope_key}"
        self.client  # noqa: B018 -- connect first: no engine at all is its own error
        return self.engine.run(
            lambda: self._start_scoped(spec, scope, scope_key, build, group, reuse),
            what=f"starting a container of {spec.image}",
        )

    @property
    def engine(self) -> EngineRecovery:
        """Waits for an engine that went away (see
        :class:`~pytest_containers._containers.faults.EngineRecovery`)."""
        with self._lock:
            if self._engine is None:
                client = self.client
                self._engine = EngineRecovery(
                    client.ping,
                    grace=self.settings.engine_grace,
                    location=client_endpoint(client).url,
                )
            return self._engine

    def _start_scoped(
        self,
        spec: ContainerSpec,
        scope: str,
        scope_key: str,
        build: BuildSpec | None,
        group: str,
        reuse: bool = False,
    ) -> Container:
        if scope == "function":
            return self._start(self._image_of(spec, build), spec, "function", group)
        key = f"{scope}:{scope_key}"
        with self._lock:
            given_up = self._given_up.get(f"{key}:{spec_fingerprint(spec)}")
            if given_up is not None:
                raise ContainerError(given_up.message, image=given_up.image)
            held = self._scopes.setdefault(key, _Scope())
            # One lock per container, not the manager's: different containers of a scope
            # (services) start concurrently.
            starting = self._starting.setdefault((key, spec), threading.Lock())
        with starting:
            with self._lock:
                current = held.containers.get(spec)
            if current is not None:
                fault = container_fault(self.client, current.id, current.name, image=spec.image)
                if fault is None:
                    return current
                with self._lock:
                    held.containers.pop(spec, None)
                if scope != "run":
                    self._replacing(f"{key}:{spec_fingerprint(spec)}", scope, current, fault)
            # Resolved only to start one: a held container's later tests need no image.
            image = self._image_of(spec, build)
            if scope == "run":
                self.used_run_scope = True
                started = self._run_scoped(image, spec, group)
            elif reuse:
                started = self._start_reusable(image, spec, scope, group)
            else:
                started = self._start(image, spec, scope, group)
            with self._lock:
                held.containers[spec] = started
            return started

    def _image_of(self, spec: ContainerSpec, build: BuildSpec | None) -> Image:
        if build is not None:
            return self.build(build)
        return self.image(spec.image, platform=spec.platform)

    def _replacing(self, key: str, scope: str, dead: Container, fault: ContainerError) -> None:
        """A shared container died: replace it, once; a second death is the tests' to see
        (raises ``fault``, said so)."""
        if key in self._replaced:
            self._quietly_remove(dead)
            error = self._given_up[key] = ContainerError(
                f"{fault.message}; it was replaced once already, so the tests of this "
                f"{scope}-scoped container that remain fail",
                image=fault.image,
                container=fault.container,
            )
            raise error
        self._replaced.add(key)
        self._quietly_remove(dead)

    def _start(self, image: Image, spec: ContainerSpec, scope: str, group: str) -> Container:
        key: tuple[str, str] | None = None
        network = None
        if isinstance(spec.network, str) and not is_docker_mode(spec.network):
            key = (group, spec.network)
            network = self._join(key, scope)
        try:
            container = start_container(
                self.client,
                image,
                spec,
                labels=self.labels(scope),
                wait_timeout=self.settings.timeout,
                name=self._name(spec),
                network=network,
                access=self.access,
            )
        except BaseException:
            if key is not None:
                self._leave(key, None)
            raise
        if key is not None:
            with self._lock:
                self._networks[key].users.add(container.id)
                self._networks[key].pending -= 1
                self._network_of[container.id] = key
        return container

    # -- reuse across runs ---------------------------------------------------------

    @property
    def reuse_pool(self) -> ReusePool:
        """The containers this process leases for reuse (see :mod:`._reuse`)."""
        with self._lock:
            if self._reuse_pool is None:
                self._reuse_pool = ReusePool(ensure_private_dir(self.cache_dir))
            return self._reuse_pool

    def _start_reusable(
        self, image: Image, spec: ContainerSpec, scope: str, group: str
    ) -> Container:
        """A container kept by an earlier lease of the same key, else a new one kept for
        the next; a plain one when reuse is off, the spec is on a network of this run, or
        every slot of its key is in use."""
        if not self.settings.reuse or not reusable_network(spec):
            return self._start(image, spec, scope, group)
        # No run, worker or pid label: the run's end, its watchdog and the sweep of dead
        # runs spare it; the reuse sweep judges it by its lease and its idle time.
        identity = (self.guard.identity or own_identity(self.client)).labels()
        leased = self.reuse_pool.start(
            self.client,
            image,
            spec,
            key=reuse_key(spec, image, self.access),
            labels={**identity, SCOPE_LABEL: scope},
            access=self.access,
            wait_timeout=self.settings.timeout,
        )
        if leased is None:
            return self._start(image, spec, scope, group)
        container, reused = leased
        if reused:
            with self._lock:
                self._handed.add(container.id)  # used before: reset= runs before its first test
        return container

    def reuse_report(self) -> tuple[list[dict[str, object]], list[str]]:
        """The containers leased for reuse (each "reused" or "started"), and the names of
        those the start-up sweep removed for being idle too long."""
        pool = self._reuse_pool
        if pool is None:
            return [], []
        return list(pool.records), list(pool.swept.removed) if pool.swept is not None else []

    # -- networks -----------------------------------------------------------------

    def create_network(
        self,
        logical: str,
        *,
        scope: str,
        internal: bool = False,
        driver: str = "bridge",
        options: Mapping[str, object] | None = None,
    ) -> Network:
        """A new network labelled like this process's containers of ``scope``; its
        owner removes it (:meth:`remove_network`)."""
        return create_network(
            self.client,
            name=network_name(self.run_id, logical),
            logical=logical,
            labels=self.labels(scope),
            internal=internal,
            driver=driver,
            options=options,
        )

    def remove_network(self, network: Network) -> None:
        """Remove a network made by :meth:`create_network`, unless a container kept for
        debugging is on it (the end of the run leaves it then, like the container)."""
        if self.kept and set(network.containers()) & {c.name for c in self.kept.values()}:
            return
        remove_network(self.client, network)

    def _join(self, key: tuple[str, str], scope: str) -> Network:
        """The private network ``key`` names, made now if no container is on it."""
        with self._lock:
            entry = self._networks.get(key)
            if entry is None:
                if scope == "run":
                    network = run_network(
                        self.client,
                        cache_dir=self.cache_dir,
                        run_id=self.run_id,
                        logical=key[1],
                        labels=self.labels("run"),
                        timeout=self.settings.timeout,
                    )
                else:
                    network = self.create_network(key[1], scope=scope)
                entry = _PrivateNetwork(network, shared=scope == "run")
                self._networks[key] = entry
            entry.pending += 1
            return entry.network

    def _leave(self, key: tuple[str, str], container_id: str | None) -> None:
        """A container left the private network ``key`` (``None``: one failed to start
        on it); the last one out removes it."""
        with self._lock:
            entry = self._networks.get(key)
            if entry is None:
                return
            if container_id is None:
                entry.pending -= 1
            else:
                entry.users.discard(container_id)
                self._network_of.pop(container_id, None)
            if entry.users or entry.pending or entry.shared:
                return
            del self._networks[key]
        if self._engine is not None and self._engine.gone:
            return  # the end of the run, the watchdog or the next sweep removes it
        try:
            remove_network(self.client, entry.network)
        except Exception as error:
            if not engine_gone(error):
                raise

    def _run_scoped(self, image: Image, spec: ContainerSpec, group: str) -> Container:
        """One container for the whole run (see :mod:`._run_scope`)."""
        return run_scoped(
            self.client,
            cache_dir=self.cache_dir,
            run_id=self.run_id,
            image=image,
            spec=spec,
            access=self.access,
            timeout=self.settings.timeout,
            start=lambda: self._start(image, spec, "run", group),
        )

    # -- lookahead ----------------------------------------------------------------

    @property
    def ahead(self) -> AheadStarts:
        """The containers started for tests before their turn (--container-lookahead)."""
        with self._lock:
            if self._ahead is None:
                self._ahead = AheadStarts(
                    start=lambda spec, build, group: self.start(spec, build=build, group=group),
                    release=self.release,
                    discard=self._quietly_remove,
                    tests_ahead=self.settings.lookahead,
                )
            return self._ahead

    def reset_before_use(
        self,
        container: Container,
        reset: Reset,
        *,
        scope: str,
        scope_key: str,
        spec: ContainerSpec,
    ) -> None:
        """Before a test uses the shared ``container``: run ``reset`` (a command to exec, or
        a callable taking the container), unless this is its first test since it started.
        A reset that fails drops the container from its scope, so that the next test gets a
        new one, and raises :class:`~pytest_containers.errors.ContainerError` saying which
        container, which command, its exit code and the tail of its output."""
        with self._lock:
            first = container.id not in self._handed
            self._handed.add(container.id)
        if first:
            return
        failure = run_reset(container, reset, self.reset_shells)
        if failure is None:
            return
        what = describe_reset(reset)
        with self._lock:
            held = self._scopes.get(f"{scope}:{scope_key}")
            if held is not None and held.containers.get(spec) is container:
                del held.containers[spec]
            self._handed.discard(container.id)
        with contextlib.suppress(Exception):  # close() finds what stays by its labels
            if self._reuse_pool is not None and self._reuse_pool.is_leased(container.id):
                self._quietly_remove(container)  # broken: not kept for the next run either
            else:
                self.release(container)
        raise ContainerError(
            f"the reset of container {container.name} ({spec.image}) by {what} failed: "
            f"{failure}; the next test gets a new container",
            image=spec.image,
            container=container.name,
        )

    def mark_failed(self, container: Container) -> None:
        """A test that used ``container`` failed: --container-keep=failed keeps it."""
        self._failed.add(container.id)

    def release(self, container: Container) -> None:
        """The owner is done with ``container``: remove it (and its private network after
        it, if it was the last one on it) in the background, unless it is to be kept. The
        next test does not wait; :meth:`close` does. A kill meanwhile leaves the removal to
        the watchdog and the sweep, which find the container by its labels. A container
        leased for reuse goes back to its slot instead, for the next lease."""
        self.reset_shells.close(container.id)
        if self._reuse_pool is not None and self._reuse_pool.give_back(container.id):
            return
        keep = self.settings.keep
        if keep == "always" or (keep == "failed" and container.id in self._failed):
            # Marked on the engine, so that no later run's sweep removes it.
            container.name = mark_kept(self.client, container.id, container.name)
            self.kept[container.id] = container
            return
        self._removals.submit(container)

    def _remove_now(self, container: Container) -> None:
        """Remove ``container``, then leave its private network. What fails stays for
        :meth:`close` to find by its labels (and report if that fails too)."""
        with contextlib.suppress(Exception):
            self._quietly_remove(container)
        key = self._network_of.get(container.id)
        if key is not None:
            with contextlib.suppress(Exception):
                self._leave(key, container.id)

    def wait_for_removals(self) -> None:
        """Wait until every removal :meth:`release` began is done."""
        self._removals.wait()

    def _quietly_remove(self, container: Container, *, report: bool = False) -> None:
        """Remove ``container``; with the engine gone there is nothing to do now (the end
        of the run, the watchdog or the next run's sweep removes it). Other errors are
        raised when ``report``."""
        self.reset_shells.close(container.id)
        if self._reuse_pool is not None:
            self._reuse_pool.forget(container.id)  # a dead reused one: its slot names none
        if self._engine is not None and self._engine.gone:
            return
        try:
            remove_container(container)
        except Exception as error:
            if report and not engine_gone(error):
                raise

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
                    with contextlib.suppress(Exception):  # what stays is removed below
                        self.release(container)
        if self._ahead is not None:
            self._ahead.close()  # their release goes to the removals, waited for next
        self.wait_for_removals()
        self.reset_shells.close_all()
        if self._reuse_pool is not None:
            self._reuse_pool.close()
        if self._cache is not None:
            self._cache.close()
        self._remove_own_leftovers()

    def _remove_own_leftovers(self) -> None:
        """What this process's labels still hold goes; what cannot be removed goes to
        :attr:`cleanup_errors`, for the end of the run to try again."""
        if self._client is None or (self._engine is not None and self._engine.gone):
            return
        self.cleanup_errors.extend(self.guard.remove_own_leftovers(self._client, self.kept))

    def remove_run_containers(self, *, keep: Iterable[str] = ()) -> tuple[int, list[str]]:
        """At the end of the whole run: remove everything this run's label still holds
        (run-scoped containers, those of failed teardowns and of workers that died, their
        networks and volumes) but the containers in ``keep`` (ids) and those kept on
        purpose. Returns how many were removed, and what could not be."""
        # A bare client: this runs as the process exits, with no watchdog or sweep to start.
        client = self._client or connect()
        try:
            removed, errors = remove_run(client, self.run_id, keep=set(keep) | set(self.kept))
        except Exception as error:
            if not engine_gone(error):
                raise
            return 0, [
                f"what run {self.run_id} left: the engine at {client_endpoint(client).url} did not "
                "answer; the next run's sweep removes it"
            ]
        return len(removed), errors

    def fault(self, error: BaseException, used: Iterable[Container]) -> ContainerError | None:
        """What a test's error says about the engine or its containers (see
        :func:`~pytest_containers._containers.faults.test_fault`); None when this process never
        reached the engine: not the plugin's to say."""
        if self._client is None:
            return None
        return test_fault(self._client, self.engine, error, used)
