"""Services: containers declared outside the tests (a conftest hook or the ini key
``container_services``), ready before the suite's own session hooks and collection, their
addresses handed over as environment variables and pytest option values.

This module knows nothing of pytest: the plugin asks it for declarations, starts them
through the :class:`~pytest_containers._manager.manager.ContainerManager` (so pulls go through the
image cache and the containers carry the run's labels) and applies what :func:`exposed`
returns.
"""

from __future__ import annotations

import os
import re
import shlex
import string
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_containers._base.reference import default_name
from pytest_containers.errors import (
    ContainerError,
    ContainerStartupError,
    ImageReferenceError,
    ServiceError,
    ServiceStartError,
)

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container, ContainerSpec
    from pytest_containers._images.build import BuildSpec
    from pytest_containers._manager.manager import ContainerManager
    from pytest_containers._manager.resets import Reset

PER = ("worker", "run")
#: The fields a template of ``expose=``/``options=`` may use.
TEMPLATE_FIELDS = ("host", "port", "name", "ip")
#: The scope key the manager holds services under (one per process, or one per run).
SCOPE_KEY = "pytest-containers-services"
_BUILD_KEYWORDS = ("dockerfile", "target", "buildargs")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Service:
    """One service, as :func:`service` or the ini key declared it."""

    name: str
    image: str | None
    build: str | None = None
    build_keywords: tuple[tuple[str, Any], ...] = ()
    per: str = "worker"
    expose: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    #: The marker's keywords (ports, env, command, wait, network, aliases, ...).
    keywords: tuple[tuple[str, Any], ...] = ()
    #: ``reset=``: run before each test of the process but its first (per="worker" only).
    reset: Reset | None = None

    @property
    def display(self) -> str:
        """The image, or ``build:path`` for a built one."""
        return self.image if self.image is not None else f"build:{self.build}"

    def spec(self, *, base_dir: Path) -> tuple[ContainerSpec, BuildSpec | None]:
        """The container spec (and, with ``build=``, the build) the manager starts."""
        from pytest_containers._containers.container import ContainerSpec

        keywords = dict(self.keywords)
        built = None
        if self.build is not None:
            from pytest_containers._images.build import BuildSpec

            built = BuildSpec.from_kwargs(
                self.build,
                platform=keywords.get("platform"),
                base_dir=base_dir,
                **dict(self.build_keywords),
            )
        # The service's name names the container too (pytest-containers-<run>-<name>-...).
        spec = ContainerSpec.from_kwargs(
            built.ref if built is not None else str(self.image), name=self.name, **keywords
        )
        return spec, built


def service(
    image: str | None = None,
    *,
    name: str | None = None,
    build: str | os.PathLike[str] | None = None,
    per: str = "worker",
    expose: Mapping[str, str] | None = None,
    options: Mapping[str, str] | None = None,
    **keywords: Any,
) -> Service:
    """Declare a service: a container started before the suite's session hooks and
    collection, in every process that runs tests; return a list of these from the hook
    ``pytest_containers_services(config)`` in ``conftest.py``::

        def pytest_containers_services(config):
            return [
                pytest_containers.service(
                    "redis:7", name="cache", ports=[6379],
                    expose={"REDIS_URL": "redis://{host}:{port}"},
                    options={"redis_url": "redis://{host}:{port[6379]}"},
                )
            ]

    The arguments are the ``container`` marker's, in its order: the image first, then
    keywords. ``name`` is the service's name (in the header, the container's name and the
    ``container_services`` fixture); by default, as for the marker, the image's last path
    component (``redis`` for ``redis:7``) or the build context's folder name.
    ``per="worker"`` (default) starts one per xdist worker (one in a plain run);
    ``per="run"`` one for the whole run, shared by every worker. ``expose`` sets
    environment variables and ``options`` pytest option values (by ``dest``, only those not
    given on the command line); their templates may use ``{host}``, ``{port}`` (the only or
    first published port), ``{port[6379]}``, ``{name}`` (the container's name) and ``{ip}``
    (its address on its network). The other keywords are the ``container`` marker's
    (``ports``, ``env``, ``command``, ``wait``, ``network``, ...), and ``build=`` with
    ``dockerfile=``, ``target=``, ``buildargs=`` builds the image instead. ``reset=`` (a
    command or a callable taking the container; ``per="worker"`` only) runs before each
    test of the process but its first.

    Raises :class:`~pytest_containers.errors.ServiceError` for a declaration that cannot
    be used.
    """
    shown = image if isinstance(image, str) else None
    if name is None:
        name = _default_name(image, build)
    try:
        return _service(image, name, build, per, expose, options, keywords)
    except ServiceError as error:
        error.service = name if isinstance(name, str) and name else None
        error.image = error.image or shown
        raise


def _default_name(image: object, build: object) -> str | None:
    """The marker's default: ``redis:7`` -> ``redis``; ``build="tests/app"`` -> ``app``."""
    if isinstance(image, str) and image.strip():
        try:
            return default_name(image.strip())
        except ImageReferenceError:
            return None  # the reference's own error comes when the spec is checked
    if isinstance(build, (str, os.PathLike)) and os.fspath(build).strip():
        return Path(os.fspath(build)).name or None
    return None


def _service(
    image: str | None,
    name: str | None,
    build: str | os.PathLike[str] | None,
    per: str,
    expose: Mapping[str, str] | None,
    options: Mapping[str, str] | None,
    keywords: dict[str, Any],
) -> Service:
    where = f"service {name!r}" if isinstance(name, str) and name else "service()"
    if (image is None) == (build is None):
        raise ServiceError(
            f"{where}: pass an image (service('redis:7', name='cache', ...)) or "
            "build='path/to/context', one of them"
        )
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise ServiceError(f"{where}: the image must be a non-empty string, got {image!r}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ServiceError(
            f"{where}: name= must be a non-empty string of letters, digits, '_', '.' "
            f"or '-', got {name!r}"
        )
    if per not in PER:
        raise ServiceError(f"{where}: invalid per={per!r}; choose 'worker' or 'run'")
    build_keywords = {key: keywords.pop(key) for key in _BUILD_KEYWORDS if key in keywords}
    if build_keywords and build is None:
        raise ServiceError(
            f"{where}: {', '.join(build_keywords)} only go with build='path/to/context'"
        )
    if "scope" in keywords:
        raise ServiceError(f"{where}: services take per='worker' or per='run', not scope=")
    reset = _reset(where, per, keywords.pop("reset", None))
    declared = Service(
        name=name,
        image=image.strip() if image is not None else None,
        build=os.fspath(build) if build is not None else None,
        build_keywords=tuple(build_keywords.items()),
        per=per,
        expose=_templates(where, "expose", expose),
        options=_templates(where, "options", options),
        keywords=tuple(keywords.items()),
        reset=reset,
    )
    _check(declared, where)
    return declared


def _reset(where: str, per: str, reset: Any) -> Reset | None:
    if reset is None:
        return None
    if per != "worker":
        raise ServiceError(
            f"{where}: reset= goes with per='worker' only: a per='run' service is shared by "
            "every xdist worker, and a reset before one worker's test would wipe what "
            "another worker's test is using"
        )
    from pytest_containers._manager.resets import checked_reset

    try:
        return checked_reset(reset)
    except ValueError as error:
        raise ServiceError(f"{where}: {error}") from None


def _templates(
    where: str, what: str, value: Mapping[str, str] | None
) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ServiceError(
            f"{where}: {what}= takes a dict of names to templates, e.g. "
            "{'REDIS_URL': 'redis://{host}:{port}'}, "
            f"got {value!r}"
        )
    pairs = []
    for key, template in value.items():
        if not isinstance(key, str) or not key or not isinstance(template, str):
            raise ServiceError(
                f"{where}: {what}= needs string names and templates, got {key!r}: {template!r}"
            )
        pairs.append((key, template))
    return tuple(pairs)


def _check(declared: Service, where: str) -> None:
    """Validate the keywords (as the marker does) and the templates against the ports."""
    from pytest_containers._containers.container import ContainerSpec

    keywords = dict(declared.keywords)
    try:
        spec = ContainerSpec.from_kwargs(declared.image or "build", name=declared.name, **keywords)
    except (TypeError, ValueError) as error:
        raise ServiceError(f"{where}: {error}") from None
    for what, pairs in (("expose", declared.expose), ("options", declared.options)):
        for key, template in pairs:
            for field_name in _fields(where, what, key, template):
                root, _, index = field_name.partition("[")
                if root not in TEMPLATE_FIELDS:
                    valid = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
                    raise ServiceError(
                        f"{where}: {what}[{key!r}] uses {{{field_name}}}; the fields are "
                        f"{valid} and {{port[6379]}}"
                    )
                if root != "port":
                    continue
                if not spec.ports:
                    raise ServiceError(
                        f"{where}: {what}[{key!r}] uses {{{field_name}}} but the service "
                        "publishes no port; add ports=[...]"
                    )
                if index:
                    from pytest_containers.wait import normalize_port

                    wanted = normalize_port(index.rstrip("]"))
                    if wanted not in spec.ports:
                        raise ServiceError(
                            f"{where}: {what}[{key!r}] uses {{{field_name}}} but the service "
                            f"publishes {', '.join(spec.ports)} only"
                        )


def _fields(where: str, what: str, key: str, template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ServiceError(
            f"{where}: {what}[{key!r}] is not a valid template ({error}); write a literal "
            "brace as {{ or }}"
        ) from None
    return [name for _text, name, _spec, _conv in parsed if name is not None]


# --- the ini key -----------------------------------------------------------------------

INI_HELP = (
    "services started before the suite, one per line: NAME IMAGE [key=value ...] with "
    "keys per, ports, env, command, wait, reset, expose, option, network, aliases, user, "
    "platform, "
    "build, dockerfile, target (see the pytest-containers README)"
)
_INI_LISTS = ("ports", "aliases")
_INI_PAIRS = {"env": "env", "expose": "expose", "option": "options", "buildarg": "buildargs"}
_INI_WORDS = ("reset",)
_INI_PLAIN = ("per", "command", "network", "user", "platform", "build", "dockerfile", "target")


def parse_ini(lines: Iterable[str]) -> list[Service]:
    """The services of the ``container_services`` ini key: one per line,
    ``NAME IMAGE [key=value ...]`` (or ``NAME build=PATH ...``), split like a shell line,
    blank lines and ``#`` comments ignored."""
    found = []
    for line in lines:
        if line.strip() and not line.strip().startswith("#"):
            found.append(parse_ini_line(line))
    return found


def parse_ini_line(line: str) -> Service:
    """One line of ``container_services``; see :func:`parse_ini`."""
    where = f"container_services line {line.strip()!r}"
    try:
        words = shlex.split(line, comments=True)
    except ValueError as error:
        raise ServiceError(f"{where}: {error}") from None
    if not words or "=" in words[0]:
        raise ServiceError(f"{where}: start with the service's name: NAME IMAGE [key=value ...]")
    name, rest = words[0], words[1:]
    image = None
    if rest and "=" not in rest[0]:
        image, rest = rest[0], rest[1:]
    keywords: dict[str, Any] = {}
    pairs: dict[str, dict[str, str]] = {}
    for word in rest:
        key, equals, value = word.partition("=")
        if not equals:
            raise ServiceError(f"{where}: {word!r} is not key=value")
        if key in _INI_LISTS:
            keywords[key] = [item for item in value.split(",") if item]
        elif key in _INI_PAIRS:
            inner, inner_equals, inner_value = value.partition("=")
            if not inner_equals or not inner:
                raise ServiceError(f"{where}: {key}= takes NAME=VALUE, got {value!r}")
            pairs.setdefault(_INI_PAIRS[key], {})[inner] = inner_value
        elif key in _INI_WORDS:
            keywords[key] = shlex.split(value)
        elif key == "wait":
            keywords["wait"] = parse_wait(value, where)
        elif key in _INI_PLAIN:
            keywords[key] = value
        else:
            valid = ", ".join(sorted((*_INI_LISTS, *_INI_PAIRS, *_INI_PLAIN, *_INI_WORDS, "wait")))
            raise ServiceError(f"{where}: unknown key {key!r}; the keys are {valid}")
    for key in ("env", "buildargs"):
        if key in pairs:
            keywords[key] = pairs[key]
    try:
        return service(
            image,
            name=name,
            expose=pairs.get("expose"),
            options=pairs.get("options"),
            **keywords,
        )
    except ServiceError as error:
        raise ServiceError(f"{where}: {error}", service=error.service, image=error.image) from None


def parse_wait(text: str, where: str) -> Any:
    """``log:TEXT``, ``port``, ``port:6379``, ``http:PORT/PATH``, ``exec:CMD``,
    ``healthy``: the wait strategy of an ini line."""
    from pytest_containers import wait

    kind, _, argument = text.partition(":")
    try:
        if kind == "log" and argument:
            return wait.for_log(argument)
        if kind == "port":
            return wait.for_port(argument or None)
        if kind == "http":
            port, slash, path = argument.partition("/")
            return wait.for_http("/" + path if slash else "/", port=port or None)
        if kind == "exec" and argument:
            return wait.for_exec(argument)
        if kind == "healthy" and not argument:
            return wait.for_healthy()
    except (TypeError, ValueError) as error:
        raise ServiceError(f"{where}: wait={text!r}: {error}") from None
    raise ServiceError(
        f"{where}: wait={text!r} is not one of log:TEXT, port, port:PORT, "
        "http:PORT/PATH, exec:COMMAND, healthy"
    )


def check_unique(services: Sequence[Service]) -> None:
    names = [s.name for s in services]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ServiceError(
            f"several services are named {', '.join(map(repr, duplicates))} (the ini key "
            "container_services and the pytest_containers_services hooks together); "
            "give each its own name"
        )


# --- starting them ---------------------------------------------------------------------


@dataclass
class Started:
    """The services of one process, by name, and what they hand over."""

    containers: dict[str, Container] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)


def start_services(
    manager: ContainerManager, services: Sequence[Service], *, base_dir: Path
) -> Started:
    """Start ``services`` concurrently through ``manager``: ``per="run"`` ones as
    run-scoped containers (the first process starts, the others attach), ``per="worker"``
    ones held by this process until :meth:`ContainerManager.close`.

    Raises :class:`ServiceStartError` for the first service that failed (in declaration
    order), after removing this process's services that did start;
    :class:`~pytest_containers.errors.EngineUnavailableError` as it is when no engine
    answers.
    """
    started = Started()
    if not services:
        return started
    manager.client  # noqa: B018 - one engine error, before any thread
    with ThreadPoolExecutor(max_workers=min(8, len(services))) as pool:
        futures = {s.name: pool.submit(_start_one, manager, s, base_dir) for s in services}
    failures = []
    for declared in services:
        started.services[declared.name] = declared
        error = futures[declared.name].exception()
        if error is None:
            started.containers[declared.name] = futures[declared.name].result()
        else:
            failures.append((declared, error))
    if failures:
        stop_services(manager, started)
        raise failures[0][1]
    return started


def _start_one(manager: ContainerManager, declared: Service, base_dir: Path) -> Container:
    try:
        spec, built = declared.spec(base_dir=base_dir)
        if declared.per == "run":
            return manager.start(spec, scope="run", scope_key=SCOPE_KEY, build=built)
        return manager.start(spec, scope="session", scope_key=SCOPE_KEY, build=built)
    except ContainerError as error:
        raise start_error(declared, error) from None
    except (TypeError, ValueError) as error:
        raise ServiceStartError(
            f"service {declared.name!r} ({declared.display}): {error}",
            service=declared.name,
            image=declared.display,
        ) from None


def start_error(declared: Service, error: ContainerError) -> ContainerError:
    """The error to report for a service: its name and image first, then what failed
    (the wait, the state, the log tail). An engine that does not answer stays what it is."""
    from pytest_containers.errors import EngineUnavailableError

    if isinstance(error, EngineUnavailableError):
        return error
    wait = ""
    if isinstance(error, ContainerStartupError) and error.wait and error.wait not in error.message:
        wait = f" (waiting {error.wait})"
    return ServiceStartError(
        f"service {declared.name!r} (image {declared.display}, per={declared.per}) did not "
        f"start{wait}: {error}",
        service=declared.name,
        image=declared.display,
    )


def stop_services(manager: ContainerManager, started: Started) -> None:
    """Remove this process's ``per="worker"`` services now (a failed start); run-scoped
    ones are removed by the process that ends the run, this one too if it does."""
    manager.end_scope("session", SCOPE_KEY)
    if manager.whole_run and any(s.per == "run" for s in started.services.values()):
        manager.remove_run_containers()


# --- handing them over -----------------------------------------------------------------


class _Ports:
    """``{port}`` (the first published port) and ``{port[6379]}`` in a template."""

    def __init__(self, container: Container) -> None:
        self._container = container

    def __getitem__(self, port: int | str) -> int:
        return self._container.address(port)[1]

    def __format__(self, spec: str) -> str:
        first = self._container.spec.ports[0]
        return format(self._container.address(first)[1], spec)


def _ip(container: Container) -> str:
    networks = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    for network in networks.values():
        address = str((network or {}).get("IPAddress") or "")
        if address:
            return address
    return ""


def render(template: str, container: Container) -> str:
    """Fill a template of ``expose=``/``options=`` for ``container``. ``{host}``/``{port}``
    come from :meth:`Container.address`, right for a local engine, a remote one and tests
    that run in a container."""
    ports = container.spec.ports
    host = container.address(ports[0])[0] if ports else container.host
    return template.format_map(
        {"host": host, "port": _Ports(container), "name": container.name, "ip": _ip(container)}
    )


def exposed(started: Started) -> tuple[dict[str, str], dict[str, str]]:
    """The environment variables and the option values (by dest) the services set."""
    environ: dict[str, str] = {}
    option_values: dict[str, str] = {}
    for name, container in started.containers.items():
        declared = started.services[name]
        for key, template in declared.expose:
            environ[key] = render(template, container)
        for dest, template in declared.options:
            option_values[dest] = render(template, container)
    return environ, option_values


def describe(declared: Service, container: Container) -> str:
    """``redis  redis:7 (per worker)  127.0.0.1:49153->6379/tcp  sets $REDIS_URL``: a line of
    the header."""
    dialled = [container.address(port) for port in container.spec.ports]
    where = ", ".join(
        f"{host}:{number}->{port}"
        for (host, number), port in zip(dialled, container.spec.ports, strict=True)
    )
    where = where or f"{container.name} (no published port)"
    handed = [f"${key}" for key, _ in declared.expose] + [
        f"option {dest}" for dest, _ in declared.options
    ]
    over = f"  sets {', '.join(handed)}" if handed else ""
    return f"{declared.name}  {declared.display} (per {declared.per})  {where}{over}"
