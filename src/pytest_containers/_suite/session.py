"""What one pytest process does at its start and its end, for plugin.py's hooks: the
settings, the per-process state and the lock file; progress lines; under xdist, what
workers hand the controller; at the end, closing the manager, the whole run's cleanup and
the lock file's update."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from pytest_containers._base.settings import OPTIONS, Settings, resolve_settings
from pytest_containers._suite.state import PluginState, plugin_state, state_key
from pytest_containers.errors import ContainerError, SettingError

if TYPE_CHECKING:
    from pytest_containers._base.image import Image
    from pytest_containers._suite.terminal import TerminalLines

# workeroutput keys: what a worker hands the controller at its end.
_WORKER_IMAGES = "pytest_containers_images"
_WORKER_USED = "pytest_containers_used"
_WORKER_KEPT = "pytest_containers_kept"
_WORKER_PARTIAL = "pytest_containers_partial"
_WORKER_DECLARED = "pytest_containers_declared"
_WORKER_SWEPT = "pytest_containers_swept"
_WORKER_REUSED = "pytest_containers_reused"
#: workerinput key: the controller's socket for the workers' progress lines.
_PROGRESS_SOCKET = "pytest_containers_progress"


def add_options(parser: pytest.Parser) -> None:
    """Every option of the settings table (flag, ini key, environment variable), the
    services' ini key, and the two commands --container-prune and --container-doctor."""
    group = parser.getgroup("containers", "container images and containers (pytest-containers)")
    for option in OPTIONS:
        help_text = f"{option.help} [env {option.env}, ini {option.ini}]"
        if option.is_flag:
            group.addoption(
                option.flag, action="store_true", dest=option.dest, default=None, help=help_text
            )
            group.addoption(
                "--no-" + option.flag[2:],
                action="store_false",
                dest=option.dest,
                default=None,
                help=f"turn off {option.flag}",
            )
        else:
            group.addoption(
                option.flag, dest=option.dest, default=None, metavar=option.metavar, help=help_text
            )
        parser.addini(option.ini, help=option.help, default=None)
    from pytest_containers._manager.services import INI_HELP
    from pytest_containers._suite.service_hooks import INI

    parser.addini(INI, help=INI_HELP, type="linelist", default=[])
    group.addoption(
        "--container-prune",
        nargs="?",
        const="stale",
        default=None,
        choices=("stale", "all"),
        metavar="stale|all",
        help="remove what dead pytest runs left on this engine (containers, networks, "
        "volumes of runs of this host that nobody holds any more, kept ones too) and builds "
        "of this project's contexts, then exit: 'stale' (the default) keeps the newest "
        "build of each context and those of the last day, 'all' removes every build",
    )
    group.addoption(
        "--container-doctor",
        action="store_true",
        default=False,
        help="check the engine and how tests reach containers: how the engine was found, "
        "what it is, the address tests get and why, the cache dir; then start one small "
        "container and reach its published port as a test would; run no tests",
    )


def settings_of(config: pytest.Config) -> Settings:
    """The settings from the command line, the ini file and the environment."""
    try:
        return resolve_settings(
            cli={option.name: config.getoption(option.dest) for option in OPTIONS},
            ini={option.name: config.getini(option.ini) for option in OPTIONS},
            environ=os.environ,
        )
    except SettingError as error:
        raise pytest.UsageError(str(error)) from None


def configure_state(config: pytest.Config) -> PluginState:
    """This process's state: its settings, run id and worker name, and the lock file."""
    settings = settings_of(config)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        run_id, worker = str(workerinput["testrunuid"]), str(workerinput["workerid"])
    else:
        run_id = getattr(config.option, "testrunuid", None) or uuid.uuid4().hex
        worker = "main"
        if hasattr(config.option, "testrunuid"):
            # xdist makes its run id after the session starts, and services of the whole
            # run start before that: its workers take this one instead.
            config.option.testrunuid = run_id
    state = PluginState(
        settings=settings,
        run_id=run_id,
        worker=worker,
        is_worker=workerinput is not None,
        whole_run=workerinput is None,
    )
    _read_lockfile(config, state)
    if (
        config.option.keyword
        or config.option.markexpr
        or config.args_source == pytest.Config.ArgsSource.ARGS
    ):
        state.whole_suite = False
    config.stash[state_key] = state
    return state


def _read_lockfile(config: pytest.Config, state: PluginState) -> None:
    """Find the lock file and read its pins now, so that a broken one stops the run at
    once rather than failing every test."""
    from pytest_containers._images.lockfile import DEFAULT_LOCKFILE, LockFileError, read_lockfile

    path = state.settings.lockfile or config.rootpath / DEFAULT_LOCKFILE
    state.lockfile = path
    state.lockfile_exists = path.is_file()
    if not state.lockfile_exists and (path.exists() or path.is_symlink()):
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise pytest.UsageError(
            f"the lock file {path} is {kind}; pytest-containers reads and writes image pins "
            "there: remove or rename it, or pass --container-lockfile with a file path"
        )
    if state.lockfile_exists and state.settings.lock != "update":
        try:
            state.pins = read_lockfile(path)
        except LockFileError as error:
            raise pytest.UsageError(str(error)) from None


def show_progress(config: pytest.Config) -> None:
    """Where this process's pull and build progress goes: the terminal, or from a worker
    to the controller (which shows it unless -q)."""
    state = plugin_state(config)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    write_line: Callable[[str], object] | None = None
    if workerinput is not None:
        path = workerinput.get(_PROGRESS_SOCKET)
        if path:
            from pytest_containers._suite.terminal import progress_sender

            write_line = progress_sender(str(path), state.worker)
    else:
        lines = _terminal_lines(config, only_while_waiting=True)
        if lines is not None:
            state.terminal_lines = lines
            write_line = lines.write_line
    if write_line is not None:
        from pytest_containers._suite.progress import PullReporter

        progress = PullReporter(write_line)
        state.on_progress = progress
        state.on_build_progress = progress.build


def _terminal_lines(config: pytest.Config, *, only_while_waiting: bool) -> TerminalLines | None:
    """Where progress lines go: pytest's terminal, unless -q asked for quiet."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or config.get_verbosity() < 0:
        return None
    from pytest_containers._suite.terminal import TerminalLines

    capture = config.pluginmanager.get_plugin("capturemanager")
    return TerminalLines(
        reporter,
        config.get_terminal_writer(),
        getattr(capture, "global_and_fixture_disabled", None) if only_while_waiting else None,
        only_while_waiting=only_while_waiting,
    )


class XdistHooks:
    """Hooks that exist only when pytest-xdist is installed."""

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        # The controller adopts xdist's run id, so that its labels match the workers'.
        state = plugin_state(node.config)
        state.run_id = str(node.workerinput["testrunuid"])
        if state.progress_listener is None:
            # The controller shows the workers' pull and build progress (not with -q).
            lines = _terminal_lines(node.config, only_while_waiting=False)
            if lines is not None:
                from pytest_containers._suite.terminal import ProgressListener

                with contextlib.suppress(OSError):
                    state.progress_listener = ProgressListener(lines.write_line)
        if state.progress_listener is not None:
            node.workerinput[_PROGRESS_SOCKET] = state.progress_listener.path
        if state.run_hold is None:
            # Held for the whole run, so that a worker's death never looks like the run's
            # (its watchdog would remove the run-scoped containers). A file lock, no Docker.
            from pytest_containers._base.locks import default_cache_dir, ensure_private_dir
            from pytest_containers._cleanup.sweep import hold_run

            with contextlib.suppress(ContainerError, OSError):
                cache_dir = ensure_private_dir(state.settings.cache_dir or default_cache_dir())
                state.run_hold = hold_run(cache_dir, state.run_id)

    @pytest.hookimpl
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        # A worker that died (error) may have left containers its watchdog had to chase.
        output = getattr(node, "workeroutput", {}) or {}
        absorb(plugin_state(node.config), output, died=error is not None)


def absorb(state: PluginState, report: dict[str, Any], *, died: bool = False) -> None:
    """Add what one process of the run did (its :func:`_process_report`) to the run's
    state: the controller does it for each worker, a plain run for itself."""
    state.worker_images.extend(report.get(_WORKER_IMAGES, []))
    state.kept.extend(report.get(_WORKER_KEPT, []))
    if report.get(_WORKER_PARTIAL):
        state.whole_suite = False
    for image, platform in report.get(_WORKER_DECLARED, []):
        state.declared_images.setdefault((image, platform), None)
    state.swept.extend(report.get(_WORKER_SWEPT, []))
    reused, swept = report.get(_WORKER_REUSED, ([], []))
    state.reused.extend(reused)
    state.reuse_swept.extend(swept)
    if report.get(_WORKER_USED) or died:
        state.needs_run_cleanup = True


def _process_report(state: PluginState, *, images: bool) -> dict[str, Any]:
    """What this process did, as one record (a worker hands it to the controller);
    ``images``: with the images it resolved (the controller's own are read directly)."""
    report: dict[str, Any] = {_WORKER_PARTIAL: not state.whole_suite}
    if not state.has_manager:
        return report
    manager = state.manager()
    manager.close()
    if images:
        from pytest_containers._suite.run_report import image_record

        report[_WORKER_IMAGES] = [image_record(i) for i in manager.resolved_images()]
    # The run's end cleans up only where something may be left: each process removed
    # what its own labels held (Manager.close); what is left is the run-scoped
    # containers, or what that could not remove.
    report[_WORKER_USED] = manager.used_run_scope or bool(manager.cleanup_errors)
    report[_WORKER_KEPT] = [_kept_record(c) for c in manager.kept.values()]
    report[_WORKER_SWEPT] = _swept_records(manager)
    report[_WORKER_REUSED] = manager.reuse_report()
    return report


def finish_session(session: pytest.Session, exitstatus: int) -> None:
    """The end of this process's session: close the manager; a worker hands the
    controller what it did; the controller (or a plain run) removes what the run's label
    still holds and updates the lock file."""
    state = plugin_state(session.config)
    if session.shouldfail or session.shouldstop or exitstatus not in (0, 1, 5):
        state.whole_suite = False  # stopped early (-x, Ctrl-C, an error): not all ran
    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput.update(_process_report(state, images=True))
        workeroutput[_WORKER_DECLARED] = [list(key) for key in state.declared_images]
    else:
        absorb(state, _process_report(state, images=False))
    if not state.is_worker and state.needs_run_cleanup:
        # The whole run ends here: whatever its label still holds goes (run-scoped
        # containers, failed teardowns, what a dead worker left), but the kept ones.
        with contextlib.suppress(ContainerError):
            _removed, state.cleanup_errors = state.manager().remove_run_containers(
                keep=[str(k["id"]) for k in state.kept]
            )
    if state.whole_run and state.settings.lock == "update" and state.lockfile is not None:
        images = run_images(state)
        if images:
            from pytest_containers._suite.run_report import update_lockfile

            state.lock_update = update_lockfile(
                state.lockfile,
                images,
                whole_suite=state.whole_suite,
                declared=list(state.declared_images),
            )
    if state.has_manager:
        state.manager().guard.stop()
    if state.run_hold is not None:
        state.run_hold.release()


def _swept_records(manager: Any) -> list[dict[str, object]]:
    """What this process's start-up sweep removed, as plain data for the controller."""
    result = manager.guard.finished_sweep()
    if result is None:
        return []
    return [dataclasses.asdict(run) for run in result.removed]


def _kept_record(container: Any) -> dict[str, object]:
    return {"id": container.id, "name": container.name, "image": container.image.ref}


def run_images(state: PluginState) -> list[Image]:
    """Every image the run resolved, this process's and its workers', one per reference."""
    from pytest_containers._suite.run_report import image_from_record, merge_images

    images = state.resolved_images()
    images += [image_from_record(record) for record in state.worker_images]
    return merge_images(images)


def unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(state_key, None)
    if state is not None and state.progress_listener is not None:
        state.progress_listener.close()
        state.progress_listener = None
