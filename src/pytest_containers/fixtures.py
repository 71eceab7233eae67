"""Fixtures and fixture factories of pytest-containers.

``containers`` starts what a test's ``container`` markers declare; ``container`` is the one
container of a test that declares exactly one; ``container_factory`` starts containers from
inside a test; ``container_client`` is the docker-py client. ``container_fixture`` and
``image_fixture`` make module-level fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import pytest

from pytest_containers._markers import Declaration, declarations, declarations_key
from pytest_containers._state import plugin_state
from pytest_containers.errors import ContainerError, EngineUnavailableError

if TYPE_CHECKING:
    import docker

    from pytest_containers._build import BuildSpec
    from pytest_containers._containers import Container
    from pytest_containers._image import Image
    from pytest_containers._manager import ContainerManager

used_containers_key = pytest.StashKey[list["Container"]]()


class ContainerFactory(Protocol):
    """``container_factory(image, **keywords) -> Container``, with the marker's keywords."""

    def __call__(self, image: str, **keywords: Any) -> Container: ...


def _manager(request: pytest.FixtureRequest) -> ContainerManager:
    return plugin_state(request.config).manager()


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
    if not isinstance(request.node, pytest.Item):
        return  # a fixture of a broader scope: no one test to attach it to
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
    build = declaration.build
    if scope == "function":
        container = manager.start(spec, build=build)
        request.addfinalizer(lambda: manager.release(container))
        return container
    node = _scope_node(request, scope) if scope != "run" else request.session
    key = node.nodeid
    container = manager.start(spec, scope=scope, scope_key=key, build=build)
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
    declared = request.node.stash.get(declarations_key, None)
    if declared is None:  # an item collected without our hook (e.g. made by a plugin)
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


def _build_keywords(build: Any, keywords: dict[str, Any], where: str) -> dict[str, Any]:
    """Pop build=, dockerfile=, target= and buildargs= from ``keywords``, checking that
    they go together; the BuildSpec itself is made with the rootdir, at first use."""
    from pytest_containers._markers import BUILD_KEYWORDS

    found = {key: keywords.pop(key) for key in BUILD_KEYWORDS if key in keywords}
    if found and build is None:
        raise TypeError(f"{where}: {', '.join(found)} only go with build='path/to/context'")
    return found


def _image_or_build(image: str | None, build: Any, where: str) -> str:
    if (image is None) == (build is None):
        raise TypeError(f"{where}: pass an image reference or build='path/to/context'")
    return image if image is not None else f"build:{build}"


def container_fixture(
    image: str | None = None,
    *,
    build: str | os.PathLike[str] | None = None,
    scope: str = "function",
    **keywords: Any,
) -> Callable[..., Iterator[Container]]:
    """Make a fixture that yields a ready container; assign it to a module-level name::

        redis = container_fixture("redis:7", ports=[6379], scope="module")
        app = container_fixture(build="tests/app", ports=[8080])

    Takes the marker's keywords. ``scope`` is a pytest scope, or ``"run"``: one container
    shared by every xdist worker of the run. With ``build=`` (and ``dockerfile=``,
    ``target=``, ``buildargs=``), the image is built from that context, relative to the
    rootdir, once per content.
    """
    from pytest_containers._containers import ContainerSpec
    from pytest_containers._markers import SCOPES

    name = _image_or_build(image, build, "container_fixture")
    if scope not in SCOPES:
        valid = ", ".join(repr(s) for s in SCOPES)
        raise ValueError(f"container_fixture: invalid scope {scope!r}; choose one of {valid}")
    build_keywords = _build_keywords(build, keywords, "container_fixture")
    spec = ContainerSpec.from_kwargs(name, **keywords)
    pytest_scope: Any = _PYTEST_SCOPES.get(scope, scope)

    def fixture(request: pytest.FixtureRequest) -> Iterator[Container]:
        manager = _manager(request)
        try:
            built = _build_spec(request, build, build_keywords, spec.platform)
            key = request.session.nodeid if scope == "run" else ""
            started = manager.start(
                spec, scope="run" if scope == "run" else "function", scope_key=key, build=built
            )
        except ContainerError as error:
            if error.image is None:
                error.image = name
            _fail(request, error)
        _record_use(request, started)
        yield started
        if scope != "run":
            manager.release(started)

    fixture.__doc__ = f"A ready container of {name!r} ({scope} scope)."
    made: Callable[..., Iterator[Container]] = _declare(
        fixture, None if build is not None else name, spec.platform, scope=pytest_scope
    )
    return made


def _build_spec(
    request: pytest.FixtureRequest, build: Any, keywords: dict[str, Any], platform: str | None
) -> BuildSpec | None:
    if build is None:
        return None
    from pytest_containers._build import BuildSpec

    return BuildSpec.from_kwargs(
        build, platform=platform, base_dir=request.config.rootpath, **keywords
    )


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
    name = _image_or_build(image, build, "image_fixture")
    build_keywords = _build_keywords(
        build,
        {
            key: value
            for key, value in (
                ("dockerfile", dockerfile),
                ("target", target),
                ("buildargs", buildargs),
            )
            if value is not None
        },
        "image_fixture",
    )

    def fixture(request: pytest.FixtureRequest) -> Image:
        manager = _manager(request)
        try:
            built = _build_spec(request, build, build_keywords, platform)
            if built is not None:
                return manager.build(built)
            return manager.image(name, platform=platform)
        except ContainerError as error:
            if error.image is None:
                error.image = name
            _fail(request, error)

    fixture.__doc__ = f"The image {name!r}, pulled (or built) once for the run."
    made: Callable[..., Image] = _declare(
        fixture, None if build is not None else name, platform, scope=scope
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
