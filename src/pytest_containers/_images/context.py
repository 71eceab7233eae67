"""What to build (:class:`BuildSpec`) and its context, read once for the build key and
once for the tarball sent to the engine.

The **key** is a SHA-256 of everything that decides what the builder produces: every
file of the context that ``.dockerignore`` lets through (path, content, permission bits,
symlink target; never mtimes), the Dockerfile, the target, the build args, the platform,
and the image ids its base images resolved to. The tarball is written from the same
file list and hashed as it is written, so a context that changed in between is noticed
(:class:`ContextChanged`) and read again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pytest_containers._base.reference import normalize_platform
from pytest_containers._images.dockerignore import (
    DOCKERIGNORE,
    Ignore,
    Pattern,
    escape_glob,
    parse_dockerignore,
    translate,
)
from pytest_containers.errors import ImageBuildError

_DEFAULT_DOCKERFILE = "Dockerfile"
# Where a Dockerfile from outside the context goes in the tarball (the docker CLI does
# the same with a random name); .dockerignore then names it, so the engine drops it
# from the context after reading it.
_OUTSIDE_DOCKERFILE = ".pytest-containers.Dockerfile"
_KEY_VERSION = b"pytest-containers build key 1"
_CHUNK = 1 << 20
ATTEMPTS = 3  # reading a context that keeps changing under us


# -- what to build ----------------------------------------------------------------------


@dataclass(frozen=True)
class BuildSpec:
    """What to build: the ``context`` directory (absolute), the ``dockerfile`` in it
    (relative to the context; ``"Dockerfile"`` when ``None``), the stage to stop at
    (``target``), the build args and the platform.

    ``display`` is how messages and :attr:`Image.ref` name the build (``tests/app``);
    it does not take part in comparisons. Build args are kept sorted, so two specs that
    differ only in their order are equal.
    """

    context: Path
    dockerfile: str | None = None
    target: str | None = None
    buildargs: tuple[tuple[str, str], ...] = ()
    platform: str | None = None
    display: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__, once, here.
        object.__setattr__(self, "context", Path(os.path.abspath(self.context)))
        pairs: Iterable[tuple[str, str]] = (
            self.buildargs.items() if isinstance(self.buildargs, Mapping) else self.buildargs
        )
        object.__setattr__(self, "buildargs", tuple(sorted((str(k), str(v)) for k, v in pairs)))

    @classmethod
    def from_kwargs(
        cls,
        build: str | os.PathLike[str],
        *,
        dockerfile: str | os.PathLike[str] | None = None,
        target: str | None = None,
        buildargs: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        platform: str | None = None,
        base_dir: Path | None = None,
    ) -> BuildSpec:
        """The spec for ``build=`` (and friends) as a test wrote them.

        A relative ``build`` path is taken relative to ``base_dir`` (the plugin passes
        the rootdir, or the test file's directory), else to the working directory.
        Raises :class:`ImageBuildError` when the context or the Dockerfile is missing,
        or an argument is malformed, saying what to write instead.
        """
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        context, display = _context_directory(build, base)
        ref = f"build:{display}"
        spec = cls(
            context=context,
            dockerfile=_dockerfile_name(dockerfile, ref),
            target=_target(target, ref),
            platform=_platform(platform, ref),
            buildargs=_buildargs(buildargs, ref),
            display=display,
        )
        _dockerfile_location(spec)  # a missing Dockerfile fails here, not at build time
        return spec

    @property
    def ref(self) -> str:
        """``build:<context>[/<dockerfile>][#<target>]``, as :attr:`Image.ref` says it."""
        name = self.display or _relative_name(self.context)
        if self.dockerfile not in (None, _DEFAULT_DOCKERFILE):
            name = f"{name}/{self.dockerfile}"
        if self.target:
            name = f"{name}#{self.target}"
        return f"build:{name}"


def _context_directory(build: str | os.PathLike[str], base: Path) -> tuple[Path, str]:
    """The build context of ``build=`` (relative to ``base``), an existing directory, and
    how messages name it."""
    given = os.fspath(build)
    if not isinstance(given, str) or not given:
        raise ImageBuildError(
            f"build={build!r} is not a directory; pass the build context directory "
            "(holding a Dockerfile), e.g. build='tests/app'",
            image=f"build:{build!r}",
        )
    context = (base / given).resolve()
    display = os.path.normpath(given) if not os.path.isabs(given) else context.name
    if not context.is_dir():
        where = "" if os.path.isabs(given) else f" (relative to {base})"
        problem = "is not a directory" if context.exists() else "does not exist"
        raise ImageBuildError(
            f"the build context {context}{where} {problem}; build= takes the directory "
            f"that holds the Dockerfile, absolute or relative to {base}",
            image=f"build:{display}",
        )
    return context, display


def _dockerfile_name(dockerfile: str | os.PathLike[str] | None, ref: str) -> str | None:
    """``dockerfile=`` as a normalised path relative to the context, or None."""
    if dockerfile is None:
        return None
    name = os.fspath(dockerfile)
    if not isinstance(name, str) or not name:
        raise ImageBuildError(
            f"dockerfile={name!r} is not a file name; pass the Dockerfile's "
            "path relative to the build context, e.g. dockerfile='Dockerfile.test'",
            image=ref,
        )
    return os.path.normpath(name)


def _target(target: str | None, ref: str) -> str | None:
    if target is not None and (not isinstance(target, str) or not target.strip()):
        raise ImageBuildError(
            f"target={target!r} is not a stage name; pass the name given in 'FROM ... AS <name>'",
            image=ref,
        )
    return target


def _platform(platform: str | None, ref: str) -> str | None:
    try:
        return normalize_platform(platform)
    except ValueError as error:
        raise ImageBuildError(f"{ref}: {error}", image=ref) from None


def _buildargs(
    buildargs: Mapping[str, str] | Iterable[tuple[str, str]] | None, ref: str
) -> tuple[tuple[str, str], ...]:
    if buildargs is None:
        return ()
    pairs = buildargs.items() if isinstance(buildargs, Mapping) else buildargs
    result: list[tuple[str, str]] = []
    for pair in pairs:
        name, value = pair
        if not isinstance(name, str) or not name or value is None:
            raise ImageBuildError(
                f"{ref}: build arg {name!r}={value!r} is not NAME=VALUE; pass "
                "buildargs={'NAME': 'value'} with string values",
                image=ref,
            )
        # Numbers are common (VERSION=3); anything else is likely a mistake worth a type.
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ImageBuildError(
                f"{ref}: build arg {name} must be a string, got {type(value).__name__}",
                image=ref,
            )
        result.append((name, str(value)))
    return tuple(sorted(result))


def _relative_name(path: Path) -> str:
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return path.name or str(path)
    return relative.as_posix() if str(relative) != "." else (path.name or str(path))


def _dockerfile_location(spec: BuildSpec) -> tuple[Path, str, bool]:
    """The Dockerfile's path, its name in the tarball, and whether it is in the context."""
    name = spec.dockerfile or _DEFAULT_DOCKERFILE
    path = spec.context / name
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        advice = (
            "pass dockerfile= with its path relative to the build context"
            if spec.dockerfile is None
            else "check dockerfile=, which is relative to the build context"
        )
        raise ImageBuildError(
            f"the Dockerfile {path} {problem}; {advice} ({spec.context})", image=spec.ref
        )
    relative = os.path.relpath(os.path.abspath(path), spec.context)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return path, _OUTSIDE_DOCKERFILE, False
    return path, Path(relative).as_posix(), True


# -- the context, read once for the key and once for the tarball --------------------------


class ContextChanged(Exception):
    """A file changed while the context was read: start over."""


@dataclass(frozen=True)
class _Entry:
    rel: str
    path: str
    kind: str  # "file", "dir" or "link"
    mode: int  # permission bits
    size: int
    mtime: float
    link: str = ""


@dataclass
class Source:
    """The spec's Dockerfile and .dockerignore, read once, and what to send in their place."""

    spec: BuildSpec
    dockerfile_path: Path
    dockerfile_name: str  # its name in the tarball
    inside: bool
    dockerfile: bytes
    dockerignore: bytes | None
    ignore: Ignore

    @classmethod
    def load(cls, spec: BuildSpec) -> Source:
        if not spec.context.is_dir():
            raise ImageBuildError(
                f"the build context {spec.context} does not exist or is not a directory",
                image=spec.ref,
            )
        path, name, inside = _dockerfile_location(spec)
        dockerfile = _read(path, spec)
        ignore_path = spec.context / DOCKERIGNORE
        dockerignore = _read(ignore_path, spec) if ignore_path.is_file() else None
        patterns = parse_dockerignore(dockerignore or b"", spec.ref)
        probe = Ignore(patterns)
        # The CLI always sends the Dockerfile and .dockerignore (the engine needs them,
        # and drops them from the context itself when they are ignored).
        if dockerignore is not None and probe.excludes(DOCKERIGNORE):
            patterns.append(Pattern(DOCKERIGNORE, True, re.compile(translate(DOCKERIGNORE))))
        if inside and probe.excludes(name):
            patterns.append(Pattern(name, True, re.compile(translate(escape_glob(name)))))
        return cls(spec, path, name, inside, dockerfile, dockerignore, Ignore(patterns))

    def is_special(self, rel: str) -> bool:
        """The Dockerfile and .dockerignore: sent from what was read, never re-read."""
        return rel == DOCKERIGNORE or (self.inside and rel == self.dockerfile_name)

    def entries(self) -> Iterator[_Entry]:
        """The context's files, directories and symlinks the builder sees, sorted."""
        yield from self._walk(str(self.spec.context), "")

    def _walk(self, directory: str, prefix: str) -> Iterator[_Entry]:
        try:
            with os.scandir(directory) as scan:
                children = sorted(scan, key=lambda e: e.name)
        except FileNotFoundError:
            raise ContextChanged(directory) from None
        except OSError as error:
            raise _unreadable(self.spec, directory, error) from None
        for child in children:
            rel = prefix + child.name
            try:
                info = child.stat(follow_symlinks=False)
            except FileNotFoundError:
                raise ContextChanged(child.path) from None
            is_dir = stat.S_ISDIR(info.st_mode)
            if self.ignore.excludes(rel):
                # An ignored directory is still walked when a "!" pattern may bring back
                # something under it; the directory itself stays out (as with the CLI).
                if is_dir and self.ignore.has_exclusions and self.ignore.may_reinclude_under(rel):
                    yield from self._walk(child.path, rel + "/")
                continue
            mode = stat.S_IMODE(info.st_mode)
            if not is_dir and self.is_special(rel):
                # Sent from what was read, as a plain file, whatever it is on disk.
                yield _Entry(rel, child.path, "file", mode & 0o7755 | 0o644, 0, info.st_mtime)
            elif is_dir:
                yield _Entry(rel, child.path, "dir", mode, 0, info.st_mtime)
                yield from self._walk(child.path, rel + "/")
            elif stat.S_ISLNK(info.st_mode):
                try:
                    target = os.readlink(child.path)
                except FileNotFoundError:
                    raise ContextChanged(child.path) from None
                yield _Entry(rel, child.path, "link", mode, 0, info.st_mtime, target)
            elif stat.S_ISREG(info.st_mode):
                yield _Entry(rel, child.path, "file", mode, info.st_size, info.st_mtime)
            # Sockets, fifos and devices have no place in an image; the CLI skips sockets,
            # and reading a fifo would block.

    def rewritten(self, rewrite: Callable[[bytes], bytes]) -> tuple[bytes, bytes | None]:
        """The Dockerfile and the .dockerignore as they go into the tarball."""
        dockerfile = rewrite(self.dockerfile)
        ignore = self.dockerignore
        if not self.inside:
            # The engine drops what .dockerignore names from the context after reading
            # it: our Dockerfile, and a .dockerignore the user did not have.
            names = (
                [_OUTSIDE_DOCKERFILE] if ignore is not None else [_OUTSIDE_DOCKERFILE, DOCKERIGNORE]
            )
            ignore = (ignore or b"") + ("\n" + "\n".join(names) + "\n").encode()
        return dockerfile, ignore


def _read(path: Path, spec: BuildSpec) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ContextChanged(str(path)) from None
    except OSError as error:
        raise _unreadable(spec, str(path), error) from None


def _unreadable(spec: BuildSpec, path: str, error: OSError) -> ImageBuildError:
    return ImageBuildError(
        f"cannot read {path} in the build context of {spec.ref}: "
        f"{error.strerror or error}; make it readable, or leave it out with .dockerignore",
        image=spec.ref,
    )


class _KeyHasher:
    """SHA-256 over length-prefixed fields, so no two different inputs run together."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.field(_KEY_VERSION)

    def field(self, *values: bytes | str) -> None:
        for value in values:
            data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
            self._sha.update(len(data).to_bytes(8, "big"))
            self._sha.update(data)

    def raw(self, data: bytes) -> None:
        self._sha.update(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _key_header(hasher: _KeyHasher, source: Source, bases: Sequence[str]) -> None:
    spec = source.spec
    hasher.field("dockerfile", source.dockerfile_name, source.dockerfile)
    hasher.field("dockerignore", source.dockerignore if source.dockerignore is not None else "-")
    hasher.field("target", spec.target or "")
    hasher.field("buildargs", json.dumps(list(spec.buildargs)))
    hasher.field("platform", spec.platform or "")
    hasher.field("bases", json.dumps(list(bases)))


def _key_entry(hasher: _KeyHasher, entry: _Entry, special: bool) -> None:
    if entry.kind == "link":
        hasher.field("link", entry.rel, entry.link)
    elif entry.kind == "dir" or special:
        # The special files' contents are in the header already.
        hasher.field(entry.kind, entry.rel, oct(entry.mode))
    else:
        hasher.field("file", entry.rel, oct(entry.mode), str(entry.size))


def compute_key(source: Source, bases: Sequence[str]) -> str:
    hasher = _KeyHasher()
    _key_header(hasher, source, bases)
    for entry in source.entries():
        special = source.is_special(entry.rel)
        _key_entry(hasher, entry, special)
        if entry.kind == "file" and not special:
            _hash_file(hasher, entry, source.spec)
    return hasher.hexdigest()


def _hash_file(hasher: _KeyHasher, entry: _Entry, spec: BuildSpec) -> None:
    seen = 0
    try:
        with open(entry.path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                seen += len(chunk)
                if seen > entry.size:
                    raise ContextChanged(entry.path)
                hasher.raw(chunk)
    except FileNotFoundError:
        raise ContextChanged(entry.path) from None
    except OSError as error:
        raise _unreadable(spec, entry.path, error) from None
    if seen != entry.size:
        raise ContextChanged(entry.path)


class _TeeReader:
    """Reads a file for tarfile while hashing exactly what tarfile takes."""

    def __init__(self, stream: IO[bytes], hasher: _KeyHasher) -> None:
        self._stream = stream
        self._hasher = hasher

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hasher.raw(data)
        return data


def write_context(
    source: Source, bases: Sequence[str], rewrite: Callable[[bytes], bytes], out: IO[bytes]
) -> str:
    """Write the context tarball to ``out``; returns the key of what it holds."""
    hasher = _KeyHasher()
    _key_header(hasher, source, bases)
    dockerfile, dockerignore = source.rewritten(rewrite)
    specials = {DOCKERIGNORE: dockerignore}
    if source.inside:
        specials[source.dockerfile_name] = dockerfile
    # uid/gid 0, as the CLI sends them: files COPY'd without --chown belong to root.
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in source.entries():
            special = source.is_special(entry.rel)
            _key_entry(hasher, entry, special)
            info = tarfile.TarInfo(entry.rel)
            info.mode = entry.mode
            info.mtime = int(entry.mtime)
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.link
                tar.addfile(info)
            elif special:
                data = specials.pop(entry.rel) or b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.size = entry.size
                _add_file(tar, info, entry, hasher, source.spec)
        # What the context did not hold: a Dockerfile from elsewhere, its .dockerignore.
        extra = {_OUTSIDE_DOCKERFILE: dockerfile} if not source.inside else {}
        if specials.get(DOCKERIGNORE) is not None:
            extra[DOCKERIGNORE] = specials[DOCKERIGNORE] or b""
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.mode = 0o600
            info.mtime = int(time.time())
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out.flush()
    out.seek(0)
    return hasher.hexdigest()


def _add_file(
    tar: tarfile.TarFile, info: tarfile.TarInfo, entry: _Entry, hasher: _KeyHasher, spec: BuildSpec
) -> None:
    try:
        with open(entry.path, "rb") as stream:
            try:
                tar.addfile(info, _TeeReader(stream, hasher))
            except OSError as error:
                if "unexpected end of data" in str(error):
                    raise ContextChanged(entry.path) from None  # it shrank
                raise
            if stream.read(1):
                raise ContextChanged(entry.path)  # it grew
    except FileNotFoundError:
        raise ContextChanged(entry.path) from None
    except OSError as error:
        raise _unreadable(spec, entry.path, error) from None


def build_key(spec: BuildSpec, *, bases: Sequence[str] = ()) -> str:
    """The SHA-256 (64 hex digits) naming what building ``spec`` would produce.

    It covers every file of the context that .dockerignore lets through (relative path,
    content, permission bits, symlink target; not mtimes, owners or ignored files), the
    Dockerfile and .dockerignore (always sent), the target, the build args, the platform
    and ``bases``, the image ids the Dockerfile's base images resolve to in order
    (:func:`build_image` passes them, so that a new base image means a new build).
    Files are read in sorted order, in chunks. Raises :class:`ImageBuildError` when the
    context or the Dockerfile cannot be read.
    """
    for _ in range(ATTEMPTS):
        try:
            return compute_key(Source.load(spec), bases)
        except ContextChanged:
            continue
    raise keeps_changing(spec)


def keeps_changing(spec: BuildSpec) -> ImageBuildError:
    """The error for a context that changed on every one of :data:`ATTEMPTS` reads."""
    return ImageBuildError(
        f"the build context of {spec.ref} ({spec.context}) changed each of {ATTEMPTS} times "
        "it was read; stop whatever writes to it during the tests, or leave what it writes "
        "out with .dockerignore",
        image=spec.ref,
    )
