"""One process's link to the engine: the docker-py client made on first use (a missing
engine is reported once), the guard started with it, the wait for an engine that went
away, how the tests reach the containers, and the end of the run's removal.

The lock is the manager's: what it guards here it guarded before the manager was split.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import docker

from pytest_containers._base.settings import Settings
from pytest_containers._cleanup.guard import LeftoverGuard
from pytest_containers._cleanup.sweep import remove_run
from pytest_containers._containers.faults import (
    EngineRecovery,
    engine_gone,
    retry_unsent,
    test_fault,
)
from pytest_containers._engine.connection import Access, access_for, client_endpoint, connect
from pytest_containers.errors import ContainerError, EngineUnavailableError

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container


class EngineLink:
    """The client, the guard it starts, and the engine's recovery, made lazily."""

    def __init__(
        self,
        settings: Settings,
        guard: LeftoverGuard,
        lock: threading.RLock,
        *,
        on_connect: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.guard = guard
        self._lock = lock
        #: Run by the guard's start-up thread first (the sweep of expired reused ones).
        self._on_connect = on_connect
        self._client: docker.DockerClient | None = None
        self._client_error: EngineUnavailableError | None = None
        self._engine: EngineRecovery | None = None

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
                self.guard.start(self._client, first=self._on_connect)
            return self._client

    @property
    def made(self) -> docker.DockerClient | None:
        """The client if this process connected, else None (nothing is connected)."""
        return self._client

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

    @property
    def gone(self) -> bool:
        """Whether the engine is known to be gone: nothing to remove now (the end of the
        run, the watchdog or the next run's sweep does)."""
        return self._engine is not None and self._engine.gone

    @property
    def access(self) -> Access:
        """How this process's tests reach the containers (see :func:`access_for`)."""
        return access_for(self.client, override=self.settings.host)

    def remove_own_leftovers(self, kept: Mapping[str, Container]) -> list[str]:
        """What this process's labels still hold goes; returns what could not."""
        if self._client is None or self.gone:
            return []
        return self.guard.remove_own_leftovers(self._client, kept)

    def remove_run(self, run_id: str, keep: Iterable[str]) -> tuple[int, list[str]]:
        """Remove what run ``run_id``'s label still holds but ``keep`` (ids)."""
        # A bare client: this runs as the process exits, with no watchdog or sweep to start.
        client = self._client or connect()
        try:
            removed, errors = remove_run(client, run_id, keep=set(keep))
        except Exception as error:
            if not engine_gone(error):
                raise
            return 0, [
                f"what run {run_id} left: the engine at {client_endpoint(client).url} did not "
                "answer; the next run's sweep removes it"
            ]
        return len(removed), errors

    def fault(self, error: BaseException, used: Iterable[Container]) -> ContainerError | None:
        """What a test's error says (see :func:`~pytest_containers._containers.faults.
        test_fault`); None when this process never reached the engine."""
        if self._client is None:
            return None
        return test_fault(self._client, self.engine, error, used)
