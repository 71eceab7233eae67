"""The containers one process holds for a shared scope (class, module, package, session,
run), and their lifecycle: acquired (the held one, else one started now; a dead one
replaced once), reset before each test but its first, dropped when a reset fails,
handed back when the scope ends.

The lock is the manager's: what it guards here it guarded before the manager was split.
Starting a container holds a lock of its own, so that a scope's containers (services)
start concurrently.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_containers._containers.faults import container_fault
from pytest_containers._containers.spec import ContainerSpec
from pytest_containers._manager.engine_link import EngineLink
from pytest_containers._manager.resets import Reset, ResetShells, describe_reset, run_reset
from pytest_containers._manager.run_scope import spec_fingerprint
from pytest_containers.errors import ContainerError

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container


@dataclass
class _Scope:
    """The containers one scope (a test, class, module, ... or the run) holds."""

    containers: dict[ContainerSpec, Container] = field(default_factory=dict)


class ScopedContainers:
    """The containers held per scope key (``"module:<module id>"``, ...)."""

    def __init__(
        self,
        link: EngineLink,
        lock: threading.RLock,
        *,
        remove: Callable[[Container], None],
    ) -> None:
        self._link = link
        self._lock = lock
        #: Removes a dead or broken container, quietly.
        self._remove = remove
        self._scopes: dict[str, _Scope] = {}
        self._starting: dict[tuple[str, ContainerSpec], threading.Lock] = {}
        #: Shared containers replaced after they died (scope key and spec).
        self._replaced: set[str] = set()
        #: Shared containers that died again after their replacement, with the error.
        self._given_up: dict[str, ContainerError] = {}
        #: Shared containers handed to a test already: later tests get them reset first.
        self._handed: set[str] = set()

    def acquire(
        self, scope: str, scope_key: str, spec: ContainerSpec, start: Callable[[], Container]
    ) -> Container:
        """The container of ``spec`` the scope holds, else one ``start`` made now; a held
        one found dead is replaced once, and raises ``ContainerError`` after that."""
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
                fault = container_fault(
                    self._link.client, current.id, current.name, image=spec.image
                )
                if fault is None:
                    return current
                with self._lock:
                    held.containers.pop(spec, None)
                if scope != "run":
                    self._replacing(f"{key}:{spec_fingerprint(spec)}", scope, current, fault)
            # Started only now: a held container's later tests need no image.
            started = start()
            with self._lock:
                held.containers[spec] = started
            return started

    def _replacing(self, key: str, scope: str, dead: Container, fault: ContainerError) -> None:
        """A shared container died: replace it, once; a second death is the tests' to see
        (raises ``fault``, said so)."""
        if key in self._replaced:
            self._remove(dead)
            error = self._given_up[key] = ContainerError(
                f"{fault.message}; it was replaced once already, so the tests of this "
                f"{scope}-scoped container that remain fail",
                image=fault.image,
                container=fault.container,
            )
            raise error
        self._replaced.add(key)
        self._remove(dead)

    def mark_handed(self, container_id: str) -> None:
        """A test had ``container_id`` already (an earlier run's, leased for reuse)."""
        with self._lock:
            self._handed.add(container_id)

    def reset_before_use(
        self,
        container: Container,
        reset: Reset,
        *,
        key: tuple[str, str, ContainerSpec],
        shells: ResetShells,
        drop: Callable[[Container], None] | None,
    ) -> None:
        """Run ``reset`` before a test uses ``container``, unless this is its first test
        since it started; ``key`` is its scope, scope key and spec. A failed reset drops
        it from its scope (``drop`` removes or releases it; None keeps it, and the next
        test resets it again) and raises ContainerError."""
        scope, scope_key, spec = key
        with self._lock:
            first = container.id not in self._handed
            self._handed.add(container.id)
        if first:
            return
        failure = run_reset(container, reset, shells)
        if failure is None:
            return
        what = describe_reset(reset)
        if drop is None:
            raise ContainerError(
                f"the reset of container {container.name} ({spec.image}) by {what} failed: "
                f"{failure}; it stays, and the next test resets it again",
                image=spec.image,
                container=container.name,
            )
        with self._lock:
            held = self._scopes.get(f"{scope}:{scope_key}")
            if held is not None and held.containers.get(spec) is container:
                del held.containers[spec]
            self._handed.discard(container.id)
        with contextlib.suppress(Exception):  # close() finds what stays by its labels
            drop(container)
        raise ContainerError(
            f"the reset of container {container.name} ({spec.image}) by {what} failed: "
            f"{failure}; the next test gets a new container",
            image=spec.image,
            container=container.name,
        )

    def end(self, scope: str, scope_key: str) -> list[Container]:
        """Forget the scope's containers; the caller releases them."""
        with self._lock:
            held = self._scopes.pop(f"{scope}:{scope_key}", None)
        return list(held.containers.values()) if held is not None else []

    def end_all(self) -> dict[str, list[Container]]:
        """Forget every scope's containers, by scope key; the caller releases them."""
        with self._lock:
            scopes, self._scopes = self._scopes, {}
        return {key: list(held.containers.values()) for key, held in scopes.items()}
