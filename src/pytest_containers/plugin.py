"""pytest hooks and options of pytest-containers.

Hooks only: fixtures live in fixtures.py, and the work (pulls, containers, waits) in the
core modules, which know nothing of pytest. Nothing here touches Docker, or even imports
docker-py, until a collected test declares a container.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_containers._markers import MarkerError, declarations, declarations_key
from pytest_containers._settings import OPTIONS, SettingError, Settings, resolve_settings
from pytest_containers._state import PluginState, plugin_state, state_key
from pytest_containers.errors import ContainerError
from pytest_containers.fixtures import (
    container,
    container_client,
    container_factory,
    containers,
    fixture_images,
    used_containers_key,
)

if TYPE_CHECKING:
    from pytest_containers._image import Image

__all__ = ["container", "container_client", "container_factory", "containers"]

MARKER_HELP = (
    "container(image, *more_images, name=None, ports=(), env=None, command=None, "
    "wait=None, scope='function', ...): run the test with a ready container of the image; "
    "several images parametrize the test. See the pytest-containers README."
)
_WORKER_IMAGES = "pytest_containers_images"
_WORKER_USED = "pytest_containers_used"
_WORKER_KEPT = "pytest_containers_kept"


def pytest_addoption(parser: pytest.Parser) -> None:
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
    group.addoption(
        "--container-prune",
        action="store_true",
        default=False,
        help="remove what dead pytest runs left on this engine (containers, networks, "
        "volumes of runs of this host that nobody holds any more, kept ones too) and older "
        "builds of this project's contexts, then exit",
    )


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("container_prune"):
        return None
    from pytest_containers._cleanup import sweep_dead_runs
    from pytest_containers._engine import connect
    from pytest_containers._locks import default_cache_dir, ensure_private_dir

    settings = _settings(config)
    try:
        client = connect()
        cache_dir = ensure_private_dir(settings.cache_dir or default_cache_dir())
    except ContainerError as error:
        print(f"pytest-containers: {error}")
        return int(pytest.ExitCode.USAGE_ERROR)
    result = sweep_dead_runs(client, cache_dir, own_run_id=None, spare_kept=False)
    for line in result.describe() or ["nothing to remove"]:
        print(f"pytest-containers: {line}")
    from pytest_containers._build import PRUNE_KEEP_NEWEST, PRUNE_OLDER_THAN, prune_stale_builds

    # Builds of this project (contexts under the rootdir): the newest of each stays.
    pruned = prune_stale_builds(
        client, keep_newest=PRUNE_KEEP_NEWEST, older_than=PRUNE_OLDER_THAN, under=config.rootpath
    )
    print(f"pytest-containers: removed {len(pruned)} stale built image(s)")
    return int(pytest.ExitCode.OK if not result.errors else pytest.ExitCode.TESTS_FAILED)


def _settings(config: pytest.Config) -> Settings:
    try:
        return resolve_settings(
            cli={option.name: config.getoption(option.dest) for option in OPTIONS},
            ini={option.name: config.getini(option.ini) for option in OPTIONS},
            environ=os.environ,
        )
    except SettingError as error:
        raise pytest.UsageError(str(error)) from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = _settings(config)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        run_id, worker = str(workerinput["testrunuid"]), str(workerinput["workerid"])
    else:
        run_id = getattr(config.option, "testrunuid", None) or uuid.uuid4().hex
        worker = "main"
    state = PluginState(
        settings=settings,
        run_id=run_id,
        worker=worker,
        is_worker=workerinput is not None,
        whole_run=workerinput is None,
    )
    _read_lockfile(config, state)
    config.stash[state_key] = state
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(), "containers-xdist")


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and config.get_verbosity() >= 0:
        from pytest_containers._progress import PullReporter

        progress = PullReporter(reporter.write_line)
        plugin_state(config).on_progress = progress
        plugin_state(config).on_build_progress = progress.build


def _read_lockfile(config: pytest.Config, state: PluginState) -> None:
    """Find the lock file and read its pins now, so that a broken one stops the run at
    once rather than failing every test."""
    from pytest_containers._lockfile import DEFAULT_LOCKFILE, LockFileError, read_lockfile

    path = state.settings.lockfile or config.rootpath / DEFAULT_LOCKFILE
    state.lockfile = path
    state.lockfile_exists = path.is_file()
    if state.lockfile_exists and state.settings.lock != "update":
        try:
            state.pins = read_lockfile(path)
        except LockFileError as error:
            raise pytest.UsageError(str(error)) from None


class XdistHooks:
    """Hooks that exist only when pytest-xdist is installed."""

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        # The controller adopts xdist's run id, so that its labels match the workers'.
        state = plugin_state(node.config)
        state.run_id = str(node.workerinput["testrunuid"])
        if state.run_hold is None:
            # Held for the whole run, so that a worker's death never looks like the run's
            # (its watchdog would remove the run-scoped containers). A file lock, no Docker.
            from pytest_containers._cleanup import hold_run
            from pytest_containers._locks import default_cache_dir, ensure_private_dir

            with contextlib.suppress(ContainerError, OSError):
                cache_dir = ensure_private_dir(state.settings.cache_dir or default_cache_dir())
                state.run_hold = hold_run(cache_dir, state.run_id)

    @pytest.hookimpl
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", {}) or {}
        state = plugin_state(node.config)
        state.worker_images.extend(output.get(_WORKER_IMAGES, []))
        state.kept.extend(output.get(_WORKER_KEPT, []))
        # A worker that died (error) may have left containers its watchdog had to chase.
        if output.get(_WORKER_USED) or error is not None:
            state.needs_run_cleanup = True


def pytest_report_header(config: pytest.Config) -> list[str]:
    from pytest_containers._engine import describe_engine

    state = plugin_state(config)
    settings = state.settings
    mirror = f", mirror {settings.mirror}" if settings.mirror else ""
    if state.lockfile_exists or settings.lock != "auto":
        pins = f"{len(state.pins)} pins" if state.lockfile_exists else "not there yet"
        lock = f", lock file {state.lockfile} ({pins}, {settings.lock})"
    else:
        lock = ""
    archive = f", archive {settings.archive}" if settings.archive else ""
    return [f"containers: {describe_engine()}, pull {settings.pull}{mirror}{lock}{archive}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A marker with several images parametrizes the test, one item per image."""
    try:
        declared = declarations(metafunc.definition)
    except MarkerError as error:
        raise pytest.Collector.CollectError(str(error)) from None
    for declaration in declared:
        if len(declaration.images) > 1:
            # Direct parametrization of a name no fixture has: pytest only asks that the
            # test "uses" it, and the containers fixture reads it from the callspec.
            metafunc.fixturenames.append(declaration.param)
            metafunc.parametrize(
                declaration.param, declaration.images, ids=list(declaration.images)
            )


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: prefetch only what will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = plugin_state(config)
    for item in items:
        for needed in fixture_images(item):
            state.declared_images.setdefault(needed, None)
        declared = item.stash[declarations_key] = declarations(item)
        if not declared:
            continue
        # A marked test gets its containers even when it asks for no fixture.
        fixturenames: list[str] = getattr(item, "fixturenames", [])
        if "containers" not in fixturenames:
            fixturenames.append("containers")
        callspec = getattr(item, "callspec", None)
        for declaration in declared:
            if declaration.build is not None:
                continue  # built on first use, not prefetched
            image = declaration.images[0]
            if callspec is not None and declaration.param in callspec.params:
                image = callspec.params[declaration.param]
            platform = dict(declaration.kwargs).get("platform")
            state.declared_images.setdefault((image, platform), None)


def pytest_collection_finish(session: pytest.Session) -> None:
    state = plugin_state(session.config)
    if state.declared_images and state.settings.prefetch and not session.config.option.collectonly:
        state.manager().prefetch(list(state.declared_images))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        state = plugin_state(item.config)
        for used in item.stash.get(used_containers_key, []):
            if state.has_manager:
                state.manager().mark_failed(used)
            try:
                logs = used.logs()
            except Exception as error:  # the container may be gone; say so, don't crash
                logs = f"(logs unavailable: {error})"
            report.sections.append((f"container logs: {used.name} ({used.image.ref})", logs))
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = plugin_state(session.config)
    if state.has_manager:
        manager = state.manager()
        manager.close()
        state.kept.extend(_kept_record(c) for c in manager.kept.values())
        if state.is_worker:
            workeroutput = session.config.workeroutput  # type: ignore[attr-defined]
            from pytest_containers._report import image_record

            workeroutput[_WORKER_IMAGES] = [image_record(i) for i in manager.resolved_images()]
            # The controller cleans up after the run only where something may be left.
            workeroutput[_WORKER_USED] = manager.used_run_scope
            workeroutput[_WORKER_KEPT] = state.kept
    if state.has_manager and not state.is_worker and state.manager().used_run_scope:
        state.needs_run_cleanup = True
    if not state.is_worker and (state.needs_run_cleanup or state.kept):
        # The whole run ends here: run-scoped containers, and any a dead worker left.
        with contextlib.suppress(ContainerError):
            manager = state.manager()
            manager.remove_run_containers(keep=[str(k["id"]) for k in state.kept])
            if state.kept:
                from pytest_containers._cleanup import mark_kept

                mark_kept(manager.cache_dir, state.run_id, [str(k["name"]) for k in state.kept])
    if state.whole_run and state.settings.lock == "update" and state.lockfile is not None:
        images = _run_images(state)
        if images:
            from pytest_containers._report import update_lockfile

            state.pins_written = update_lockfile(state.lockfile, images)
    if state.has_manager:
        state.manager().stop_guard()
    if state.run_hold is not None:
        state.run_hold.release()


def _kept_record(container: Any) -> dict[str, object]:
    return {"id": container.id, "name": container.name, "image": container.image.ref}


def _run_images(state: PluginState) -> list[Image]:
    """Every image the run resolved, this process's and its workers', one per reference."""
    from pytest_containers._report import image_from_record, merge_images

    images = state.resolved_images()
    images += [image_from_record(record) for record in state.worker_images]
    return merge_images(images)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = plugin_state(config)
    if state.kept:
        terminalreporter.section("containers: kept for debugging", sep="-")
        for kept in state.kept:
            terminalreporter.write_line(f"{kept['name']}  ({kept['image']})")
        names = " ".join(str(kept["name"]) for kept in state.kept)
        terminalreporter.write_line(f"remove them with: docker rm -f {names}")
    if not state.has_manager and not state.worker_images:
        return
    from pytest_containers._report import summary_lines, unpinned

    images = _run_images(state)
    if not images:
        return
    terminalreporter.section("containers: images", sep="-")
    for line in summary_lines(images):
        terminalreporter.write_line(line)
    if state.pins_written is not None:
        terminalreporter.write_line(f"{state.lockfile}: updated, {state.pins_written} pins")
    elif state.lockfile_exists:
        loose = unpinned(images, state.pins)
        if loose:
            terminalreporter.write_line(
                f"not pinned in {state.lockfile}: {', '.join(loose)}; pin them with "
                "pytest --container-lock=update",
                yellow=True,
            )
