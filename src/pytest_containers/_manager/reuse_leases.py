"""One process's side of ``reuse=True`` across runs: its pool of leases (made on first
use), the start-up sweep of reused containers idle too long, leasing a container for a
spec, and what it reports (see :mod:`~pytest_containers._manager.reuse`).

The lock is the manager's: what it guards here it guarded before the manager was split.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_containers._base.image import Image
from pytest_containers._base.locks import ensure_private_dir
from pytest_containers._cleanup.sweep import SCOPE_LABEL, own_identity
from pytest_containers._containers.spec import ContainerSpec
from pytest_containers._manager.engine_link import EngineLink
from pytest_containers._manager.reuse import ReusePool, reusable_network, reuse_key, sweep_reused

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container


class ReuseLeases:
    """The containers this process leases for reuse, and the pool that holds them."""

    def __init__(
        self,
        link: EngineLink,
        lock: threading.RLock,
        *,
        cache_dir: Path,
        on_reused: Callable[[str], None],
    ) -> None:
        self._link = link
        self.settings = link.settings
        self._lock = lock
        self.cache_dir = cache_dir
        #: Told the id of a container an earlier run used (its reset= runs first).
        self._on_reused = on_reused
        self._pool: ReusePool | None = None

    @property
    def pool(self) -> ReusePool:
        """The containers this process leases for reuse (made on first use)."""
        with self._lock:
            if self._pool is None:
                self._pool = ReusePool(ensure_private_dir(self.cache_dir))
            return self._pool

    def sweep(self) -> None:
        """Remove the reused containers idle too long (run first by the guard's thread)."""
        # Expired reused containers first: it is quick, and leases may wait on it.
        with contextlib.suppress(Exception):
            self.pool.swept = sweep_reused(
                self._link.client, self.pool.cache_dir, ttl=self.settings.reuse_ttl
            )

    def start(
        self, image: Image, spec: ContainerSpec, scope: str, plain: Callable[[], Container]
    ) -> Container:
        """A container kept by an earlier lease of the same key, else a new one kept for
        the next; a ``plain`` one when reuse is off, the spec is on a network of this run,
        or every slot of its key is in use."""
        if not self.settings.reuse or not reusable_network(spec):
            return plain()
        # No run, worker or pid label: the run's end, its watchdog and the sweep of dead
        # runs spare it; the reuse sweep judges it by its lease and its idle time.
        client = self._link.client
        identity = (self._link.guard.identity or own_identity(client)).labels()
        access = self._link.access
        leased = self.pool.start(
            client,
            image,
            spec,
            key=reuse_key(spec, image, access),
            labels={**identity, SCOPE_LABEL: scope},
            access=access,
            wait_timeout=self.settings.timeout,
        )
        if leased is None:
            return plain()
        container, reused = leased
        if reused:
            self._on_reused(container.id)  # used before: reset= runs before its first test
        return container

    def report(self) -> tuple[list[dict[str, object]], list[str]]:
        """The containers leased (each "reused" or "started"), and the names of those the
        start-up sweep removed for being idle too long."""
        pool = self._pool
        if pool is None:
            return [], []
        return list(pool.records), list(pool.swept.removed) if pool.swept is not None else []

    def is_leased(self, container_id: str) -> bool:
        return self._pool is not None and self._pool.is_leased(container_id)

    def give_back(self, container_id: str) -> bool:
        """Whether ``container_id`` went back to its slot (it was leased)."""
        return self._pool is not None and self._pool.give_back(container_id)

    def forget(self, container_id: str) -> None:
        """``container_id`` was removed: its slot names none."""
        if self._pool is not None:
            self._pool.forget(container_id)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
