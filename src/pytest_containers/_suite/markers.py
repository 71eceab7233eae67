"""Reading ``@pytest.mark.container(...)``: which containers a test declares.

Validated at collection, before any Docker call, so that a typo in a marker is a
collection error naming the test and the keyword rather than a failure at run time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_containers._base.reference import default_name, parse_reference
from pytest_containers.errors import ImageBuildError, ImageReferenceError, MarkerError

if TYPE_CHECKING:
    from pytest_containers._images.build import BuildSpec
    from pytest_containers._manager.resets import Reset

MARKER = "container"
SCOPES = ("function", "class", "module", "package", "session", "run")
#: Marker keywords the plugin reads itself; the rest go to ContainerSpec.
PLUGIN_KEYWORDS = (
    "name", "scope", "start", "reset", "reuse", "build", "dockerfile", "target", "buildargs",
)  # fmt: skip
#: ``start=``: after the one before it is ready (default), or with its neighbours.
STARTS = ("sequential", "parallel")
BUILD_KEYWORDS = ("dockerfile", "target", "buildargs")


@dataclass(frozen=True)
class Declaration:
    """One ``container`` marker of a test: its images (several parametrize the test),
    the name the ``containers`` fixture maps, its scope and the container keywords."""

    index: int
    images: tuple[str, ...]
    name: str
    scope: str
    kwargs: tuple[tuple[str, Any], ...]
    #: With ``build=``: the image is built from this context (``images`` is its name).
    build: BuildSpec | None = None
    #: When it starts among the test's markers: as written, the module's and class's
    #: before the test's own, and stacked decorators top to bottom.
    order: int = 0
    #: ``"parallel"``: starts at once with its ``"parallel"`` neighbours.
    start: str = "sequential"
    #: ``reset=``: run before each test that uses the shared container but its first.
    reset: Reset | None = None
    #: ``reuse=True``: kept for later runs, when --container-reuse enables it.
    reuse: bool = False

    @property
    def param(self) -> str:
        """The parameter that carries the image when the marker names several."""
        return f"_container_image_{self.index}"

    def spec_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def image_for(self, item: object) -> str:
        """The image this marker runs for ``item`` (a test): the one the test's
        parametrization picked when the marker names several, else its only one."""
        callspec = getattr(item, "callspec", None)
        if callspec is not None and self.param in callspec.params:
            return str(callspec.params[self.param])
        return self.images[0]


def build_spec(build: Any, kwargs: dict[str, Any], *, base_dir: Path, where: str) -> BuildSpec:
    """The BuildSpec of ``build=`` and its friends (popped from ``kwargs``); a relative
    context is taken relative to ``base_dir`` (the rootdir)."""
    from pytest_containers._images.build import BuildSpec

    try:
        return BuildSpec.from_kwargs(
            build,
            dockerfile=kwargs.pop("dockerfile", None),
            target=kwargs.pop("target", None),
            buildargs=kwargs.pop("buildargs", None),
            platform=kwargs.get("platform"),
            base_dir=base_dir,
        )
    except ImageBuildError as error:
        raise MarkerError(f"{where}: {error.message}") from None


def check_reset(reset: Any, scope: str, where: str) -> Reset | None:
    """``reset=`` as a Declaration keeps it: a command (a tuple of words) or a callable."""
    if reset is None:
        return None
    if scope in ("function", "run"):
        why = (
            "a function-scoped container is new for each test already"
            if scope == "function"
            else "a run-scoped one is shared by the xdist workers, whose tests it would reset"
        )
        raise MarkerError(
            f"{where}: reset= only goes with scope='class', 'module', 'package' or 'session' "
            f"({why})"
        )
    from pytest_containers._manager.resets import checked_reset

    try:
        return checked_reset(reset)
    except ValueError as error:
        raise MarkerError(f"{where}: {error}") from None


def check_reuse(reuse: Any, scope: str, where: str) -> bool:
    """``reuse=``: True or False, and only for a container shared by the tests of a scope
    of one process (a function-scoped one is new for each test by promise)."""
    if not isinstance(reuse, bool):
        raise MarkerError(f"{where}: reuse= takes True or False, not {reuse!r}")
    if reuse and scope in ("function", "run"):
        why = (
            "a function-scoped container is new for each test"
            if scope == "function"
            else "a run-scoped one is shared by the xdist workers, and leased by one process"
        )
        raise MarkerError(
            f"{where}: reuse=True only goes with scope='class', 'module', 'package' or "
            f"'session' ({why}); add reset=[...] to clean it before each test"
        )
    return reuse


def _declaration(index: int, mark: pytest.Mark, where: str, rootdir: Path) -> Declaration:
    kwargs = dict(mark.kwargs)
    images, build = _images_or_build(mark.args, kwargs, where, rootdir)
    scope = kwargs.pop("scope", "function")
    if scope not in SCOPES:
        valid = ", ".join(repr(s) for s in SCOPES)
        raise MarkerError(f"{where}: invalid container scope {scope!r}; choose one of {valid}")
    start = kwargs.pop("start", "sequential")
    if start not in STARTS:
        valid = " or ".join(repr(s) for s in STARTS)
        raise MarkerError(f"{where}: invalid container start {start!r}; choose {valid}")
    reset = check_reset(kwargs.pop("reset", None), scope, where)
    reuse = check_reuse(kwargs.pop("reuse", False), scope, where)
    name = kwargs.pop("name", None)
    if name is not None and (not isinstance(name, str) or not name):
        raise MarkerError(f"{where}: container name must be a non-empty string, got {name!r}")
    _check_container_keywords(images, kwargs, where)
    default = build.context.name if build is not None else default_name(images[0])
    return Declaration(
        index=index,
        images=images,
        name=name or default,
        scope=scope,
        start=start,
        kwargs=tuple(kwargs.items()),
        build=build,
        reset=reset,
        reuse=reuse,
    )


def _images_or_build(
    args: tuple[Any, ...], kwargs: dict[str, Any], where: str, rootdir: Path
) -> tuple[tuple[str, ...], BuildSpec | None]:
    """The marker's images (checked references), or the name of what ``build=`` builds
    and its BuildSpec; the build keywords are popped from ``kwargs``."""
    images = args
    build = None
    if "build" in kwargs:
        if images:
            raise MarkerError(f"{where}: @pytest.mark.container takes an image or build=, not both")
        build = build_spec(kwargs.pop("build"), kwargs, base_dir=rootdir, where=where)
        images = (build.ref,)
    elif not images:
        raise MarkerError(
            f"{where}: @pytest.mark.container needs an image, "
            "e.g. @pytest.mark.container('redis:7', ports=[6379]), or build='path/to/context'"
        )
    stray = [keyword for keyword in BUILD_KEYWORDS if keyword in kwargs]
    if stray:
        raise MarkerError(f"{where}: {', '.join(stray)} only go with build='path/to/context'")
    for image in images if build is None else ():
        if not isinstance(image, str):
            raise MarkerError(
                f"{where}: @pytest.mark.container images must be strings, got {image!r}"
            )
        try:
            parse_reference(image)
        except ImageReferenceError as error:
            raise MarkerError(f"{where}: {error}") from None
    return tuple(images), build


def _check_container_keywords(images: tuple[str, ...], kwargs: dict[str, Any], where: str) -> None:
    """Check the container keywords now, for every image, so that a typo is a collection
    error (an unknown keyword lists the valid ones)."""
    from pytest_containers._containers.container import ContainerSpec
    from pytest_containers._containers.networks import NETWORK_FIXTURE

    checkable = dict(kwargs)
    if hasattr(checkable.get("network"), NETWORK_FIXTURE):
        checkable["network"] = "network-fixture"  # stands for the Network it will yield
    for image in images:
        try:
            ContainerSpec.from_kwargs(image, **checkable)
        except (TypeError, ValueError) as error:
            # name= is both the plugin's (the fixture's key) and the spec's: list it once.
            also = [k for k in PLUGIN_KEYWORDS if k not in ContainerSpec.keywords()]
            valid = f"; the plugin also takes {', '.join(also)}"
            message = str(error)
            raise MarkerError(
                f"{where}: @pytest.mark.container({image!r}): {message}"
                + (valid if "valid" in message else "")
            ) from None


#: An item's declarations, read once at collection and reused by its fixtures.
declarations_key = pytest.StashKey[list[Declaration]]()


def declarations(node: pytest.Item | Any) -> list[Declaration]:
    """The container markers of a test (its own, its class's and its module's)."""
    with_nodes = list(node.iter_markers_with_node(MARKER))
    if not with_nodes:
        return []
    where = getattr(node, "nodeid", "") or getattr(node, "name", "?")
    rootdir = node.config.rootpath
    try:
        found = [
            _declaration(index, mark, where, rootdir) for index, (_, mark) in enumerate(with_nodes)
        ]
    except MarkerError as error:
        error.test = error.test or where  # the message names it already: see __str__
        raise
    # pytest lists the test's own marks first, bottom decorator first, then its class's
    # and module's: start the outer ones first, and decorators in the order written.
    owners: list[Any] = []
    for owner, _ in with_nodes:
        if owner not in owners:
            owners.append(owner)
    written: list[int] = []
    for owner in reversed(owners):
        indexes = [i for i, (other, _) in enumerate(with_nodes) if other is owner]
        written.extend(reversed(indexes) if owner is node else indexes)
    found = [
        dataclasses.replace(declaration, order=written.index(declaration.index))
        for declaration in found
    ]
    names = [declaration.name for declaration in found]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise MarkerError(
            f"{where}: several container markers are named {', '.join(map(repr, duplicates))}; "
            "give each its own name=..., e.g. @pytest.mark.container('redis:7', name='cache')",
            test=where,
        )
    return found
