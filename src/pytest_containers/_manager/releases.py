"""What becomes of a container its owner is done with: kept for debugging
(``--container-keep``), given back to its reuse slot, or removed off the tests' path,
then its private network after it if it was the last one on it.
"""

from __future__ import annotations

import contextlib

from pytest_containers._cleanup.sweep import mark_kept
from pytest_containers._containers.container import Container, remove_container
from pytest_containers._containers.faults import engine_gone
from pytest_containers._manager.engine_link import EngineLink
from pytest_containers._manager.private_networks import PrivateNetworks
from pytest_containers._manager.removals import BackgroundRemovals
from pytest_containers._manager.resets import ResetShells
from pytest_containers._manager.reuse_leases import ReuseLeases


class Releases:
    """Releases and removals of one process's containers, and those it keeps."""

    def __init__(
        self,
        link: EngineLink,
        kept: dict[str, Container],
        shells: ResetShells,
        leases: ReuseLeases,
        networks: PrivateNetworks,
    ) -> None:
        self._link = link
        #: Containers kept for debugging (--container-keep), by id (the manager's dict).
        self.kept = kept
        self._shells = shells
        self._leases = leases
        self._networks = networks
        self._failed: set[str] = set()
        #: Removals of released containers, off the tests' path (see :meth:`release`).
        self._removals = BackgroundRemovals(self._remove_now)

    def mark_failed(self, container: Container) -> None:
        """A test that used ``container`` failed: --container-keep=failed keeps it."""
        self._failed.add(container.id)

    def release(self, container: Container) -> None:
        """Remove ``container`` (then its private network, if it was the last one on it)
        in the background, unless it is to be kept; one leased for reuse goes back to its
        slot instead, for the next lease."""
        self._shells.close(container.id)
        if self._leases.give_back(container.id):
            return
        keep = self._link.settings.keep
        if keep == "always" or (keep == "failed" and container.id in self._failed):
            # Marked on the engine, so that no later run's sweep removes it.
            container.name = mark_kept(self._link.client, container.id, container.name)
            self.kept[container.id] = container
            return
        self._removals.submit(container)

    def _remove_now(self, container: Container) -> None:
        """Remove ``container``, then leave its private network. What fails stays for
        the end of the process to find by its labels (and report if that fails too)."""
        with contextlib.suppress(Exception):
            self.quietly_remove(container)
        with contextlib.suppress(Exception):
            self._networks.left(container.id)

    def drop_broken(self, container: Container) -> None:
        """Remove ``container``, whose reset failed: given back to no reuse slot."""
        if self._leases.is_leased(container.id):
            self.quietly_remove(container)  # broken: not kept for the next run either
        else:
            self.release(container)

    def wait(self) -> None:
        """Wait until every removal :meth:`release` began is done."""
        self._removals.wait()

    def quietly_remove(self, container: Container, *, report: bool = False) -> None:
        """Remove ``container``; with the engine gone there is nothing to do now (the end
        of the run, the watchdog or the next run's sweep removes it). Other errors are
        raised when ``report``."""
        self._shells.close(container.id)
        self._leases.forget(container.id)  # a dead reused one: its slot names none
        if self._link.gone:
            return
        try:
            remove_container(container)
        except Exception as error:
            if report and not engine_gone(error):
                raise
