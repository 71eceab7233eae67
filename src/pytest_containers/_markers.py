"""Reading ``@pytest.mark.container(...)``: which containers a test declares.

Validated at collection, before any Docker call, so that a typo in a marker is a
collection error naming the test and the keyword rather than a failure at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_containers._reference import parse_reference
from pytest_containers.errors import ImageBuildError, ImageReferenceError

if TYPE_CHECKING:
    from pytest_containers._build import BuildSpec

MARKER = "container"
SCOPES = ("function", "class", "module", "package", "session", "run")
#: Marker keywords the plugin reads itself; the rest go to ContainerSpec.
PLUGIN_KEYWORDS = ("name", "scope", "build", "dockerfile", "target", "buildargs")
BUILD_KEYWORDS = ("dockerfile", "target", "buildargs")


class MarkerError(Exception):
    """A container marker that cannot be used; the message says why and what to do."""


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

    @property
    def param(self) -> str:
        """The parameter that carries the image when the marker names several."""
        return f"_container_image_{self.index}"

    def spec_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)


def default_name(image: str) -> str:
    """``redis:7`` -> ``redis``; ``ghcr.io/org/app@sha256:…`` -> ``app``."""
    reference = parse_reference(image)
    return reference.repository.rsplit("/", 1)[-1]


def build_spec(build: Any, kwargs: dict[str, Any], *, base_dir: Path, where: str) -> BuildSpec:
    """The BuildSpec of ``build=`` and its friends (popped from ``kwargs``); a relative
    context is taken relative to ``base_dir`` (the rootdir)."""
    from pytest_containers._build import BuildSpec

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


def _declaration(index: int, mark: pytest.Mark, where: str, rootdir: Path) -> Declaration:
    images = mark.args
    kwargs = dict(mark.kwargs)
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
    scope = kwargs.pop("scope", "function")
    if scope not in SCOPES:
        valid = ", ".join(repr(s) for s in SCOPES)
        raise MarkerError(f"{where}: invalid container scope {scope!r}; choose one of {valid}")
    name = kwargs.pop("name", None)
    if name is not None and (not isinstance(name, str) or not name):
        raise MarkerError(f"{where}: container name must be a non-empty string, got {name!r}")
    # Validates the keywords now (unknown ones list the valid ones), for every image.
    from pytest_containers._containers import ContainerSpec

    for image in images:
        try:
            ContainerSpec.from_kwargs(image, **kwargs)
        except (TypeError, ValueError) as error:
            valid = f"; the plugin also takes {', '.join(PLUGIN_KEYWORDS)}"
            message = str(error)
            raise MarkerError(
                f"{where}: @pytest.mark.container({image!r}): {message}"
                + (valid if "valid" in message else "")
            ) from None
    default = build.context.name if build is not None else default_name(images[0])
    return Declaration(
        index=index,
        images=tuple(images),
        name=name or default,
        scope=scope,
        kwargs=tuple(kwargs.items()),
        build=build,
    )


#: An item's declarations, read once at collection and reused by its fixtures.
declarations_key = pytest.StashKey[list[Declaration]]()


def declarations(node: pytest.Item | Any) -> list[Declaration]:
    """The container markers of a test (its own, its class's and its module's)."""
    marks = list(node.iter_markers(MARKER))
    if not marks:
        return []
    where = getattr(node, "nodeid", "") or getattr(node, "name", "?")
    rootdir = node.config.rootpath
    found = [_declaration(index, mark, where, rootdir) for index, mark in enumerate(marks)]
    names = [declaration.name for declaration in found]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise MarkerError(
            f"{where}: several container markers are named {', '.join(map(repr, duplicates))}; "
            "give each its own name=..., e.g. @pytest.mark.container('redis:7', name='cache')"
        )
    return found
