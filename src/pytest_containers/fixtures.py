"""Fixtures and fixture factories of pytest-containers.

``containers`` starts what a test's ``container`` markers declare; ``container`` is the one
container of a test that declares exactly one; ``container_factory`` starts containers from
inside a test; ``container_client`` is the docker-py client. ``container_fixture`` and
``image_fixture`` make module-level fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import pytest

from pytest_containers._markers import Declaration, declarations
from pytest_containers._state import plugin_state
from pytest_containers.errors import ContainerError, EngineUnavailableError

if TYPE_CHECKING:
    import docker

    from pytest_containers._containers import Container
    from pytest_containers._image import Image
    from pytest_containers._manager import ContainerManager

used_containers_key = pytest.StashKey[list["Container"]]()


class ContainerFactory(Protocol):
    """``container_factory(image, **keywords) -> Container``, with the marker's keywords."""

    def __call__(self, image: str, **keywords: Any) -> Container: ...


def _manager(request: pytest.FixtureRequest) -> ContainerManager:
    state = plugin_state(request.config)
    state.used_containers = True
    return state.manager()


def _fail(request: pytest.FixtureRequest, error: ContainerError) -> NoReturn:
    """Report a container error as a short message, not a traceback into the plugin; with
    --container-unavailable=skip, a missing engine skips the test instead."""
    if error.test is None:
        error.test = request.node.nodeid
    if (
        isinstance(error, EngineUnavailableError)
        and plugin_state(request.config).settings.unavailable == "skip"
    ):
        raise pytest.skip.Exception(error.message) from None
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
    used = request.node.stash.setdefault(used_containers_key, [])
    if container not in used:
        used.append(container)
        image = container.image
        request.node.user_properties.append(
            (f"container-image {image.ref}", image.digest or image.id)
        )


def _start_declared(
    request: pytest.FixtureRequest, manager: ContainerManager, declaration: Declaration
) -> Container:
    from pytest_containers._containers import ContainerSpec

    callspec = getattr(request.node, "callspec", None)
    image = declaration.images[0]
    if callspec is not None and declaration.param in callspec.params:
        image = callspec.params[declaration.param]
    spec = ContainerSpec.from_kwargs(image, **declaration.spec_kwargs())
    scope = declaration.scope
    if scope == "function":
        container = manager.start(spec)
        request.addfinalizer(lambda: manager.release(container))
        return container
    node = _scope_node(request, scope) if scope != "run" else request.session
    key = node.nodeid
    container = manager.start(spec, scope=scope, scope_key=key)
    ends: set[str] = node.stash.setdefault(_scope_ends_key, set())
    if scope not in ends and scope != "run":
        ends.add(scope)
        node.addfinalizer(lambda: manager.end_scope(scope, key))
    return container


_scope_ends_key = pytest.StashKey[set[str]]()


@pytest.fixture
def containers(request: pytest.FixtureRequest) -> dict[str, Container]:
    """The ready containers of the test's ``container`` markers, by name.

    A marker's name is its ``name=`` keyword, else the image's last path component
    (``redis`` for ``redis:7``).
    """
    declared = declarations(request.node)
    if not declared:
        return {}
    manager = _manager(request)
    started: dict[str, Container] = {}
    for declaration in declared:
        try:
            container = _start_declared(request, manager, declaration)
        except ContainerError as error:
            if error.image is None:
                error.image = declaration.images[0]
            _fail(request, error)
        _record_use(request, container)
        started[declaration.name] = container
    return started


@pytest.fixture
def container(request: pytest.FixtureRequest, containers: dict[str, Container]) -> Container:
    """The ready container of a test that declares exactly one ``container`` marker."""
    if len(containers) != 1:
        names = ", ".join(sorted(containers)) or "none"
        pytest.fail(
            f"{request.node.nodeid}: the `container` fixture needs exactly one "
            f"@pytest.mark.container on the test, found {len(containers)} ({names}); "
            "use the `containers` fixture (a dict by name) or add a marker",
            pytrace=False,
        )
    return next(iter(containers.values()))


@pytest.fixture
def container_factory(request: pytest.FixtureRequest) -> Iterator[ContainerFactory]:
    """Start containers inside a test: ``container_factory("redis:7", ports=[6379])``.

    Takes the marker's keywords; each container is removed when the test ends. Errors are
    raised as the plugin's exceptions (e.g. ContainerStartupError), so a test can expect them.
    """
    from pytest_containers._containers import ContainerSpec

    manager = _manager(request)
    made: list[Container] = []

    def start(image: str, **keywords: Any) -> Container:
        spec = ContainerSpec.from_kwargs(image, **keywords)
        try:
            started = manager.start(spec)
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


_PYTEST_SCOPES = {"run": "session"}


def container_fixture(
    image: str, *, scope: str = "function", **keywords: Any
) -> Callable[..., Iterator[Container]]:
    """Make a fixture that yields a ready container; assign it to a module-level name::

        redis = container_fixture("redis:7", ports=[6379], scope="module")

    Takes the marker's keywords. ``scope`` is a pytest scope, or ``"run"``: one container
    shared by every xdist worker of the run.
    """
    from pytest_containers._containers import ContainerSpec
    from pytest_containers._markers import SCOPES

    if scope not in SCOPES:
        valid = ", ".join(repr(s) for s in SCOPES)
        raise ValueError(f"container_fixture: invalid scope {scope!r}; choose one of {valid}")
    spec = ContainerSpec.from_kwargs(image, **keywords)

    pytest_scope: Any = _PYTEST_SCOPES.get(scope, scope)

    def fixture(request: pytest.FixtureRequest) -> Iterator[Container]:
        manager = _manager(request)
        try:
            if scope == "run":
                started = manager.start(spec, scope="run", scope_key=request.session.nodeid)
            else:
                started = manager.start(spec)
        except ContainerError as error:
            if error.image is None:
                error.image = image
            _fail(request, error)
        yield started
        if scope != "run":
            manager.release(started)

    fixture.__doc__ = f"A ready container of {image!r} ({scope} scope)."
    made: Callable[..., Iterator[Container]] = _declare(
        fixture, image, spec.platform, scope=pytest_scope
    )
    return made


def image_fixture(image: str, *, platform: str | None = None) -> Callable[..., Image]:
    """Make a session fixture that yields the pulled :class:`Image`::

    redis_image = image_fixture("redis:7")
    """

    def fixture(request: pytest.FixtureRequest) -> Image:
        try:
            return _manager(request).image(image, platform=platform)
        except ContainerError as error:
            if error.image is None:
                error.image = image
            _fail(request, error)

    fixture.__doc__ = f"The image {image!r}, pulled once for the run."
    made: Callable[..., Image] = _declare(fixture, image, platform, scope="session")
    return made


#: The attribute that tells prefetch which image a factory-made fixture needs.
DECLARED_IMAGE = "_pytest_containers_image"


def _declare(function: Callable[..., Any], image: str, platform: str | None, scope: Any) -> Any:
    setattr(function, DECLARED_IMAGE, (image, platform))
    return pytest.fixture(scope=scope)(function)


def fixture_images(item: pytest.Item) -> list[tuple[str, str | None]]:
    """The images that the factory-made fixtures an item uses declare, for prefetch."""
    # _fixtureinfo is not public API; without it, those images are pulled on first use.
    info = getattr(item, "_fixtureinfo", None)
    found: list[tuple[str, str | None]] = []
    for name in getattr(item, "fixturenames", ()):
        for definition in getattr(info, "name2fixturedefs", {}).get(name, ()):
            function = getattr(definition, "func", None)
            declared = getattr(function, DECLARED_IMAGE, None) or getattr(
                getattr(function, "__wrapped__", None), DECLARED_IMAGE, None
            )
            if declared is not None:
                found.append(declared)
    return found
