"""How one process starts a container for a spec in a scope: a new one for a test; the
one its shared scope holds (see :mod:`~pytest_containers._manager.scopes`), else one
started now; the run's one (see :mod:`~pytest_containers._manager.run_scope`); one
leased for reuse (see :mod:`~pytest_containers._manager.reuse_leases`). Each is made
from its image (built or pulled), named, labelled, and put on its private network.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_containers._base.image import Image
from pytest_containers._containers.container import Container, ContainerSpec, start_container
from pytest_containers._manager.engine_link import EngineLink
from pytest_containers._manager.image_supply import ImageSupply
from pytest_containers._manager.private_networks import PrivateNetworks
from pytest_containers._manager.reuse_leases import ReuseLeases
from pytest_containers._manager.run_scope import run_scoped
from pytest_containers._manager.scopes import ScopedContainers

if TYPE_CHECKING:
    from pytest_containers._images.build import BuildSpec


class Starts:
    """Starting containers, each the way its scope says."""

    def __init__(
        self,
        link: EngineLink,
        *,
        images: ImageSupply,
        scopes: ScopedContainers,
        networks: PrivateNetworks,
        leases: ReuseLeases,
        run_id: str,
        cache_dir: Path,
        labels: Callable[[str], dict[str, str]],
    ) -> None:
        self._link = link
        self.settings = link.settings
        self._images = images
        self._scopes = scopes
        self._networks = networks
        self._leases = leases
        self.run_id = run_id
        self.cache_dir = cache_dir
        self._labels = labels
        #: Whether this process started or joined a run-scoped container.
        self.used_run_scope = False

    def scoped(
        self,
        spec: ContainerSpec,
        scope: str,
        scope_key: str,
        build: BuildSpec | None,
        group: str,
        reuse: bool = False,
    ) -> Container:
        """A ready container of ``spec`` for ``scope`` (see ``ContainerManager.start``)."""
        if scope == "function":
            return self._start(self._images.image_of(spec, build), spec, "function", group)

        def start_new() -> Container:
            # Resolved only to start one: a held container's later tests need no image.
            image = self._images.image_of(spec, build)
            if scope == "run":
                self.used_run_scope = True
                return self._run_scoped(image, spec, group)
            if reuse:
                return self._leases.start(
                    image, spec, scope, lambda: self._start(image, spec, scope, group)
                )
            return self._start(image, spec, scope, group)

        return self._scopes.acquire(scope, scope_key, spec, start_new)

    def _name(self, spec: ContainerSpec) -> str:
        return f"pytest-containers-{self.run_id[:8]}-{spec.slug(40)}-{uuid.uuid4().hex[:6]}"

    def _start(self, image: Image, spec: ContainerSpec, scope: str, group: str) -> Container:
        return self._networks.start_on(
            spec,
            scope,
            group,
            lambda network: start_container(
                self._link.client,
                image,
                spec,
                labels=self._labels(scope),
                wait_timeout=self.settings.timeout,
                name=self._name(spec),
                network=network,
                access=self._link.access,
            ),
        )

    def _run_scoped(self, image: Image, spec: ContainerSpec, group: str) -> Container:
        """One container for the whole run (see :mod:`._run_scope`)."""
        return run_scoped(
            self._link.client,
            cache_dir=self.cache_dir,
            run_id=self.run_id,
            image=image,
            spec=spec,
            access=self._link.access,
            timeout=self.settings.timeout,
            start=lambda: self._start(image, spec, "run", group),
        )
