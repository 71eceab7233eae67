"""pytest hooks and options of pytest-containers.

Hooks only, each handing over to the module of ``_suite/`` that owns the work: options,
state and the session's start and end in ``session``, lookahead in ``lookahead``, what
pytest prints in ``reporting``, services in ``service_hooks``, fixtures in ``fixtures``.
Nothing here touches Docker, or even imports docker-py, until a collected test declares a container.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_containers._suite import lookahead as _lookahead
from pytest_containers._suite import reporting as _reporting
from pytest_containers._suite import session as _session
from pytest_containers._suite.fixtures import (
    _container_marker,  # noqa: F401  (autouse: pytest finds it in this namespace)
    container,
    container_client,
    container_factory,
    container_services,
    containers,
    fixture_images,
    record_fixture_values,
    used_containers_key,
)
from pytest_containers._suite.markers import declarations, declarations_key, image_for, param
from pytest_containers._suite.state import parser_key, plugin_state
from pytest_containers.errors import DeclarationError

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container

# The fixtures, registered by being in this module.
__all__ = ["container", "container_client", "container_factory", "container_services", "containers"]

MARKER_HELP = (
    "container(image, *more_images, name=None, ports=(), env=None, command=None, "
    "wait=None, scope='function', ...): run the test with a ready container of the image; "
    "several images parametrize the test. See the pytest-containers README."
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_containers import newhooks

    pluginmanager.add_hookspecs(newhooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    _session.add_options(parser)


def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser) -> None:
    early_config.stash[parser_key] = parser


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.getoption("container_doctor"):
        from pytest_containers._manager.doctor import run_doctor

        return run_doctor(_session.settings_of(config), print)
    prune = config.getoption("container_prune")
    if not prune:
        return None
    from pytest_containers._manager.prune import run_prune

    settings = _session.settings_of(config)
    return run_prune(settings, config.rootpath, every=prune == "all", say=print)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    _session.configure_state(config)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_session.XdistHooks(), "containers-xdist")
    from pytest_containers._suite.service_hooks import ServiceHooks, services_key

    config.stash[services_key] = ServiceHooks()
    config.pluginmanager.register(config.stash[services_key], "containers-services")


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    _session.show_progress(session.config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return _reporting.header_lines(config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A marker with several images parametrizes the test, one item per image."""
    try:
        declared = declarations(metafunc.definition)
    except DeclarationError as error:
        raise pytest.Collector.CollectError(str(error)) from None
    for declaration in declared:
        if len(declaration.images) > 1:
            # Direct parametrization of a name no fixture has: pytest only asks that the
            # test "uses" it, and the containers fixture reads it from the callspec.
            metafunc.fixturenames.append(param(declaration))
            metafunc.parametrize(
                param(declaration), declaration.images, ids=list(declaration.images)
            )


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: prefetch only what will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = plugin_state(config)
    for item in items:
        for needed in fixture_images(item):
            state.declared_images.setdefault(needed, None)
        declared = item.stash[declarations_key] = declarations(item)
        for declaration in declared:
            if declaration.build is not None:
                continue  # built on first use, not prefetched
            image = image_for(declaration, item)
            state.declared_images.setdefault((image, declaration.platform), None)


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        plugin_state(items[0].config).whole_suite = False


def pytest_collection_finish(session: pytest.Session) -> None:
    state = plugin_state(session.config)
    if state.declared_images and state.settings.prefetch and not session.config.option.collectonly:
        state.manager().prefetch(list(state.declared_images))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    item.stash[_reporting.test_started_key] = time.time()
    # The next test's containers start now, while this one's own (started ahead) gets
    # ready: two starts in flight use the engine's concurrency when tests are short.
    _lookahead.start_upcoming(item)
    try:
        return (yield)
    finally:
        record_fixture_values(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _reporting.complete_report(item, call, report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    _lookahead.note_upcoming(item, nextitem)
    try:
        return (yield)
    finally:
        _lookahead.drop_untaken(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A test that failed because the engine went away, or because one of its containers
    was killed or removed from outside, fails with one line that says so."""
    # Again here for the process's first test: at its setup no engine was reached yet.
    _lookahead.start_upcoming(item)
    try:
        return (yield)
    except Exception as error:
        state = plugin_state(item.config)
        if not state.has_manager:
            raise
        used: list[Container] = item.stash.get(used_containers_key, [])
        fault = state.manager().fault(error, used)
        if fault is None:
            raise
        fault.test = item.nodeid
        raise pytest.fail.Exception(f"{type(fault).__name__}: {fault}", pytrace=False) from None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _session.finish_session(session, exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    _session.unconfigure(config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    _reporting.terminal_summary(terminalreporter, config)
