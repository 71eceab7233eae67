"""The networks one process makes: those a fixture asks for, and the private network a
logical ``network=`` name stands for in one scope instance (made by the first container
that names it, removed when the last one on it is released; the run's is shared by
every worker and removed by the end of the run).

The lock is the manager's: what it guards here it guarded before the manager was split.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_containers._containers.faults import engine_gone
from pytest_containers._containers.networks import (
    Network,
    create_network,
    is_docker_mode,
    network_name,
    remove_network,
)
from pytest_containers._containers.spec import ContainerSpec
from pytest_containers._manager.engine_link import EngineLink
from pytest_containers._manager.run_scope import run_network

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container


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


class PrivateNetworks:
    """The networks of one process, and which container is on which private one."""

    def __init__(
        self,
        link: EngineLink,
        lock: threading.RLock,
        *,
        cache_dir: Path,
        run_id: str,
        labels: Callable[[str], dict[str, str]],
        kept: Mapping[str, Container],
    ) -> None:
        self._link = link
        self.settings = link.settings
        self._lock = lock
        self.cache_dir = cache_dir
        self.run_id = run_id
        self._labels = labels
        #: The manager's containers kept for debugging (their networks stay too).
        self._kept = kept
        #: Private networks by (scope instance, logical name), and each user's entry.
        self._networks: dict[tuple[str, str], _PrivateNetwork] = {}
        self._network_of: dict[str, tuple[str, str]] = {}

    def create(
        self,
        logical: str,
        *,
        scope: str,
        internal: bool = False,
        driver: str = "bridge",
        options: Mapping[str, object] | None = None,
    ) -> Network:
        """A new network labelled like this process's containers of ``scope``."""
        return create_network(
            self._link.client,
            name=network_name(self.run_id, logical),
            logical=logical,
            labels=self._labels(scope),
            internal=internal,
            driver=driver,
            options=options,
        )

    def remove(self, network: Network) -> None:
        """Remove a network made by :meth:`create`, unless a container kept for debugging
        is on it (the end of the run leaves it then, like the container)."""
        kept = self._kept
        if kept and set(network.containers()) & {c.name for c in kept.values()}:
            return
        remove_network(self._link.client, network)

    def start_on(
        self,
        spec: ContainerSpec,
        scope: str,
        group: str,
        start: Callable[[Network | None], Container],
    ) -> Container:
        """``start`` a container of ``spec`` on the private network its logical name
        stands for in ``group`` (none for a mode, a Network or no ``network=``)."""
        key: tuple[str, str] | None = None
        network = None
        if isinstance(spec.network, str) and not is_docker_mode(spec.network):
            key = (group, spec.network)
            network = self._join(key, scope)
        try:
            container = start(network)
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

    def _join(self, key: tuple[str, str], scope: str) -> Network:
        """The private network ``key`` names, made now if no container is on it."""
        with self._lock:
            entry = self._networks.get(key)
            if entry is None:
                if scope == "run":
                    network = run_network(
                        self._link.client,
                        cache_dir=self.cache_dir,
                        run_id=self.run_id,
                        logical=key[1],
                        labels=self._labels("run"),
                        timeout=self.settings.timeout,
                    )
                else:
                    network = self.create(key[1], scope=scope)
                entry = _PrivateNetwork(network, shared=scope == "run")
                self._networks[key] = entry
            entry.pending += 1
            return entry.network

    def left(self, container_id: str) -> None:
        """The removed container ``container_id`` left its private network, if it was on
        one; the last one out removes it."""
        key = self._network_of.get(container_id)
        if key is not None:
            self._leave(key, container_id)

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
        if self._link.gone:
            return  # the end of the run, the watchdog or the next sweep removes it
        try:
            remove_network(self._link.client, entry.network)
        except Exception as error:
            if not engine_gone(error):
                raise
