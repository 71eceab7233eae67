"""The pytest side of services (see _manager/services.py): read the declarations, start them
before anything of the suite looks, hand their addresses over, report them, end them.

Why ``pytest_sessionstart(tryfirst=True)``: conftest.py files of the rootdir are loaded
before it and may implement the hook that declares services; it runs before every
conftest's own ``pytest_sessionstart`` (a plugin's tryfirst implementation comes first) and
before collection imports a test module, in a plain run, in xdist's controller (which runs
the suite's session hooks too) and in each worker. It does not run for ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
from typing import TYPE_CHECKING, Any

import pytest

from pytest_containers._manager.services import (
    check_unique,
    describe,
    exposed,
    parse_ini,
    start_services,
)
from pytest_containers._suite.state import parser_key, plugin_state
from pytest_containers.errors import ContainerError, DeclarationError, EngineUnavailableError

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container
    from pytest_containers._manager.services import Service, Started
    from pytest_containers._suite.state import PluginState

INI = "container_services"
services_key = pytest.StashKey["ServiceHooks"]()


def declared_services(config: pytest.Config) -> list[Service]:
    """The services of the ini key and of every ``pytest_containers_services`` hook."""
    try:
        found = parse_ini(config.getini(INI))
        for returned in _call_services_hook(config):
            if returned is None:
                continue
            from pytest_containers._manager.services import Service

            items = list(returned) if not isinstance(returned, Service) else [returned]
            for item in items:
                if not isinstance(item, Service):
                    raise DeclarationError(
                        "pytest_containers_services must return a list of "
                        f"pytest_containers.service(...), got {item!r} in it"
                    )
                found.append(item)
        check_unique(found)
    except DeclarationError as error:
        raise pytest.UsageError(str(error)) from None
    return found


def _call_services_hook(config: pytest.Config) -> list[Any]:
    """The hook's results. A hook that raises (a wrong ``service(...)`` call, say) stops
    the run with one line that names where, not an INTERNALERROR traceback."""
    try:
        return list(config.hook.pytest_containers_services(config=config))
    except (pytest.UsageError, KeyboardInterrupt):
        raise
    except Exception as error:
        where = "pytest_containers_services"
        frame = error.__traceback__
        while frame is not None:  # the innermost frame of the hook itself
            code = frame.tb_frame.f_code
            if code.co_name == "pytest_containers_services":
                where = f"pytest_containers_services ({code.co_filename}:{frame.tb_lineno})"
            frame = frame.tb_next
        hint = ""
        if isinstance(error, TypeError) and "service()" in str(error):
            hint = (
                "; it is service(image, *, name=None, build=None, per='worker', ...), in the "
                "marker's order: the image first, the rest by keyword"
            )
        raise pytest.UsageError(f"{where} raised {type(error).__name__}: {error}{hint}") from None


class _Unset(list[Any]):
    """What an option's ``dest`` holds before parsing, so that a value the command line
    gives (even the option's default) can be told from no value at all."""


def given_on_command_line(config: pytest.Config, dest: str) -> bool:
    """Whether the option stored in ``dest`` was given: in the arguments, in
    ``PYTEST_ADDOPTS`` or in the ini file's ``addopts``, under any of its flags."""
    args = [*config.invocation_params.args]
    args += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    addopts = config.getini("addopts")
    args += addopts if isinstance(addopts, list) else shlex.split(str(addopts))
    parser = config.stash.get(parser_key, None)
    if parser is None:  # the plugin was registered too late to be handed the parser
        flag = "--" + dest.replace("_", "-")
        return any(arg == flag or arg.startswith(flag + "=") for arg in args)
    unset = _Unset()
    try:
        parsed = parser.parse_known_args(args, namespace=argparse.Namespace(**{dest: unset}))
        return getattr(parsed, dest, unset) is not unset
    except Exception:  # an action that cannot start from _Unset (count): compare instead
        given = getattr(parser.parse_known_args(args), dest, None)
        return bool(given != getattr(parser.parse_known_args([]), dest, None))


class ServiceHooks:
    """Registered by the plugin for every run; does nothing without declared services."""

    def __init__(self) -> None:
        self.started: Started | None = None
        #: Why the services did not start when --container-unavailable=skip let the run go on.
        self.skip_reason: str | None = None
        #: A failure in an xdist worker, reported as the worker's one collection error: a
        #: worker that raises in its session start only crashes, and is started again.
        self.worker_error: str | None = None
        #: Whether xdist runs the tests in workers (each with its own per="worker" ones).
        self.distributed = False
        self._saved_environ: dict[str, str | None] = {}
        #: Whether a test of this process was set up: the first needs no reset.

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        config = session.config
        services = declared_services(config)
        if not services:
            return
        state = plugin_state(config)
        distributed = state.is_worker or getattr(config.option, "dist", "no") != "no"
        self.distributed = distributed
        if distributed:
            _check_fixed_ports(services)
        _check_option_dests(config, services)
        manager = state.manager()
        try:
            self.started = start_services(manager, services, base_dir=config.rootpath)
        except EngineUnavailableError as error:
            if state.settings.unavailable == "skip":
                self.skip_reason = f"services not started: {error.message}"
                return
            self._fail(state, f"services not started: {error}")
            return
        except ContainerError as error:
            self._fail(state, str(error))
            return
        environ, options = exposed(self.started)
        for key, value in environ.items():
            self._saved_environ.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        for dest, value in options.items():
            if given_on_command_line(config, dest):
                continue
            setattr(config.option, dest, value)

    def _fail(self, state: PluginState, message: str) -> None:
        if state.is_worker:
            # The worker's session goes on to its end (and removes what it holds there).
            self.worker_error = message
            return
        self._stop(state)
        raise pytest.UsageError(message)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> bool | None:
        if self.worker_error is None:
            return None
        report = pytest.CollectReport(session.nodeid, "failed", self.worker_error, [])
        session.ihook.pytest_collectreport(report=report)
        session.items = []
        session.testscollected = 0
        session.ihook.pytest_collection_finish(session=session)
        return True

    def _stop(self, state: PluginState) -> None:
        """A run that stops before its session: nothing of this process may stay."""
        if state.has_manager:
            manager = state.manager()
            manager.close()
            if state.whole_run:
                with contextlib.suppress(ContainerError):  # no engine: nothing was started
                    manager.remove_run_containers()
            manager.guard.stop()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """``reset=``: before each test's fixtures, but the first test of this process
        (its service is new). A failed reset errors the test; the service stays, since the
        suite was handed its address, and the next test resets it again."""
        if self.started is None:
            return
        from pytest_containers._manager.services import SCOPE_KEY

        manager = plugin_state(item.config).manager()
        for name, declared in self.started.services.items():
            if declared.reset is None:
                continue
            try:
                manager.reset_before_use(
                    self.started.containers[name],
                    declared.reset,
                    scope="session",
                    scope_key=SCOPE_KEY,
                    spec=declared.spec,
                    keep=True,
                )
            except ContainerError as error:
                pytest.fail(f"{item.nodeid}: service {name!r}: {error}", pytrace=False)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if self.skip_reason is not None:
            for item in items:
                item.add_marker(pytest.mark.skip(reason=self.skip_reason))

    def pytest_report_header(self) -> list[str]:
        if self.skip_reason is not None:
            return [f"containers: {self.skip_reason}"]
        if self.started is None:
            return []
        lines = []
        for name, container in self.started.containers.items():
            declared = self.started.services[name]
            # The header is the controller's: a per="worker" service there is its own.
            own = (
                "; each worker has its own" if self.distributed and declared.per == "worker" else ""
            )
            lines.append(f"containers: service {describe(declared, container)}{own}")
        return lines

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """--container-keep=failed keeps the services of a run with failed tests; the
        plugin's own sessionfinish then removes (or keeps) them with the rest."""
        if self.started is None:
            return
        state = plugin_state(session.config)
        manager = state.manager()
        keep = state.settings.keep
        failed = session.testsfailed > 0
        for name, container in self.started.containers.items():
            per = self.started.services[name].per
            if failed:
                manager.mark_failed(container)
            kept = keep == "always" or (keep == "failed" and failed)
            if per == "run" and state.whole_run and kept:
                manager.kept[container.id] = container

    def pytest_unconfigure(self) -> None:
        # An in-process run (pytester) must not leak a service's address into the next one.
        for key, value in self._saved_environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_environ.clear()


def _check_option_dests(config: pytest.Config, services: list[Service]) -> None:
    """Before anything starts: every dest of options= is one an option of the suite has."""
    for declared in services:
        for dest, _template in declared.options:
            if not hasattr(config.option, dest):
                raise pytest.UsageError(
                    f"service {declared.name!r}: options= names {dest!r}, which no pytest "
                    "option stores; use the dest of an option the suite adds (--redis-url "
                    "-> redis_url), in a conftest.py pytest loads before the session"
                )


def _check_fixed_ports(services: list[Service]) -> None:
    """Under xdist, every worker (and the controller, which runs the suite's session hooks
    too) has its own per="worker" service: one fixed host port cannot serve them all."""
    for declared in services:
        if declared.per != "worker":
            continue
        spec = declared.spec
        fixed = [f"{port} on {number}" for port, _ip, number in spec.port_bindings if number]
        if fixed:
            raise pytest.UsageError(
                f"service {declared.name!r}: per='worker' under xdist starts one per worker, "
                f"but it publishes {', '.join(fixed)}, a fixed host port only one can have; "
                "publish on an ephemeral port (ports=[...]) and read {port} from expose=/"
                "options=, or declare it per='run'"
            )


def started_services(config: pytest.Config) -> dict[str, Container]:
    """The services' containers by name, for the ``container_services`` fixture."""
    hooks = config.stash.get(services_key, None)
    if hooks is None or hooks.started is None:
        return {}
    return dict(hooks.started.containers)


def skip_reason(config: pytest.Config) -> str | None:
    hooks = config.stash.get(services_key, None)
    return hooks.skip_reason if hooks is not None else None
