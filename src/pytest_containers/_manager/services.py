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
    DeclarationError,
    ImageReferenceError,
    ServiceStartError,
)

if TYPE_CHECKING:
    from pytest_containers._containers.container import Container, ContainerSpec
    from pytest_containers._manager.declaration import Declaration
    from pytest_containers._manager.manager import ContainerManager
    from pytest_containers._manager.resets import Reset
    from pytest_containers.presets import Preset

PER = ("worker", "run")
#: The fields a template of ``expose=``/``options=`` may use.
TEMPLATE_FIELDS = ("host", "port", "name", "ip", "url")
#: The scope key the manager holds services under (one per process, or one per run).
SCOPE_KEY = "pytest-containers-services"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Service:
    """One service, as :func:`service` or the ini key declared it: the container's
    declaration (the marker's, checked by the same path) and what a service adds."""

    declaration: Declaration
    per: str = "worker"
    expose: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.declaration.name

    @property
    def display(self) -> str:
        """The image, or ``build:path`` for a built one."""
        return self.declaration.images[0]

    @property
    def spec(self) -> ContainerSpec:
        """The container spec the manager starts."""
        return self.declaration.spec_for()

    @property
    def reset(self) -> Reset | None:
        """``reset=``: run before each test of the process but its first (per="worker")."""
        return self.declaration.reset


def service(
    image: str | Preset | None = None,
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

    The image (or ``build=``) and the keywords are the ``container`` marker's, checked by
    the same path; ``name`` defaults as the marker's does (``redis`` for ``redis:7``).
    ``per="worker"`` (default) starts one per xdist worker, ``per="run"`` one for the
    whole run. ``expose`` sets environment variables and ``options`` pytest option values
    (by ``dest``, unless given on the command line), from templates of ``{host}``,
    ``{port}``, ``{port[6379]}``, ``{name}`` and ``{ip}``. ``reset=`` (``per="worker"``
    only) runs before each test of the process but its first.

    Raises :class:`~pytest_containers.errors.DeclarationError` for a declaration that
    cannot be used.
    """
    from pytest_containers._manager.declaration import SERVICE, declare

    shown = name if isinstance(name, str) and name else _default_name(image, build)
    where = f"service {shown!r}" if shown else "service()"
    try:
        _check_service_keywords(where, name, per, keywords)
        given = {"scope": "session" if per == "worker" else "run", **keywords}
        if name is not None:
            given["name"] = name
        if build is not None:
            given["build"] = build
        declared = Service(
            declaration=declare(SERVICE, () if image is None else (image,), given, where=where),
            per=per,
            expose=_templates(where, "expose", expose),
            options=_templates(where, "options", options),
        )
        _check_templates(declared, where)
    except DeclarationError as error:
        error.name = shown
        error.image = error.image or (image if isinstance(image, str) else None)
        raise
    return declared


def _check_service_keywords(
    where: str, name: object, per: str, keywords: Mapping[str, Any]
) -> None:
    """What a service takes that a marker does not: ``per=``, not ``scope=``; a name fit
    for a container's; ``reset=`` only for a service of its own worker."""
    if per not in PER:
        raise DeclarationError(f"{where}: invalid per={per!r}; choose 'worker' or 'run'")
    if "scope" in keywords:
        raise DeclarationError(f"{where}: services take per='worker' or per='run', not scope=")
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        raise DeclarationError(
            f"{where}: name= must be a non-empty string of letters, digits, '_', '.' "
            f"or '-', got {name!r}"
        )
    if keywords.get("reset") is not None and per != "worker":
        raise DeclarationError(
            f"{where}: reset= goes with per='worker' only: a per='run' service is shared "
            "by every xdist worker, and a reset before one worker's test would wipe what "
            "another worker's test is using"
        )


def _default_name(image: object, build: object) -> str | None:
    """The marker's default: ``redis:7`` -> ``redis``; ``build="tests/app"`` -> ``app``."""
    from pytest_containers.presets import Preset

    if isinstance(image, Preset):
        return image.name
    if isinstance(image, str) and image.strip():
        try:
            return default_name(image.strip())
        except ImageReferenceError:
            return None  # the reference's own error comes when the spec is checked
    if isinstance(build, (str, os.PathLike)) and os.fspath(build).strip():
        return Path(os.fspath(build)).name or None
    return None


def _templates(
    where: str, what: str, value: Mapping[str, str] | None
) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise DeclarationError(
            f"{where}: {what}= takes a dict of names to templates, e.g. "
            "{'REDIS_URL': 'redis://{host}:{port}'}, "
            f"got {value!r}"
        )
    pairs = []
    for key, template in value.items():
        if not isinstance(key, str) or not key or not isinstance(template, str):
            raise DeclarationError(
                f"{where}: {what}= needs string names and templates, got {key!r}: {template!r}"
            )
        pairs.append((key, template))
    return tuple(pairs)


def _check_templates(declared: Service, where: str) -> None:
    """Check the templates of ``expose=`` and ``options=`` against the published ports."""
    spec = declared.spec
    for what, pairs in (("expose", declared.expose), ("options", declared.options)):
        for key, template in pairs:
            for field_name in _fields(where, what, key, template):
                root, _, index = field_name.partition("[")
                if root not in TEMPLATE_FIELDS:
                    valid = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
                    raise DeclarationError(
                        f"{where}: {what}[{key!r}] uses {{{field_name}}}; the fields are "
                        f"{valid} and {{port[6379]}}"
                    )
                if root == "url" and not spec.urls:
                    raise DeclarationError(
                        f"{where}: {what}[{key!r}] uses {{url}} but the service has no URL "
                        "of its own; use a preset (service(presets.postgres(), ...)) or "
                        "urls={'': 'redis://{host}:{port}/0'}"
                    )
                if root != "port":
                    continue
                if not spec.ports:
                    raise DeclarationError(
                        f"{where}: {what}[{key!r}] uses {{{field_name}}} but the service "
                        "publishes no port; add ports=[...]"
                    )
                if index:
                    from pytest_containers.wait import normalize_port

                    wanted = normalize_port(index.rstrip("]"))
                    if wanted not in spec.ports:
                        raise DeclarationError(
                            f"{where}: {what}[{key!r}] uses {{{field_name}}} but the service "
                            f"publishes {', '.join(spec.ports)} only"
                        )


def _fields(where: str, what: str, key: str, template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise DeclarationError(
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
_INI_PLAIN = (
    *("per", "command", "network", "user", "platform", "build", "dockerfile", "target"),
    *("preset", "version"),
)


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
        raise DeclarationError(f"{where}: {error}") from None
    if not words or "=" in words[0]:
        raise DeclarationError(
            f"{where}: start with the service's name: NAME IMAGE [key=value ...]"
        )
    name, rest = words[0], words[1:]
    image = None
    if rest and "=" not in rest[0]:
        image, rest = rest[0], rest[1:]
    keywords: dict[str, Any] = {}
    pairs: dict[str, dict[str, str]] = {}
    for word in rest:
        key, equals, value = word.partition("=")
        if not equals:
            raise DeclarationError(f"{where}: {word!r} is not key=value")
        if key in _INI_LISTS:
            keywords[key] = [item for item in value.split(",") if item]
        elif key in _INI_PAIRS:
            inner, inner_equals, inner_value = value.partition("=")
            if not inner_equals or not inner:
                raise DeclarationError(f"{where}: {key}= takes NAME=VALUE, got {value!r}")
            pairs.setdefault(_INI_PAIRS[key], {})[inner] = inner_value
        elif key in _INI_WORDS:
            keywords[key] = shlex.split(value)
        elif key == "wait":
            keywords["wait"] = parse_wait(value, where)
        elif key in _INI_PLAIN:
            keywords[key] = value
        else:
            valid = ", ".join(sorted((*_INI_LISTS, *_INI_PAIRS, *_INI_PLAIN, *_INI_WORDS, "wait")))
            raise DeclarationError(f"{where}: unknown key {key!r}; the keys are {valid}")
    for key in ("env", "buildargs"):
        if key in pairs:
            keywords[key] = pairs[key]
    declared_image: str | Preset | None = image
    if "preset" in keywords or "version" in keywords:
        declared_image = _ini_preset(where, image, keywords)
    if keywords.get("reset") == ["preset"]:
        keywords["reset"] = True  # the preset's own reset
    try:
        return service(
            declared_image,
            name=name,
            expose=pairs.get("expose"),
            options=pairs.get("options"),
            **keywords,
        )
    except DeclarationError as error:
        raise DeclarationError(f"{where}: {error}", name=error.name, image=error.image) from None


def _ini_preset(where: str, image: str | None, keywords: dict[str, Any]) -> Preset:
    """``preset=postgres [version=16]``: the preset, at that version."""
    from pytest_containers.presets import BY_NAME

    name, version = keywords.pop("preset", None), keywords.pop("version", None)
    if name is None:
        raise DeclarationError(f"{where}: version= goes with preset=NAME")
    if image is not None:
        raise DeclarationError(f"{where}: give an image or preset=, not both")
    if name not in BY_NAME:
        raise DeclarationError(
            f"{where}: unknown preset {name!r}; the presets are {', '.join(sorted(BY_NAME))}"
        )
    return BY_NAME[name](version)


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
        raise DeclarationError(f"{where}: wait={text!r}: {error}") from None
    raise DeclarationError(
        f"{where}: wait={text!r} is not one of log:TEXT, port, port:PORT, "
        "http:PORT/PATH, exec:COMMAND, healthy"
    )


def check_unique(services: Sequence[Service]) -> None:
    from pytest_containers._manager.declaration import duplicated_names

    duplicates = duplicated_names([s.name for s in services])
    if duplicates:
        raise DeclarationError(
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
        spec = declared.spec
        built = declared.declaration.build_spec(base_dir)
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
    fields = {"host": host, "port": _Ports(container), "name": container.name}
    return template.format_map({**fields, "ip": _ip(container), "url": _Url(container)})


class _Url:
    """``{url}``: the container's own URL (a preset's), made only when a template asks."""

    def __init__(self, container: Container) -> None:
        self._container = container

    def __format__(self, spec: str) -> str:
        return format(self._container.url(), spec)


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
