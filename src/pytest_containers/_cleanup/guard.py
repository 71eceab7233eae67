"""What keeps one process's containers from outliving it: the hold that marks its run
alive, the watchdog process that removes what it leaves if it dies, the start-up sweep
of what dead runs left, and the removal of its own leftovers at its end."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path

import docker

from pytest_containers._base.locks import ensure_private_dir
from pytest_containers._cleanup.sweep import (
    SCOPE_LABEL,
    Identity,
    RunHold,
    SweepResult,
    Watchdog,
    hold_run,
    is_kept,
    own_identity,
    start_watchdog,
    sweep_dead_runs,
)
from pytest_containers._cleanup.watchdog import list_labelled, process_labels, remove_resources
from pytest_containers._engine.connection import client_endpoint, endpoint_environ


class LeftoverGuard:
    """Keeps one pytest process from leaving containers behind (see the module): started
    with its first engine connection."""

    def __init__(self, *, cache_dir: Path, run_id: str, worker: str, whole_run: bool) -> None:
        self.cache_dir = cache_dir
        self.run_id = run_id
        self.worker = worker
        self.whole_run = whole_run
        #: Where this process runs (host, pid namespace, container), once connected.
        self.identity: Identity | None = None
        #: What the sweep at start removed (set by its thread when it is done).
        self.sweep_result: SweepResult | None = None
        self._sweep_done = threading.Event()
        self._hold: RunHold | None = None
        self._watchdog: Watchdog | None = None

    def start(self, client: docker.DockerClient, *, first: Callable[[], None]) -> None:
        """Mark this run alive, start the watchdog, and sweep in the background what dead
        runs left (after ``first``, a quick sweep of its own)."""
        self._hold = hold_run(ensure_private_dir(self.cache_dir), self.run_id)
        self._watchdog = start_watchdog(
            run_id=self.run_id,
            worker=self.worker,
            pid=os.getpid(),
            whole_run=self.whole_run,
            run_lock=self._hold.path,
            engine_environ=endpoint_environ(client_endpoint(client)),
        )
        self.identity = own_identity(client)

        def sweep() -> None:
            try:
                first()
                self.sweep_result = sweep_dead_runs(
                    client, self.cache_dir, own_run_id=self.run_id, me=self.identity
                )
            except Exception:  # best effort: --container-prune reports
                pass
            finally:
                self._sweep_done.set()

        threading.Thread(target=sweep, name="pytest-containers-sweep", daemon=True).start()

    def finished_sweep(self, timeout: float = 5.0) -> SweepResult | None:
        """The start-up sweep's result, waiting up to ``timeout`` seconds for it; None when
        there was none (no container started) or it failed."""
        if self._watchdog is None:
            return None
        self._sweep_done.wait(timeout)
        return self.sweep_result

    def stop(self) -> None:
        """Last of all: the watchdog may go, and the run is no longer alive here."""
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._hold is not None:
            self._hold.release()
            self._hold = None

    def remove_own_leftovers(self, client: docker.DockerClient, kept: Collection[str]) -> list[str]:
        """Remove what this process's labels still hold (a teardown that failed, a start
        that broke off), but the run-scoped containers and the ``kept`` ones (ids, and
        those marked kept on the engine); what could not be removed, one line each."""
        try:
            found = list_labelled(
                client,
                process_labels(
                    run_id=self.run_id, worker=self.worker, pid=os.getpid(), whole_run=False
                ),
            )
            leftovers = [
                r
                for r in found
                if r.labels.get(SCOPE_LABEL) != "run"
                and r.id not in kept
                and not is_kept(r)
                and (r.kind == "container" or not kept)
            ]
            _removed, errors = remove_resources(client, leftovers)
        except Exception as error:  # the engine went away, or broke off: the run's end tries
            errors = [f"what {self.worker} left: {error}"]
        return errors
