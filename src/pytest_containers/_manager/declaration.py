"""One declaration path: what every way of declaring a container turns into.

The marker, ``container_fixture``, ``container_factory``, ``service()`` and the ini line
``container_services`` all hand their arguments to :func:`declare`, which checks them once
(image or build, the build keywords, the references, scope, start, reset, reuse, the
name and the container keywords) and returns a :class:`Declaration`, or raises one
:class:`~pytest_containers.errors.DeclarationError` that names where it was written and
what to write instead. What each form may take, and how its messages name it, is its
:class:`Form`.

Engine-free and pytest-free: the pytest side and the services start what a declaration
says through the manager.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_containers._base.reference import default_name, parse_reference
from pytest_containers._containers.networks import NETWORK_FIXTURE
from pytest_containers._containers.spec import ContainerSpec
from pytest_containers._manager.resets import checked_reset
from pytest_containers.errors import DeclarationError, ImageBuildError, ImageReferenceError
from pytest_containers.presets import Preset, merged

if TYPE_CHECKING:
    from pytest_containers._images.build import BuildSpec
    from pytest_containers._manager.resets import Reset

__all__ = [
    "FACTORY",
    "FIXTURE",
    "IMAGE",
    "MARKER",
    "SCOPES",
    "SERVICE",
    "BuildRequest",
    "Declaration",
    "Form",
    "declare",
    "duplicated_names",
]

SCOPES = ("function", "class", "module", "package", "session", "run")
#: ``start=``: after the one before it is ready (default), or with its neighbours.
STARTS = ("sequential", "parallel")
BUILD_KEYWORDS = ("dockerfile", "target", "buildargs")
#: What a network_fixture stands as while its Network is not made yet.
_NETWORK_STAND_IN = "network-fixture"


@dataclass(frozen=True)
class Form:
    """One way of declaring: how messages name it, what it looks like, and which of the
    plugin's own keywords it takes (the container keywords are the same for all)."""

    what: str
    example: str
    takes: tuple[str, ...]
    #: A marker may name several images, one test per image.
    several_images: bool = False
    #: The declared name also names the container (``pytest-containers-<run>-<name>-…``).
    names_container: bool = True
    #: ``network=`` may be a network_fixture, resolved when a test sets it up.
    network_fixtures: bool = True


MARKER = Form(
    "@pytest.mark.container",
    "@pytest.mark.container('redis:7', ports=[6379])",
    ("name", "scope", "start", "reset", "reuse", "build", *BUILD_KEYWORDS),
    several_images=True,
    names_container=False,
)
FIXTURE = Form(
    "container_fixture",
    "container_fixture('redis:7', ports=[6379], scope='module')",
    ("name", "scope", "reset", "reuse", "build", *BUILD_KEYWORDS),
)
FACTORY = Form(
    "container_factory",
    "container_factory('redis:7', ports=[6379])",
    ("name",),
)
IMAGE = Form(
    "image_fixture",
    "image_fixture('redis:7')",
    ("build", *BUILD_KEYWORDS),
    names_container=False,
    network_fixtures=False,
)
SERVICE = Form(
    "service",
    "service('redis:7', name='cache', ports=[6379])",
    ("name", "scope", "reset", "build", *BUILD_KEYWORDS),
    network_fixtures=False,
)


@dataclass(frozen=True)
class BuildRequest:
    """``build=`` and its keywords as written; :meth:`spec` makes the BuildSpec once the
    directory relative paths start from (the rootdir) is known."""

    context: str
    dockerfile: str | None = None
    target: str | None = None
    buildargs: tuple[tuple[str, str], ...] = ()

    @property
    def ref(self) -> str:
        """How the build is named before it is made (``build:tests/app``)."""
        given = os.path.normpath(self.context)
        name = Path(given).name if os.path.isabs(given) else given
        if self.dockerfile not in (None, "Dockerfile"):
            name = f"{name}/{os.path.normpath(str(self.dockerfile))}"
        return f"build:{name}#{self.target}" if self.target else f"build:{name}"

    def spec(self, *, base_dir: Path, platform: str | None) -> BuildSpec:
        """The BuildSpec; raises ImageBuildError for a missing context or Dockerfile."""
        from pytest_containers._images.build import BuildSpec

        return BuildSpec.from_kwargs(
            self.context,
            dockerfile=self.dockerfile,
            target=self.target,
            buildargs=dict(self.buildargs),
            platform=platform,
            base_dir=base_dir,
        )


@dataclass(frozen=True)
class Declaration:
    """A container as any form declared it, checked: its specs (one per image; a
    marker with several parametrizes its test), its name, scope and the lifecycle
    keywords. Frozen; equal declarations start equal containers."""

    name: str
    specs: tuple[ContainerSpec, ...]
    scope: str = "function"
    build: BuildRequest | None = None
    start: str = "sequential"
    #: ``reset=``: run before each test that uses the shared container but its first.
    reset: Reset | None = None
    #: ``reuse=True``: kept for later runs, when --container-reuse enables it.
    reuse: bool = False
    #: ``network=`` as written when it is a network_fixture (the specs hold a stand-in).
    network_fixture: Any = None
    #: A marker's position among the test's markers (``index``) and when it starts
    #: among them (``order``: the module's and class's first, decorators as written).
    index: int = 0
    order: int = 0

    @property
    def images(self) -> tuple[str, ...]:
        return tuple(spec.image for spec in self.specs)

    @property
    def platform(self) -> str | None:
        return self.specs[0].platform

    @property
    def shared(self) -> bool:
        """Shared by the tests of a scope (held by the manager), not a test's own."""
        return self.scope != "function"

    def spec_for(self, image: str | None = None, network: Any = None) -> ContainerSpec:
        """The spec of ``image`` (by default the only or first one), on ``network`` (the
        Network a network_fixture gave, when the declaration named one; until then the
        spec holds a stand-in)."""
        spec = next((s for s in self.specs if s.image == image), self.specs[0])
        if self.network_fixture is not None and network is not None:
            spec = dataclasses.replace(spec, network=network)
        return spec

    def build_spec(self, base_dir: Path) -> BuildSpec | None:
        """What ``build=`` builds, relative paths from ``base_dir``; None for an image."""
        if self.build is None:
            return None
        return self.build.spec(base_dir=base_dir, platform=self.platform)


def declare(
    form: Form, images: Sequence[Any], keywords: Mapping[str, Any], *, where: str = ""
) -> Declaration:
    """Check a declaration written in ``form`` and return it; ``where`` starts every
    message (a test's node id, ``service 'db'``). Raises DeclarationError."""
    where = where or form.what
    kwargs = dict(keywords)
    shown = images[0].image if images and isinstance(images[0], Preset) else None
    try:
        images, kwargs, default_name = _with_preset(form, tuple(images), kwargs, where)
        declaration = _declare(form, tuple(images), kwargs, where)
    except DeclarationError as error:
        if error.image is None and images and isinstance(images[0], str):
            error.image = images[0]
        error.image = error.image or shown
        raise
    if default_name is not None and "name" not in keywords:
        declaration = _named(declaration, default_name, form)
    return declaration


def _with_preset(
    form: Form, images: tuple[Any, ...], kwargs: dict[str, Any], where: str
) -> tuple[tuple[Any, ...], dict[str, Any], str | None]:
    """A preset in place of the image: its image, and its keywords under the ones given
    (``env=`` merged key by key); ``reset=True`` is its reset."""
    if not any(isinstance(image, Preset) for image in images):
        if kwargs.get("reset") is True:
            raise DeclarationError(
                f"{where}: reset=True runs a preset's reset, and {form.what} names no preset; "
                "pass the command, e.g. reset=['redis-cli', 'FLUSHALL']"
            )
        return images, kwargs, None
    if len(images) > 1:
        raise DeclarationError(f"{where}: {form.what} takes one preset, not several images")
    preset: Preset = images[0]
    if kwargs.get("reset") is True:
        if preset.reset is None:
            raise DeclarationError(
                f"{where}: the {preset.name} preset has nothing to reset (it keeps no state "
                "between tests); leave reset= out"
            )
        kwargs["reset"] = preset.reset
    plugin_own = {key: value for key, value in kwargs.items() if key in form.takes}
    container = {key: value for key, value in kwargs.items() if key not in form.takes}
    return (
        (preset.image,),
        {**merged(preset.container_keywords(), container), **plugin_own},
        (preset.name),
    )


def _named(declaration: Declaration, name: str, form: Form) -> Declaration:
    """A preset's declaration is named after the preset (``postgres``), not its image."""
    if declaration.build is not None:
        return declaration
    specs = declaration.specs
    if form.names_container:
        specs = tuple(dataclasses.replace(spec, name=name) for spec in specs)
    return dataclasses.replace(declaration, name=name, specs=specs)


def _declare(
    form: Form, images: tuple[Any, ...], kwargs: dict[str, Any], where: str
) -> Declaration:
    own = {key: kwargs.pop(key) for key in form.takes if key in kwargs}
    build = _build(form, images, own, where)
    if build is not None:
        images = (build.ref,)
    else:
        _check_images(form, images, where)
    scope = own.get("scope", "function")
    if scope not in SCOPES:
        valid = ", ".join(repr(s) for s in SCOPES)
        raise DeclarationError(f"{where}: invalid container scope {scope!r}; choose one of {valid}")
    start = own.get("start", "sequential")
    if start not in STARTS:
        valid = " or ".join(repr(s) for s in STARTS)
        raise DeclarationError(f"{where}: invalid container start {start!r}; choose {valid}")
    name = _name(own.get("name"), images, build, where)
    network_fixture = kwargs.get("network") if form.network_fixtures else None
    if not hasattr(network_fixture, NETWORK_FIXTURE):
        network_fixture = None
    specs = _specs(form, images, kwargs, name, network_fixture, where)
    return Declaration(
        name=name,
        specs=specs,
        scope=scope,
        build=build,
        start=start,
        reset=_reset(own.get("reset"), scope, where),
        reuse=_reuse(own.get("reuse", False), scope, where),
        network_fixture=network_fixture,
    )


def _build(
    form: Form, images: tuple[Any, ...], own: dict[str, Any], where: str
) -> BuildRequest | None:
    stray = [key for key in BUILD_KEYWORDS if key in own]
    if "build" not in own:
        if not images:
            build_too = " or build='path/to/context'" if "build" in form.takes else ""
            raise DeclarationError(
                f"{where}: {form.what} needs an image, e.g. {form.example}{build_too}"
            )
        if stray:
            raise DeclarationError(
                f"{where}: {', '.join(stray)} only go with build='path/to/context'"
            )
        return None
    if images:
        raise DeclarationError(f"{where}: {form.what} takes an image or build=, not both")
    context = own["build"]
    if not isinstance(context, (str, os.PathLike)) or not os.fspath(context).strip():
        raise DeclarationError(
            f"{where}: build={context!r} is not a directory; pass the build context "
            "directory (holding a Dockerfile), e.g. build='tests/app'"
        )
    buildargs = own.get("buildargs") or {}
    if not isinstance(buildargs, Mapping):
        raise DeclarationError(
            f"{where}: buildargs= takes a dict of names to values, not {buildargs!r}"
        )
    dockerfile = own.get("dockerfile")
    return BuildRequest(
        context=os.fspath(context),
        dockerfile=os.fspath(dockerfile) if isinstance(dockerfile, os.PathLike) else dockerfile,
        target=own.get("target"),
        buildargs=tuple(sorted((str(k), str(v)) for k, v in buildargs.items())),
    )


def _check_images(form: Form, images: tuple[Any, ...], where: str) -> None:
    if len(images) > 1 and not form.several_images:
        raise DeclarationError(f"{where}: {form.what} takes one image, got {len(images)}")
    for image in images:
        if not isinstance(image, str) or not image.strip():
            raise DeclarationError(
                f"{where}: {form.what} images must be non-empty strings, got {image!r}"
            )
        try:
            parse_reference(image.strip())
        except ImageReferenceError as error:
            raise DeclarationError(f"{where}: {error}", image=image) from None


def _name(name: Any, images: tuple[str, ...], build: BuildRequest | None, where: str) -> str:
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise DeclarationError(
                f"{where}: container name must be a non-empty string, got {name!r}"
            )
        return name
    if build is not None:
        return Path(os.path.normpath(build.context)).name or "build"
    return default_name(images[0].strip())


def _specs(
    form: Form,
    images: tuple[str, ...],
    kwargs: dict[str, Any],
    name: str,
    network_fixture: Any,
    where: str,
) -> tuple[ContainerSpec, ...]:
    """The container keywords checked for every image (an unknown one lists the valid
    ones), kept as a spec per image."""
    checkable = dict(kwargs)
    if network_fixture is not None:
        checkable["network"] = _NETWORK_STAND_IN
    if form.names_container:
        checkable["name"] = name
    specs = []
    for image in images:
        try:
            specs.append(ContainerSpec.from_kwargs(image.strip(), **checkable))
        except (TypeError, ValueError) as error:
            message = str(error)
            also = [key for key in form.takes if key not in ContainerSpec.keywords()]
            valid = f"; {form.what} also takes {', '.join(also)}" if also else ""
            raise DeclarationError(
                f"{where}: {form.what}({image!r}): {message}"
                + (valid if "valid" in message else ""),
                image=image,
            ) from None
    return tuple(specs)


def _reset(reset: Any, scope: str, where: str) -> Reset | None:
    """``reset=`` as kept: a command (a tuple of words) or a callable."""
    if reset is None:
        return None
    if scope in ("function", "run"):
        why = (
            "a function-scoped container is new for each test already"
            if scope == "function"
            else "a run-scoped one is shared by the xdist workers, whose tests it would reset"
        )
        raise DeclarationError(
            f"{where}: reset= only goes with scope='class', 'module', 'package' or 'session' "
            f"({why})"
        )
    try:
        return checked_reset(reset)
    except ValueError as error:
        raise DeclarationError(f"{where}: {error}") from None


def _reuse(reuse: Any, scope: str, where: str) -> bool:
    """``reuse=``: True or False, and only for a container shared by the tests of a scope
    of one process (a function-scoped one is new for each test by promise)."""
    if not isinstance(reuse, bool):
        raise DeclarationError(f"{where}: reuse= takes True or False, not {reuse!r}")
    if reuse and scope in ("function", "run"):
        why = (
            "a function-scoped container is new for each test"
            if scope == "function"
            else "a run-scoped one is shared by the xdist workers, and leased by one process"
        )
        raise DeclarationError(
            f"{where}: reuse=True only goes with scope='class', 'module', 'package' or "
            f"'session' ({why}); add reset=[...] to clean it before each test"
        )
    return reuse


def duplicated_names(names: Sequence[str]) -> list[str]:
    """The names given to more than one declaration of one place (a test's markers, a
    run's services), which must differ: they are keys of a dict the tests read."""
    return sorted({name for name in names if list(names).count(name) > 1})


def check_build(declaration: Declaration, base_dir: Path, where: str) -> None:
    """Fail now, naming ``where``, when what ``build=`` names is not there."""
    try:
        declaration.build_spec(base_dir)
    except ImageBuildError as error:
        raise DeclarationError(f"{where}: {error.message}", image=error.image) from None
