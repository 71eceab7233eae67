"""The plugin's per-process state, kept in ``config.stash``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_containers._base.settings import LockMode, Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from pytest_containers._base.image import Image
    from pytest_containers._cleanup.sweep import RunHold
    from pytest_containers._images.build import BuildProgress
    from pytest_containers._images.lockfile import Pin
    from pytest_containers._images.pull import PullProgress
    from pytest_containers._manager.manager import ContainerManager
    from pytest_containers._suite.run_report import LockUpdate
    from pytest_containers._suite.terminal import ProgressListener, TerminalLines


@dataclass
class PluginState:
    """What one pytest process knows: its settings and run, and (made on first use, so a
    run without containers never imports docker) the manager of images and containers."""

    settings: Settings
    run_id: str
    worker: str
    is_worker: bool
    #: True where the run ends: xdist's controller, or the only process.
    whole_run: bool = True
    #: Images the collected tests declare, with their platform, in order of first use.
    declared_images: dict[tuple[str, str | None], None] = field(default_factory=dict)
    #: Images resolved by xdist workers, reported to the controller at their end.
    worker_images: list[dict[str, object]] = field(default_factory=list)
    #: Whether the end of the run must look for leftovers: run-scoped containers were
    #: used, or a worker died.
    needs_run_cleanup: bool = False
    #: Containers kept by --container-keep (this process's and, on the controller,
    #: the workers'): id, name, image.
    kept: list[dict[str, object]] = field(default_factory=list)
    #: What the start-up sweeps removed (this process's and, on the controller, the
    #: workers'), as records of _cleanup.RemovedRun.
    swept: list[dict[str, object]] = field(default_factory=list)
    #: Containers leased for reuse (this process's and, on the controller, the
    #: workers'), and the reused ones the start-up sweeps removed (see _manager/reuse.py).
    reused: list[dict[str, object]] = field(default_factory=list)
    reuse_swept: list[str] = field(default_factory=list)
    #: What the end of the run could not remove, one message each.
    cleanup_errors: list[str] = field(default_factory=list)
    #: The controller's hold on the run's lock under xdist (see _cleanup.hold_run).
    run_hold: RunHold | None = None
    #: The lock file, whether it exists, and its pins (by _lockfile.pin_key).
    lockfile: Path | None = None
    lockfile_exists: bool = False
    pins: dict[str, Pin] = field(default_factory=dict)
    #: What the end of an update run did to the lock file, for the summary.
    lock_update: LockUpdate | None = None
    #: False when only part of the suite runs (-k, -m, node ids, deselection, an early
    #: stop): an update run then keeps the pins of images it did not use.
    whole_suite: bool = True
    #: Called with pull progress; None where nobody watches (xdist workers, ``-q``).
    on_progress: Callable[[PullProgress], None] | None = None
    on_build_progress: Callable[[BuildProgress], None] | None = None
    #: This process's progress lines on the terminal (not on workers, not with -q).
    terminal_lines: TerminalLines | None = None
    #: On the xdist controller: where the workers' progress lines arrive.
    progress_listener: ProgressListener | None = None
    _manager: ContainerManager | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def has_manager(self) -> bool:
        return self._manager is not None

    def manager(self) -> ContainerManager:
        with self._lock:
            if self._manager is None:
                from pytest_containers._manager.manager import ContainerManager

                self._manager = ContainerManager(
                    self.settings,
                    run_id=self.run_id,
                    worker=self.worker,
                    whole_run=self.whole_run,
                    on_progress=self.on_progress,
                    on_build_progress=self.on_build_progress,
                    # An update run resolves the tags afresh; the others run the pins.
                    pins=None if self.settings.lock is LockMode.UPDATE else self.pins,
                )
            return self._manager

    def resolved_images(self) -> list[Image]:
        return self._manager.resolved_images() if self._manager is not None else []


state_key = pytest.StashKey[PluginState]()
#: The parser pytest hands the plugin (``pytest_load_initial_conftests``): pytest has no
#: public lookup of an option by ``dest``, but its parser parses a command line again
#: (``given_on_command_line`` in service_hooks.py).
parser_key = pytest.StashKey[pytest.Parser]()


def plugin_state(config: pytest.Config) -> PluginState:
    return config.stash[state_key]
