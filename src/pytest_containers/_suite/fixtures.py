"""Fixtures and fixture factories of pytest-containers.

``containers`` starts what a test's ``container`` markers declare; ``container`` is the one
container of a test that declares exactly one; ``container_factory`` starts containers from
inside a test; ``container_client`` is the docker-py client. ``container_fixture`` and
``image_fixture`` make module-level fixtures.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import pytest

from pytest_containers._suite.markers import declarations, declarations_key, image_for
from pytest_containers._suite.state import plugin_state
from pytest_containers.errors import ContainerError, EngineUnavailableError

if TYPE_CHECKING:
    import docker

    from pytest_containers._base.image import Image
    from pytest_containers._containers.container import Container, ContainerSpec
    from pytest_containers._containers.networks import Network
    from pytest_containers._images.build import BuildSpec
    from pytest_containers._manager.declaration import Declaration
    from pytest_containers._manager.manager import ContainerManager
    from pytest_containers.presets import Preset

used_containers_key = pytest.StashKey[list["Container"]]()


class ContainerFactory(Protocol):
    """``container_factory(image, **keywords) -> Container``, with the marker's keywords;
    a preset in place of the image."""

    def __call__(self, image: str | Preset, **keywords: Any) -> Container: ...


def _manager(request: pytest.FixtureRequest) -> ContainerManager:
    return plugin_state(request.config).manager()


def _waiting(request: pytest.FixtureRequest) -> contextlib.AbstractContextManager[None]:
    """The test waits for the plugin (a pull, a build, a container): progress lines may be
    shown meanwhile."""
    lines = plugin_state(request.config).terminal_lines
    return lines.waiting() if lines is not None else contextlib.nullcontext()


class EngineSkip(pytest.skip.Exception):  # type: ignore[misc,name-defined]
    """A skip for want of an engine; its report points at the test, not at the plugin."""


def _fail(
    request: pytest.FixtureRequest, error: ContainerError, *, image: str | None = None
) -> NoReturn:
    """Report a container error as a short message, not a traceback into the plugin; with
    --container-unavailable=skip, a missing engine skips the test instead. ``image`` is
    the one the test declared, for an error that does not name one."""
    # The same error object may come again for other tests (a missing engine is found
    # once per process): name this test in a copy, never in the shared one.
    error = error.for_test(request.node.nodeid, image=image)
    if (
        isinstance(error, EngineUnavailableError)
        and plugin_state(request.config).settings.unavailable == "skip"
    ):
        raise EngineSkip(error.message) from None
    # "from None": the error is the message; pytest's traceback of the plugin's internals
    # and the chained "during handling" one would only bury it.
    raise pytest.fail.Exception(str(error), pytrace=False) from None


def _scope_node(request: pytest.FixtureRequest, scope: str) -> pytest.Item | pytest.Collector:
    """The collection node whose teardown ends a container of ``scope``."""
    node: pytest.Item | pytest.Collector = request.node
    kinds: dict[str, tuple[type[pytest.Collector], ...]] = {
        "class": (pytest.Class, pytest.Module),
        "module": (pytest.Module,),
        "package": (pytest.Package,),
    }
    for kind in kinds.get(scope, ()):
        parent = node.getparent(kind)
        if parent is not None:
            return parent
    return request.session


def _record_use(request: pytest.FixtureRequest, container: Container) -> None:
    """Remember which containers a test used (for its logs on failure) and record the
    image it ran on in the test's user_properties (JUnit XML <property> elements)."""
    if isinstance(request.node, pytest.Item):
        record_container(request.node, container)
    # A fixture of a broader scope: record_fixture_values() finds it in each test's values.


def record_container(item: pytest.Item, container: Container) -> None:
    """``item`` used ``container``: its logs go into the item's report if it fails, and
    its image into the item's user_properties."""
    used = item.stash.setdefault(used_containers_key, [])
    if container not in used:
        used.append(container)
        record_image(item, container.image)


def record_image(item: pytest.Item, image: Image) -> None:
    """Record ``image`` in ``item``'s user_properties, once."""
    entry = (f"container-image {image.ref}", image.digest or image.id)
    if entry not in item.user_properties:
        item.user_properties.append(entry)


def record_fixture_values(item: pytest.Item) -> None:
    """Record the containers and images among the fixture values of ``item``, whatever
    the scope of the fixture that made them (a module-scoped ``container_fixture``, an
    ``image_fixture``, ...)."""
    containers = sys.modules.get("pytest_containers._containers.container")
    if containers is None:
        return  # no container made yet, and docker-py is not imported for nothing
    from pytest_containers._base.image import Image

    values: dict[str, object] = getattr(item, "funcargs", None) or {}
    for value in list(values.values()):
        found = list(value.values()) if isinstance(value, dict) else [value]
        for entry in found:
            if isinstance(entry, containers.Container):
                record_container(item, entry)
            elif isinstance(entry, Image):
                record_image(item, entry)


def _holders(config: pytest.Config, node: Any) -> list[Any]:
    """Where pytest finds the fixtures ``node`` may use, as public API shows them: its
    class and module, the conftest.py files above it (the nearest first), then the other
    plugin modules (``pytest_plugins``)."""
    found = [getattr(node, "cls", None), getattr(node, "module", None)]
    path = getattr(node, "path", None)
    conftests: list[tuple[int, Any]] = []
    others = []
    for plugin in config.pluginmanager.get_plugins():
        where = getattr(plugin, "__file__", None)
        if not isinstance(plugin, ModuleType) or where is None:
            continue
        if os.path.basename(where) == "conftest.py":
            folder = Path(where).parent
            if path is None or folder == path or folder in Path(path).parents:
                conftests.append((len(folder.parts), plugin))
        else:
            others.append(plugin)
    found += [plugin for _, plugin in sorted(conftests, key=lambda pair: -pair[0])]
    return [holder for holder in [*found, *others] if holder is not None]


def _network_fixture_name(request: pytest.FixtureRequest, made: Any) -> str | None:
    """The name a fixture made by network_fixture is registered under: the name it is
    assigned to where the test's fixtures come from (its module, a conftest.py, ...)."""
    nodes = [request.node, *request.session.items]
    seen: set[int] = set()
    for node in nodes:
        for holder in _holders(request.config, node):
            if id(holder) in seen:
                continue
            seen.add(id(holder))
            names: dict[str, object] = vars(holder)
            for name, value in names.items():
                if value is made:
                    return name
    return None


def _network_of(request: pytest.FixtureRequest, declaration: Declaration) -> Network | None:
    """The Network of the network_fixture a declaration names (set up now, if it is not
    yet), or None when it names none."""
    from pytest_containers._containers.networks import Network
    from pytest_containers.errors import NetworkError

    made = declaration.network_fixture
    if made is None:
        return None
    name = _network_fixture_name(request, made)
    if name is None:
        raise NetworkError(
            "network= names a network_fixture that is not assigned to a module-level name; "
            "write `backend = network_fixture()` in the module that uses it (or a conftest.py)"
        )
    value = request.getfixturevalue(name)
    if not isinstance(value, Network):
        raise NetworkError(f"fixture {name!r} gave {value!r}, not a Network", network=name)
    return value


def _group(request: pytest.FixtureRequest, scope: str) -> str:
    """The scope instance a private network of a container of ``scope`` belongs to."""
    node = request.node if scope == "function" else _scope_node(request, scope)
    return f"{scope}:{node.nodeid}"


def _plan(
    request: pytest.FixtureRequest,
    manager: ContainerManager,
    declaration: Declaration,
    *,
    image: str | None = None,
    held_by_fixture: bool = False,
) -> tuple[Callable[[], Container], Callable[[Container], None]]:
    """The one lifecycle of a declared container, for markers and fixtures alike: how to
    start it (safe to call from another thread) and how to hand it to its owner afterwards
    (in the test's thread, as pytest wants).

    A test's own container (function scope, or a fixture's that pytest keeps for the
    fixture's scope: ``held_by_fixture``) is released when its owner's teardown comes; a
    shared one is held by the manager for its scope (reset before each test but its first)
    and ended at that scope's teardown; a run-scoped one is the run's.
    """
    scope = declaration.scope
    network = _network_of(request, declaration)
    spec = declaration.spec_for(image, network)
    build = declaration.build_spec(request.config.rootpath)
    if scope == "function" or (held_by_fixture and scope != "run"):
        group = f"{scope}:{request.node.nodeid}"
        test = request.node.nodeid

        def start_own() -> Container:
            ahead = None if held_by_fixture else manager.ahead.take(test, spec)
            return ahead if ahead is not None else manager.start(spec, build=build, group=group)

        def release_at_teardown(container: Container) -> None:
            request.addfinalizer(lambda: manager.release(container))

        return start_own, release_at_teardown
    node = _scope_node(request, scope) if scope != "run" else request.session
    key = node.nodeid

    def start_shared() -> Container:
        started = manager.start(
            spec, scope=scope, scope_key=key, build=build, reuse=declaration.reuse
        )
        if declaration.reset is not None:
            manager.reset_before_use(
                started, declaration.reset, scope=scope, scope_key=key, spec=spec
            )
        return started

    def end_with_scope(container: Container) -> None:
        if scope != "run":
            _end_with_scope(manager, node, scope)

    return start_shared, end_with_scope


def ahead_specs(item: pytest.Item) -> list[tuple[ContainerSpec, BuildSpec | None]]:
    """The containers that ``item``'s markers start for it alone, which may be started
    ahead, before its turn: function scope, and no network= (a private network belongs
    to the test; a network fixture is set up only in its turn)."""
    found: list[tuple[ContainerSpec, BuildSpec | None]] = []
    declared = item.stash.get(declarations_key, None) or []
    if len(_batches(declared)) > 1:
        return []  # a batch starts only once the one before it is ready
    for declaration in declared:
        spec = declaration.spec_for(image_for(declaration, item))
        if declaration.scope != "function" or spec.network is not None:
            continue
        found.append((spec, declaration.build_spec(item.config.rootpath)))
    return found


def _start_all(starts: list[Callable[[], Container]]) -> list[Container | BaseException]:
    """Run the starts, at once when there are several; each gives its container or its
    exception, so that the ones that started are not lost to one that failed."""
    if len(starts) == 1:
        try:
            return [starts[0]()]
        except Exception as error:
            return [error]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(starts), thread_name_prefix="pytest-containers-start") as pool:
        futures = [pool.submit(start) for start in starts]
        return [future.exception() or future.result() for future in futures]


def _batches(declared: list[Declaration]) -> list[list[Declaration]]:
    """The test's declarations in the order they start; neighbours with
    ``start="parallel"`` form one batch that starts at once."""
    batches: list[list[Declaration]] = []
    for declaration in sorted(declared, key=lambda declaration: declaration.order):
        if declaration.start == "parallel" and batches and batches[-1][-1].start == "parallel":
            batches[-1].append(declaration)
        else:
            batches.append([declaration])
    return batches


_scope_ends_key = pytest.StashKey[set[str]]()


def _end_with_scope(
    manager: ContainerManager, node: pytest.Item | pytest.Collector, scope: str
) -> None:
    """End the manager's containers of ``scope`` at ``node``'s teardown (once per node
    and scope, however many tests and fixtures share them)."""
    ends: set[str] = node.stash.setdefault(_scope_ends_key, set())
    if scope not in ends:
        ends.add(scope)
        key = node.nodeid
        node.addfinalizer(lambda: manager.end_scope(scope, key))


def _fail_declared(
    request: pytest.FixtureRequest, declaration: Declaration, error: ContainerError
) -> NoReturn:
    _fail(request, error, image=image_for(declaration, request.node))


@pytest.fixture(autouse=True)
def _container_marker(request: pytest.FixtureRequest) -> None:
    """A test with ``container`` markers gets its containers even when it asks for no
    fixture: requested here, as pytest-django's ``django_db`` marker requests its
    database. A test that asks for ``containers`` gets them in its own fixture order."""
    if request.node.stash.get(declarations_key, None) and "containers" not in request.fixturenames:
        request.getfixturevalue("containers")


@pytest.fixture
def containers(request: pytest.FixtureRequest) -> dict[str, Container]:
    """The ready containers of the test's ``container`` markers, by name.

    A marker's name is its ``name=`` keyword, else the image's last path component
    (``redis`` for ``redis:7``).
    """
    declared = request.node.stash.get(declarations_key, None)
    if declared is None:  # an item collected without our hook (e.g. made by a plugin)
        declared = declarations(request.node)
    if not declared:
        return {}
    manager = _manager(request)
    started: dict[str, Container] = {}
    # As written, each batch ready before the next starts, so that a container may rely
    # on the ones declared before it (an app on its database).
    for batch in _batches(declared):
        plans = []
        for declaration in batch:
            try:
                image = image_for(declaration, request.node)
                plans.append((declaration, *_plan(request, manager, declaration, image=image)))
            except ContainerError as error:
                _fail_declared(request, declaration, error)
        with _waiting(request):
            outcomes = _start_all([start for _, start, _ in plans])
        failed: tuple[Declaration, BaseException] | None = None
        for (declaration, _, register), outcome in zip(plans, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed = failed or (declaration, outcome)
                continue
            register(outcome)
            _record_use(request, outcome)
            started[declaration.name] = outcome
        if failed is not None:
            declaration, problem = failed
            if not isinstance(problem, ContainerError):
                raise problem
            _fail_declared(request, declaration, problem)
    return started


@pytest.fixture
def container(request: pytest.FixtureRequest, containers: dict[str, Container]) -> Container:
    """The ready container of a test that declares exactly one ``container`` marker."""
    if len(containers) != 1:
        names = ", ".join(sorted(containers)) or "none"
        advice = (
            "add one, e.g. @pytest.mark.container('redis:7', ports=[6379])"
            if not containers
            else "use the `containers` fixture, a dict by name: containers['name']"
        )
        pytest.fail(
            f"{request.node.nodeid}: the `container` fixture needs exactly one "
            f"@pytest.mark.container on the test, found {len(containers)} ({names}); {advice}",
            pytrace=False,
        )
    return next(iter(containers.values()))


@pytest.fixture
def container_factory(request: pytest.FixtureRequest) -> Iterator[ContainerFactory]:
    """Start containers inside a test: ``container_factory("redis:7", ports=[6379])``.

    Takes the marker's keywords; each container is removed when the test ends. Errors are
    raised as the plugin's exceptions (e.g. ContainerStartupError), so a test can expect them.
    """
    from pytest_containers._manager.declaration import FACTORY, declare

    manager = _manager(request)
    made: list[Container] = []

    def start(image: str | Preset, **keywords: Any) -> Container:
        declaration = declare(FACTORY, (image,), keywords)
        spec = declaration.spec_for(network=_network_of(request, declaration))
        try:
            with _waiting(request):
                started = manager.start(spec, group=_group(request, "function"))
        except EngineUnavailableError as error:
            _fail(request, error)
        made.append(started)
        _record_use(request, started)
        return started

    yield start
    for started in reversed(made):
        manager.release(started)


@pytest.fixture(scope="session")
def container_client(request: pytest.FixtureRequest) -> docker.DockerClient:
    """The docker-py client of the engine the plugin uses."""
    try:
        return _manager(request).client
    except ContainerError as error:
        _fail(request, error)


@pytest.fixture(scope="session")
def container_services(request: pytest.FixtureRequest) -> dict[str, Container]:
    """The services' containers (``container_services`` ini key, the
    ``pytest_containers_services`` hook), by service name."""
    from pytest_containers._suite.service_hooks import skip_reason, started_services

    reason = skip_reason(request.config)
    if reason is not None:
        pytest.skip(reason)
    return started_services(request.config)


_PYTEST_SCOPES = {"run": "session"}


def container_fixture(
    image: str | Preset | None = None,
    *,
    build: str | os.PathLike[str] | None = None,
    scope: str = "function",
    reset: Sequence[str] | Callable[[Container], object] | bool | None = None,
    reuse: bool = False,
    **keywords: Any,
) -> Callable[..., Container]:
    """Make a fixture that yields a ready container; assign it to a module-level name::

        redis = container_fixture("redis:7", ports=[6379], scope="module")
        app = container_fixture(build="tests/app", ports=[8080])

    Takes the marker's keywords. ``scope`` is a pytest scope, or ``"run"``: one container
    shared by every xdist worker of the run. With ``build=`` (and ``dockerfile=``,
    ``target=``, ``buildargs=``), the image is built from that context, relative to the
    rootdir, once per content.

    ``reset`` (with a scope broader than the test, not ``"run"``): a command run in the
    container, e.g. ``["redis-cli", "FLUSHALL"]``, or a callable taking the Container, run
    before each test that uses it but the first; a failing one fails that test, and the
    next test gets a new container.

    ``reuse=True`` (with a scope broader than the test, not ``"run"``): with
    ``--container-reuse``, the container is kept after the run for the next run with the
    same declaration (see the README's "Reuse across runs").

    Raises :class:`~pytest_containers.errors.DeclarationError` where the module assigns
    the fixture, for arguments that cannot be used.
    """
    from pytest_containers._manager.declaration import FIXTURE, declare

    given = {"scope": scope, "reuse": reuse, **keywords}
    if build is not None:
        given["build"] = build
    if reset is not None:
        given["reset"] = reset
    declaration = declare(FIXTURE, () if image is None else (image,), given)
    # With reset= (or reuse=), the fixture runs for each test (to reset), and the manager
    # shares the container across the scope, as for markers; else pytest keeps it.
    held_by_manager = declaration.reset is not None or declaration.reuse
    fixture = _container_fixture_function(declaration, held_by_fixture=not held_by_manager)
    pytest_scope: Any = "function" if held_by_manager else _PYTEST_SCOPES.get(scope, scope)
    image_declared = None if build is not None else declaration.images[0]  # not prefetched
    made: Callable[..., Container] = _declare(
        fixture, image_declared, declaration.platform, scope=pytest_scope
    )
    return made


def _container_fixture_function(
    declaration: Declaration, *, held_by_fixture: bool
) -> Callable[[pytest.FixtureRequest], Container]:
    def fixture(request: pytest.FixtureRequest) -> Container:
        manager = _manager(request)
        try:
            start, register = _plan(request, manager, declaration, held_by_fixture=held_by_fixture)
            with _waiting(request):
                started = start()
        except ContainerError as error:
            _fail(request, error, image=declaration.images[0])
        register(started)
        _record_use(request, started)
        return started

    fixture.__doc__ = f"A ready container of {declaration.images[0]!r} ({declaration.scope} scope)."
    return fixture


def network_fixture(
    name: str | None = None,
    *,
    scope: str = "function",
    internal: bool = False,
    driver: str = "bridge",
    options: Mapping[str, Any] | None = None,
) -> Callable[..., Iterator[Network]]:
    """Make a fixture that yields a new :class:`Network`; assign it to a module-level
    name and pass it (or, in a test, its value) as ``network=``::

        backend = network_fixture(scope="session")
        db = container_fixture("postgres:16", network=backend, aliases=["db"], scope="module")

    ``name`` is the network's logical name (the engine's name adds the run and a unique
    suffix); by default the fixture's name. ``scope`` is a pytest scope; the network is
    removed when it ends, after disconnecting any container still on it. ``internal``
    cuts it off from outside networks; ``driver`` and ``options`` (more docker-py
    ``networks.create`` keywords, e.g. ``ipam``) shape it.
    """
    from pytest_containers._containers.networks import NETWORK_FIXTURE
    from pytest_containers._manager.declaration import SCOPES

    valid = [s for s in SCOPES if s != "run"]
    if scope not in valid:
        listed = ", ".join(repr(s) for s in valid)
        raise ValueError(f"network_fixture: invalid scope {scope!r}; choose one of {listed}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TypeError(f"network_fixture: name must be a non-empty str, not {name!r}")
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"network_fixture: options must be a dict, not {options!r}")

    def fixture(request: pytest.FixtureRequest) -> Iterator[Network]:
        manager = _manager(request)
        try:
            network = manager.create_network(
                name or request.fixturename or "network",
                scope=scope,
                internal=internal,
                driver=driver,
                options=options,
            )
        except ContainerError as error:
            _fail(request, error)
        yield network
        try:
            manager.remove_network(network)
        except ContainerError as error:
            _fail(request, error)

    fixture.__doc__ = f"A network{f' {name!r}' if name else ''} ({scope} scope)."
    # A container's network= knows it by this, and finds the name it is assigned to.
    setattr(fixture, NETWORK_FIXTURE, True)
    made: Callable[..., Iterator[Network]] = pytest.fixture(scope=scope)(fixture)  # type: ignore[call-overload]
    return made


def image_fixture(
    image: str | None = None,
    *,
    build: str | os.PathLike[str] | None = None,
    dockerfile: str | None = None,
    target: str | None = None,
    buildargs: Mapping[str, str] | None = None,
    platform: str | None = None,
    scope: str = "session",
) -> Callable[..., Image]:
    """Make a fixture that yields the pulled (or built) :class:`Image`::

        redis_image = image_fixture("redis:7")
        app_image = image_fixture(build="tests/app", target="test")

    A built image is built once per content across workers and runs, and not again
    while the context is unchanged; its base images are pulled through the image cache.
    """
    from pytest_containers._manager.declaration import IMAGE, declare

    given = {
        key: value
        for key, value in (
            ("build", build),
            ("dockerfile", dockerfile),
            ("target", target),
            ("buildargs", buildargs),
            ("platform", platform),
        )
        if value is not None
    }
    declaration = declare(IMAGE, () if image is None else (image,), given)
    name = declaration.images[0]

    def fixture(request: pytest.FixtureRequest) -> Image:
        manager = _manager(request)
        try:
            built = declaration.build_spec(request.config.rootpath)
            with _waiting(request):
                if built is not None:
                    return manager.build(built)
                return manager.image(name, platform=declaration.platform)
        except ContainerError as error:
            _fail(request, error, image=name)

    fixture.__doc__ = f"The image {name!r}, pulled (or built) once for the run."
    made: Callable[..., Image] = _declare(
        fixture, None if build is not None else name, declaration.platform, scope=scope
    )
    return made


#: The attribute that tells prefetch which image a factory-made fixture needs.
DECLARED_IMAGE = "_pytest_containers_image"


def _declare(
    function: Callable[..., Any], image: str | None, platform: str | None, scope: Any
) -> Any:
    if image is not None:  # builds are not prefetched
        setattr(function, DECLARED_IMAGE, (image, platform))
    return pytest.fixture(scope=scope)(function)


def fixture_images(item: pytest.Item) -> list[tuple[str, str | None]]:
    """The images that the factory-made fixtures an item uses declare, for prefetch: each
    fixture name looked up where pytest finds it (the nearest definition wins)."""
    holders = [vars(holder) for holder in _holders(item.config, item)]
    found: list[tuple[str, str | None]] = []
    for name in getattr(item, "fixturenames", ()):
        value = next((names[name] for names in holders if name in names), None)
        declared = getattr(value, DECLARED_IMAGE, None) or getattr(
            getattr(value, "__wrapped__", None), DECLARED_IMAGE, None
        )
        if declared is not None:
            found.append(declared)
    return found
