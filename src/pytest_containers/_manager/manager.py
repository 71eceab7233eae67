"""Everything one pytest process does with the engine: the lazily made client, the image
cache, and the containers it started, grouped by the scope that owns them.

pytest-free: the plugin tells it when a scope starts and ends.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import docker

from pytest_containers._base.image import Image
from pytest_containers._base.locks import default_cache_dir
from pytest_containers._base.settings import Settings
from pytest_containers._cleanup.guard import LeftoverGuard
from pytest_containers._cleanup.sweep import (
    PID_LABEL,
    RUN_LABEL,
    SCOPE_LABEL,
    WORKER_LABEL,
    own_identity,
)
from pytest_containers._containers.container import Container, ContainerSpec
from pytest_containers._containers.faults import EngineRecovery
from pytest_containers._containers.networks import Network
from pytest_containers._engine.connection import Access
from pytest_containers._images.cache import ImageCache
from pytest_containers._images.lockfile import Pin
from pytest_containers._images.pull import PullProgress
from pytest_containers._manager.early_starts import AheadStarts
from pytest_containers._manager.engine_link import EngineLink
from pytest_containers._manager.image_supply import ImageSupply
from pytest_containers._manager.private_networks import PrivateNetworks
from pytest_containers._manager.releases import Releases
from pytest_containers._manager.resets import Reset, ResetShells
from pytest_containers._manager.reuse import ReusePool
from pytest_containers._manager.reuse_leases import ReuseLeases
from pytest_containers._manager.scopes import ScopedContainers
from pytest_containers._manager.starts import Starts
from pytest_containers.errors import ContainerError

if TYPE_CHECKING:
    from pytest_containers._images.build import BuildProgress, BuildSpec


class ContainerManager:
    """Images and containers for one pytest process (a worker, or the only process).

    It composes one collaborator per job, all under its one lock: the engine
    (:class:`EngineLink`), the images (:class:`ImageSupply`), starts (:class:`Starts`),
    the containers held per scope (:class:`ScopedContainers`), private networks
    (:class:`PrivateNetworks`), releases and removals (:class:`Releases`) and leases for
    reuse (:class:`ReuseLeases`).
    """

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
        self._lock = lock = threading.RLock()  # guards every collaborator's shared dicts
        self.cache_dir = cache_dir = settings.cache_dir or default_cache_dir()
        #: Containers kept for debugging (--container-keep), by id, with their test.
        self.kept: dict[str, Container] = {}
        #: The run's hold, the watchdog and the start-up sweep (see :mod:`._guard`).
        self.guard = LeftoverGuard(
            cache_dir=cache_dir, run_id=run_id, worker=worker, whole_run=whole_run
        )
        #: What this process's end could not remove (see :meth:`close`).
        self.cleanup_errors: list[str] = []
        self.reset_shells = ResetShells()  # command resets through a shell kept open
        self._link = link = EngineLink(settings, self.guard, lock, on_connect=self._sweep)
        self._images = ImageSupply(
            link,
            lock,
            cache_dir=cache_dir,
            run_id=run_id,
            pins=pins,
            on_progress=on_progress,
            on_build_progress=on_build_progress,
        )
        self._networks = PrivateNetworks(
            link, lock, cache_dir=cache_dir, run_id=run_id, labels=self.labels, kept=self.kept
        )
        self._scopes = ScopedContainers(link, lock, remove=self._quietly_remove)
        #: The containers leased for reuse across runs (reuse=True, --container-reuse).
        self._leases = ReuseLeases(
            link, lock, cache_dir=cache_dir, on_reused=self._scopes.mark_handed
        )
        self._releases = Releases(
            link, self.kept, shells=self.reset_shells, leases=self._leases, networks=self._networks
        )
        self._starts = Starts(
            link,
            images=self._images,
            scopes=self._scopes,
            networks=self._networks,
            leases=self._leases,
            run_id=run_id,
            cache_dir=cache_dir,
            labels=self.labels,
        )
        self._ahead: AheadStarts | None = None

    # -- the engine and the images -------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        """The docker-py client, made on first use; a missing engine is reported once."""
        return self._link.client

    def _sweep(self) -> None:
        self._leases.sweep()  # expired reused containers, first thing after connecting

    @property
    def touched_engine(self) -> bool:
        """Whether this process connected to the engine (and may have left something)."""
        return self._link.made is not None

    @property
    def access(self) -> Access:
        """How this process's tests reach the containers (see :func:`access_for`)."""
        return self._link.access

    @property
    def engine(self) -> EngineRecovery:
        """Waits for an engine that went away (see
        :class:`~pytest_containers._containers.faults.EngineRecovery`)."""
        return self._link.engine

    @property
    def cache(self) -> ImageCache:
        return self._images.cache

    def image(self, image: str, *, platform: str | None = None) -> Image:
        """The image in the engine, pulled under the cache's locks if the policy says so."""
        return self._images.image(image, platform=platform)

    def prefetch(self, images: Iterable[tuple[str, str | None]]) -> None:
        """Start pulling these images in the background; errors wait for their tests."""
        self._images.prefetch(images)

    def build(self, spec: BuildSpec) -> Image:
        """The image built from ``spec``: once per process (hashing a context is not
        free), and once per content key across workers and runs (build_image's lock)."""
        return self._images.build(spec)

    def resolved_images(self) -> list[Image]:
        return self._images.resolved()

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
            lambda: self._starts.scoped(spec, scope, scope_key, build, group, reuse),
            what=f"starting a container of {spec.image}",
        )

    @property
    def used_run_scope(self) -> bool:
        """Whether this process started or joined a run-scoped container."""
        return self._starts.used_run_scope

    @property
    def reuse_pool(self) -> ReusePool:
        """The containers this process leases for reuse (see :mod:`._reuse`)."""
        return self._leases.pool

    def reuse_report(self) -> tuple[list[dict[str, object]], list[str]]:
        """The containers leased for reuse (each "reused" or "started"), and the names of
        those the start-up sweep removed for being idle too long."""
        return self._leases.report()

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
        return self._networks.create(
            logical, scope=scope, internal=internal, driver=driver, options=options
        )

    def remove_network(self, network: Network) -> None:
        """Remove a network made by :meth:`create_network`, unless a container kept for
        debugging is on it (the end of the run leaves it then, like the container)."""
        self._networks.remove(network)

    # -- a container's life: lookahead, resets, release, removal ---------------------

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
        keep: bool = False,
    ) -> None:
        """Before a test uses the shared ``container``: run ``reset`` (a command to exec, or
        a callable taking the container), unless this is its first test since it started.
        A reset that fails drops the container from its scope, so that the next test gets a
        new one (``keep``: it stays, as a service whose address the suite holds does), and
        raises :class:`~pytest_containers.errors.ContainerError` saying which container,
        which command, its exit code and the tail of its output."""
        self._scopes.reset_before_use(
            container,
            reset,
            key=(scope, scope_key, spec),
            shells=self.reset_shells,
            drop=None if keep else self._releases.drop_broken,
        )

    def mark_failed(self, container: Container) -> None:
        """A test that used ``container`` failed: --container-keep=failed keeps it."""
        self._releases.mark_failed(container)

    def release(self, container: Container) -> None:
        """The owner is done with ``container``: remove it (and its private network after
        it, if it was the last one on it) in the background, unless it is to be kept. The
        next test does not wait; :meth:`close` does. A kill meanwhile leaves the removal to
        the watchdog and the sweep, which find the container by its labels. A container
        leased for reuse goes back to its slot instead, for the next lease."""
        self._releases.release(container)

    def wait_for_removals(self) -> None:
        """Wait until every removal :meth:`release` began is done."""
        self._releases.wait()

    def _quietly_remove(self, container: Container) -> None:
        self._releases.quietly_remove(container)

    def end_scope(self, scope: str, scope_key: str) -> None:
        """Release the containers a scope held (run scope: see remove_run_containers)."""
        held = self._scopes.end(scope, scope_key)
        if scope != "run":
            for container in held:
                self.release(container)

    def close(self) -> None:
        """Release every container this process still holds (run-scoped ones excepted:
        they belong to the whole run), stop background pulls, and tell the watchdog that
        this process ends normally."""
        for key, held in self._scopes.end_all().items():
            if not key.startswith("run:"):
                for container in held:
                    with contextlib.suppress(Exception):  # what stays is removed below
                        self.release(container)
        if self._ahead is not None:
            self._ahead.close()  # their release goes to the removals, waited for next
        self.wait_for_removals()
        self.reset_shells.close_all()
        self._leases.close()
        self._images.close()
        # What this process's labels still hold goes; what cannot be removed goes to
        # cleanup_errors, for the end of the run to try again.
        self.cleanup_errors.extend(self._link.remove_own_leftovers(self.kept))

    def remove_run_containers(self, *, keep: Iterable[str] = ()) -> tuple[int, list[str]]:
        """At the end of the whole run: remove everything this run's label still holds
        (run-scoped containers, those of failed teardowns and of workers that died, their
        networks and volumes) but the containers in ``keep`` (ids) and those kept on
        purpose. Returns how many were removed, and what could not be."""
        return self._link.remove_run(self.run_id, set(keep) | set(self.kept))

    def fault(self, error: BaseException, used: Iterable[Container]) -> ContainerError | None:
        """What a test's error says about the engine or its containers (see
        :func:`~pytest_containers._containers.faults.test_fault`); None when this process never
        reached the engine: not the plugin's to say."""
        return self._link.fault(error, used)
