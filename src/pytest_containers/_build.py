"""Images built from a Dockerfile: once per content, whoever asks, however often.

A build is named by its **key**, a SHA-256 of everything that decides what the builder
produces: every file of the context that ``.dockerignore`` lets through (path, content,
permission bits, symlink target; never mtimes), the Dockerfile, the target, the build
args, the platform, and the image ids its base images resolved to. The image is tagged
``pytest-containers/<context dir name>:<key prefix>``, so "is it built?" is one inspect,
and a context that did not change is not built again, in this run or a later one.

The build itself happens at most once per key across threads, xdist workers and
concurrent runs: the builder takes ``<cache>/builds/<engine, key>.lock`` (the same OS
locks as the image cache) and looks for the tag again before building. A failure is
recorded next to the lock with the run id, so the other workers of the same run re-raise
it instead of building again, while a later run tries afresh.

Base images never come from the builder's own pulls: the ``FROM`` lines (and
``COPY --from=<image>``) are resolved through the :class:`ImageCache` (pull policy,
mirror and pins apply, and a pull is shared with everyone else), and the Dockerfile sent
to the engine names them by image id (``FROM sha256:…``), which the classic builder
takes from the engine's store without asking any registry. The context tarball is made
here from the same file list the key is computed from, so the key and the build agree.

pytest-free: the plugin hands in the client and the image cache.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import docker.errors
import requests

from pytest_containers._image import Image
from pytest_containers._locks import (
    ensure_private_dir,
    exclusive,
    key_path,
    read_json,
    write_json_atomic,
)
from pytest_containers._pull import inspect_image
from pytest_containers._reference import normalize_platform
from pytest_containers.errors import (
    ContainerError,
    ImageBuildError,
    ImagePullError,
    ImageReferenceError,
)

if TYPE_CHECKING:
    import docker

    from pytest_containers._cache import ImageCache

__all__ = [
    "BUILD_CONTEXT_LABEL",
    "BUILD_KEY_LABEL",
    "BUILD_REPOSITORY",
    "BUILD_SPEC_LABEL",
    "PRUNE_KEEP_NEWEST",
    "PRUNE_OLDER_THAN",
    "BuildProgress",
    "BuildSpec",
    "build_image",
    "build_key",
    "build_tag",
    "prune_stale_builds",
]

#: Every built image is tagged ``BUILD_REPOSITORY/<name>:<key prefix>``.
BUILD_REPOSITORY = "pytest-containers"
#: The full build key of a built image.
BUILD_KEY_LABEL = "pytest-containers.build-key"
#: The absolute context directory a built image was built from.
BUILD_CONTEXT_LABEL = "pytest-containers.context"
#: A digest of what was asked for (context directory, Dockerfile, target, build args,
#: platform) without the content: builds sharing it are versions of one another.
BUILD_SPEC_LABEL = "pytest-containers.build-spec"

#: What ``--container-prune`` should pass to :func:`prune_stale_builds`: keep the newest
#: build of each spec whatever its age, and anything built in the last day.
PRUNE_KEEP_NEWEST = 1
PRUNE_OLDER_THAN = 86400.0

#: Hex digits of the key in the tag: 80 bits, ample for one engine's builds.
TAG_KEY_CHARS = 20
#: Lines of build output an :class:`ImageBuildError` carries.
LOG_TAIL_LINES = 20

_DEFAULT_DOCKERFILE = "Dockerfile"
_DOCKERIGNORE = ".dockerignore"
# Where a Dockerfile from outside the context goes in the tarball (the docker CLI does
# the same with a random name); .dockerignore then names it, so the engine drops it
# from the context after reading it.
_OUTSIDE_DOCKERFILE = ".pytest-containers.Dockerfile"
_KEY_VERSION = b"pytest-containers build key 1"
_CHUNK = 1 << 20
_ATTEMPTS = 3  # reading a context that keeps changing under us
_NAME_MAX = 64
_SHA256_ID = re.compile(r"sha256:[0-9a-f]{64}")


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
        given = os.fspath(build)
        if not isinstance(given, str) or not given:
            raise ImageBuildError(
                f"build={build!r} is not a directory; pass the build context directory "
                "(holding a Dockerfile), e.g. build='tests/app'",
                image=f"build:{build!r}",
            )
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        context = (base / given).resolve()
        display = os.path.normpath(given) if not os.path.isabs(given) else context.name
        ref = f"build:{display}"
        if not context.is_dir():
            where = "" if os.path.isabs(given) else f" (relative to {base})"
            problem = "is not a directory" if context.exists() else "does not exist"
            raise ImageBuildError(
                f"the build context {context}{where} {problem}; build= takes the directory "
                f"that holds the Dockerfile, absolute or relative to {base}",
                image=ref,
            )
        if dockerfile is not None:
            dockerfile = os.fspath(dockerfile)
            if not isinstance(dockerfile, str) or not dockerfile:
                raise ImageBuildError(
                    f"dockerfile={dockerfile!r} is not a file name; pass the Dockerfile's "
                    "path relative to the build context, e.g. dockerfile='Dockerfile.test'",
                    image=ref,
                )
            dockerfile = os.path.normpath(dockerfile)
        if target is not None and (not isinstance(target, str) or not target.strip()):
            raise ImageBuildError(
                f"target={target!r} is not a stage name; pass the name given in "
                "'FROM ... AS <name>'",
                image=ref,
            )
        try:
            plat = normalize_platform(platform)
        except ValueError as error:
            raise ImageBuildError(f"{ref}: {error}", image=ref) from None
        spec = cls(
            context=context,
            dockerfile=dockerfile,
            target=target,
            buildargs=_buildargs(buildargs, ref),
            platform=plat,
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


# -- .dockerignore ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    text: str  # cleaned, without the leading "!"
    exclusion: bool
    regex: re.Pattern[str]


def _parse_dockerignore(data: bytes, ref: str) -> list[_Pattern]:
    """The patterns of a .dockerignore, read the way the docker CLI reads them."""
    patterns: list[_Pattern] = []
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    for raw in text.split("\n"):
        line = raw.removesuffix("\r")
        # Only a "#" in the very first column starts a comment, as in the CLI.
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
            if not line:
                raise ImageBuildError(
                    f'{ref}: .dockerignore has a lone "!"; write "!PATTERN" to re-include '
                    "what an earlier pattern excluded",
                    image=ref,
                )
        cleaned = _clean(line)
        try:
            regex = re.compile(_translate(cleaned))
        except (re.error, ValueError) as error:
            raise ImageBuildError(
                f"{ref}: .dockerignore pattern {raw.strip()!r} is not valid ({error}); "
                "patterns use *, **, ?, [classes] and \\ escapes",
                image=ref,
            ) from None
        patterns.append(_Pattern(cleaned, exclusion, regex))
    return patterns


def _clean(pattern: str) -> str:
    # Go's filepath.Clean, then relative to the context: "/a/./b/" is "a/b".
    cleaned = posixpath.normpath(pattern)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if len(cleaned) > 1 and cleaned.startswith("/"):
        cleaned = cleaned[1:]
    return cleaned


def _translate(pattern: str) -> str:
    """A regular expression for a .dockerignore pattern: ``*`` and ``?`` stop at ``/``,
    ``**`` crosses directories (``**/`` matching none too), ``\\`` escapes."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(?:.*/)?")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i + 1 < n:
                out.append(re.escape(pattern[i + 1]))
                i += 2
                continue
            out.append(r"\\")
        elif ch == "[":
            end, cls = _char_class(pattern, i)
            out.append(cls)
            i = end
            continue
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return "".join(out)


def _char_class(pattern: str, start: int) -> tuple[int, str]:
    """Translate the ``[...]`` at ``start``; returns the index after it and the regex."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] == "^"
    if negate:
        i += 1
    parts: list[str] = []
    while i < len(pattern) and pattern[i] != "]":
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        # "-" keeps its range meaning; anything else is literal inside the class.
        parts.append("-" if ch == "-" else re.escape(ch))
        i += 1
    if i >= len(pattern) or not parts:
        raise ValueError("unterminated or empty character class")
    return i + 1, "[" + ("^" if negate else "") + "".join(parts) + "]"


class _Ignore:
    """Decides what of the context the builder sees, as ``docker build`` does."""

    def __init__(self, patterns: list[_Pattern]) -> None:
        self.patterns = patterns
        self.has_exclusions = any(p.exclusion for p in patterns)

    def excludes(self, rel: str) -> bool:
        """Whether ``rel`` (a ``/``-separated path in the context) is left out: the last
        pattern matching it or one of its parent directories decides."""
        matched = False
        parents = rel.split("/")[:-1]
        for pattern in self.patterns:
            # An exclusion only matters once something matched, a pattern only before.
            if pattern.exclusion != matched:
                continue
            hit = pattern.regex.match(rel) is not None
            if not hit:
                hit = any(
                    pattern.regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
                )
            if hit:
                matched = not pattern.exclusion
        return matched

    def may_reinclude_under(self, rel: str) -> bool:
        """Whether an excluded directory must still be walked: an exclusion pattern
        names something under it (the CLI's own test, by prefix)."""
        prefix = rel + "/"
        return any(p.exclusion and (p.text + "/").startswith(prefix) for p in self.patterns)


# -- the context, read once for the key and once for the tarball --------------------------


class _ContextChanged(Exception):
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
class _Source:
    """The spec's Dockerfile and .dockerignore, read once, and what to send in their place."""

    spec: BuildSpec
    dockerfile_path: Path
    dockerfile_name: str  # its name in the tarball
    inside: bool
    dockerfile: bytes
    dockerignore: bytes | None
    ignore: _Ignore

    @classmethod
    def load(cls, spec: BuildSpec) -> _Source:
        if not spec.context.is_dir():
            raise ImageBuildError(
                f"the build context {spec.context} does not exist or is not a directory",
                image=spec.ref,
            )
        path, name, inside = _dockerfile_location(spec)
        dockerfile = _read(path, spec)
        ignore_path = spec.context / _DOCKERIGNORE
        dockerignore = _read(ignore_path, spec) if ignore_path.is_file() else None
        patterns = _parse_dockerignore(dockerignore or b"", spec.ref)
        probe = _Ignore(patterns)
        # The CLI always sends the Dockerfile and .dockerignore (the engine needs them,
        # and drops them from the context itself when they are ignored).
        if dockerignore is not None and probe.excludes(_DOCKERIGNORE):
            patterns.append(_Pattern(_DOCKERIGNORE, True, re.compile(_translate(_DOCKERIGNORE))))
        if inside and probe.excludes(name):
            patterns.append(_Pattern(name, True, re.compile(_translate(_escape_glob(name)))))
        return cls(spec, path, name, inside, dockerfile, dockerignore, _Ignore(patterns))

    def is_special(self, rel: str) -> bool:
        """The Dockerfile and .dockerignore: sent from what was read, never re-read."""
        return rel == _DOCKERIGNORE or (self.inside and rel == self.dockerfile_name)

    def entries(self) -> Iterator[_Entry]:
        """The context's files, directories and symlinks the builder sees, sorted."""
        yield from self._walk(str(self.spec.context), "")

    def _walk(self, directory: str, prefix: str) -> Iterator[_Entry]:
        try:
            with os.scandir(directory) as scan:
                children = sorted(scan, key=lambda e: e.name)
        except FileNotFoundError:
            raise _ContextChanged(directory) from None
        except OSError as error:
            raise _unreadable(self.spec, directory, error) from None
        for child in children:
            rel = prefix + child.name
            try:
                info = child.stat(follow_symlinks=False)
            except FileNotFoundError:
                raise _ContextChanged(child.path) from None
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
                    raise _ContextChanged(child.path) from None
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
                [_OUTSIDE_DOCKERFILE]
                if ignore is not None
                else [_OUTSIDE_DOCKERFILE, _DOCKERIGNORE]
            )
            ignore = (ignore or b"") + ("\n" + "\n".join(names) + "\n").encode()
        return dockerfile, ignore


def _escape_glob(name: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", name)


def _read(path: Path, spec: BuildSpec) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _ContextChanged(str(path)) from None
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


def _key_header(hasher: _KeyHasher, source: _Source, bases: Sequence[str]) -> None:
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


def _compute_key(source: _Source, bases: Sequence[str]) -> str:
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
                    raise _ContextChanged(entry.path)
                hasher.raw(chunk)
    except FileNotFoundError:
        raise _ContextChanged(entry.path) from None
    except OSError as error:
        raise _unreadable(spec, entry.path, error) from None
    if seen != entry.size:
        raise _ContextChanged(entry.path)


class _TeeReader:
    """Reads a file for tarfile while hashing exactly what tarfile takes."""

    def __init__(self, stream: IO[bytes], hasher: _KeyHasher) -> None:
        self._stream = stream
        self._hasher = hasher

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._hasher.raw(data)
        return data


def _write_context(
    source: _Source, bases: Sequence[str], rewrite: Callable[[bytes], bytes], out: IO[bytes]
) -> str:
    """Write the context tarball to ``out``; returns the key of what it holds."""
    hasher = _KeyHasher()
    _key_header(hasher, source, bases)
    dockerfile, dockerignore = source.rewritten(rewrite)
    specials = {_DOCKERIGNORE: dockerignore}
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
        if specials.get(_DOCKERIGNORE) is not None:
            extra[_DOCKERIGNORE] = specials[_DOCKERIGNORE] or b""
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
                    raise _ContextChanged(entry.path) from None  # it shrank
                raise
            if stream.read(1):
                raise _ContextChanged(entry.path)  # it grew
    except FileNotFoundError:
        raise _ContextChanged(entry.path) from None
    except OSError as error:
        raise _unreadable(spec, entry.path, error) from None


# -- the Dockerfile's base images -------------------------------------------------------


@dataclass(frozen=True)
class _Instruction:
    first: int  # index of its first physical line
    last: int  # and of its last
    keyword: str  # lowercased
    text: str  # the logical line, continuations joined, as the builder reads it


@dataclass(frozen=True)
class _Base:
    """An image the Dockerfile takes from outside: ``FROM`` or ``COPY --from=``."""

    instruction: _Instruction
    word: str  # the word to replace, as written
    image: str  # after ARG substitution
    platform: str | None


_KNOWN_DIRECTIVES = frozenset({"escape", "syntax", "check"})
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_VARIABLE = re.compile(
    r"\$(?:(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-+])(?P<word>[^{}$]*))?\})"
)


def _split_lines(text: str) -> list[str]:
    return text.split("\n")


def _instructions(lines: Sequence[str]) -> tuple[list[_Instruction], str]:
    """The Dockerfile's instructions and its escape character, parsed like the builder:
    parser directives first, comments and blank lines skipped, continuations joined."""
    escape = "\\"
    index = 0
    if lines:
        lines = [lines[0].removeprefix("\ufeff"), *lines[1:]]
    while index < len(lines):
        match = _DIRECTIVE.match(lines[index].rstrip("\r"))
        # An unknown directive is a comment, and a comment ends the directives.
        if match is None or match.group(1).lower() not in _KNOWN_DIRECTIVES:
            break
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
        index += 1
    continuation = re.compile(re.escape(escape) + r"[ \t]*$")
    found: list[_Instruction] = []
    while index < len(lines):
        line = lines[index].rstrip("\r").lstrip()
        if not line.strip() or line.startswith("#"):
            index += 1
            continue
        first = index
        text, more = continuation.subn("", line)
        while more and index + 1 < len(lines):
            index += 1
            part = lines[index].rstrip("\r")
            # Comment and blank lines inside a continuation are skipped, not ended on.
            if part.lstrip().startswith("#") or not part.strip():
                continue
            part, more = continuation.subn("", part)
            text += part
        if not text.strip():
            index += 1
            continue
        keyword = text.split(None, 1)[0].lower()
        found.append(_Instruction(first, index, keyword, text.strip()))
        index += 1
    return found, escape


def _expand(word: str, env: Mapping[str, str | None], escape: str) -> str | None:
    """``word`` with the Dockerfile's global ARGs substituted, or ``None`` when that
    takes more than this knows (an unknown variable, quotes, nested expansions): the
    builder is then left to make sense of it."""
    out: list[str] = []
    i = 0
    while i < len(word):
        ch = word[i]
        if ch == escape and i + 1 < len(word):
            out.append(word[i + 1])
            i += 2
            continue
        if ch in "'\"":
            return None
        if ch == "$":
            match = _VARIABLE.match(word, i)
            if match is None:
                return None
            name = match.group("bare") or match.group("name")
            if name not in env:
                return None
            value = env[name]
            op = match.group("op")
            if op is not None:
                alternative = _expand(match.group("word"), env, escape)
                if alternative is None:
                    return None
                is_set = value is not None and (value != "" or not op.startswith(":"))
                if op.endswith("-"):
                    value = value if is_set else alternative
                else:
                    value = alternative if is_set else ""
            out.append(value or "")
            i = match.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _meta_args(text: str, buildargs: Mapping[str, str], env: dict[str, str | None]) -> None:
    """Record an ``ARG`` before the first ``FROM``: a build arg beats the default."""
    for word in text.split()[1:]:
        name, has_default, default = word.partition("=")
        if has_default and len(default) >= 2 and default[0] == default[-1] and default[0] in "'\"":
            default = default[1:-1]
        env[name] = buildargs.get(name, default if has_default else None)


def _find_bases(instructions: Sequence[_Instruction], escape: str, spec: BuildSpec) -> list[_Base]:
    """The external images the build needs, up to the target stage.

    ``FROM scratch``, ``FROM <earlier stage>`` and ``COPY --from=<stage or index>`` are
    not images; names the global ARGs cannot settle are left to the builder.
    """
    buildargs = dict(spec.buildargs)
    env: dict[str, str | None] = {}
    stages: set[str] = set()
    bases: list[_Base] = []
    seen_from = False
    past_target = False
    target = spec.target.lower() if spec.target else None
    for instruction in instructions:
        if instruction.keyword == "arg" and not seen_from:
            _meta_args(instruction.text, buildargs, env)
        elif instruction.keyword == "from":
            if past_target:
                break  # the classic builder stops at the target: later stages are not built
            seen_from = True
            words = instruction.text.split()[1:]
            flags = [w for w in words if w.startswith("--")]
            rest = [w for w in words if not w.startswith("--")]
            stage = rest[2].lower() if len(rest) == 3 and rest[1].lower() == "as" else None
            if stage is not None and target is not None and stage == target:
                past_target = True
            if len(rest) not in (1, 3) or (len(rest) == 3 and stage is None):
                continue  # malformed: the builder says how
            platform: str | None = spec.platform
            unknown = False
            for flag in flags:
                name, _, value = flag.partition("=")
                if name.lower() == "--platform":
                    expanded = _expand(value, env, escape)
                    unknown = expanded is None
                    platform = expanded or None
            image = _expand(rest[0], env, escape)
            if not unknown and image and image != "scratch" and image.lower() not in stages:
                bases.append(_Base(instruction, rest[0], image, platform))
            if stage is not None:
                stages.add(stage)
        elif instruction.keyword == "copy":
            for word in instruction.text.split()[1:]:
                if not word.startswith("--"):
                    break
                name, _, value = word.partition("=")
                if name.lower() != "--from" or not value:
                    continue
                source = _expand(value, {}, escape)
                if source and source.lower() not in stages and not source.isdigit():
                    bases.append(_Base(instruction, word, source, spec.platform))
    return bases


def _resolve_bases(
    cache: ImageCache, spec: BuildSpec, source: _Source, bases: Sequence[_Base]
) -> list[Image]:
    """Each base image through the image cache, with the cache's policy and mirror."""
    images: list[Image] = []
    for base in bases:
        where = f"{source.dockerfile_path}, line {base.instruction.first + 1}"
        try:
            images.append(cache.get(base.image, platform=base.platform))
        except ImageReferenceError as error:
            raise ImageBuildError(
                f"cannot build {spec.ref}: {where}: {error.message}",
                image=spec.ref,
                step=base.instruction.text,
            ) from None
        except ImagePullError as error:
            raise ImageBuildError(
                f"cannot build {spec.ref}: its base image {base.image} ({where}) is not "
                f"available: {error.message}",
                image=spec.ref,
                step=base.instruction.text,
            ) from None
    return images


class _Rewrite:
    """The Dockerfile as sent: base images named by id, and the image's labels in one
    ``LABEL`` at the end of the stage built. Line numbers up to there are kept, so the
    builder's messages point at the user's lines."""

    def __init__(
        self,
        bases: Sequence[_Base],
        images: Sequence[Image],
        *,
        escape: str = "\\",
        label_after: int | None = None,
    ) -> None:
        self.escape = escape
        #: The physical line after which the LABEL goes (None: at the end).
        self.label_after = label_after
        #: Labels to add in the Dockerfile; set before the context is written.
        self.labels: dict[str, str] = {}
        self._by_line: dict[int, tuple[_Instruction, list[tuple[str, str]]]] = {}
        for base, image in zip(bases, images, strict=True):
            instruction, swaps = self._by_line.setdefault(
                base.instruction.first, (base.instruction, [])
            )
            swaps.append((base.word, image.id))
        #: The instruction as the builder will print it -> as the user wrote it.
        self.originals: dict[str, str] = {}
        for instruction, swaps in self._by_line.values():
            self.originals[self._replace(instruction, swaps)] = instruction.text

    @staticmethod
    def _replace(instruction: _Instruction, swaps: Sequence[tuple[str, str]]) -> str:
        text = instruction.text
        for word, image_id in swaps:
            new = f"--from={image_id}" if word.lower().startswith("--from=") else image_id
            # Whole words only: "busybox" must not hit "busybox-extra".
            match = re.search(rf"(?<!\S){re.escape(word)}(?!\S)", text)
            if match is not None:
                text = text[: match.start()] + new + text[match.end() :]
        return text

    def __call__(self, data: bytes) -> bytes:
        if not self._by_line and not self.labels:
            return data
        lines = _split_lines(data.decode("utf-8", errors="surrogateescape"))
        for first, (instruction, swaps) in self._by_line.items():
            lines[first] = self._replace(instruction, swaps)
            for index in range(first + 1, instruction.last + 1):
                lines[index] = ""
        if self.labels:
            label = "LABEL " + " ".join(
                f"{name}={self._quote(value)}" for name, value in sorted(self.labels.items())
            )
            if self.label_after is None:
                if lines and lines[-1] == "":
                    lines.insert(len(lines) - 1, label)
                else:
                    lines.append(label)
            else:
                lines.insert(self.label_after + 1, label)
        return "\n".join(lines).encode("utf-8", errors="surrogateescape")

    def _quote(self, value: str) -> str:
        # Inside double quotes the escape character protects '"', '$' and itself.
        for special in (self.escape, '"', "$"):
            value = value.replace(special, self.escape + special)
        return f'"{value}"'

    def can_label(self, name: str, value: str) -> bool:
        """Whether a label can go into the Dockerfile's LABEL line (one builder step for
        all of them, where the engine's ``labels`` parameter costs a step each)."""
        return _LABEL_NAME.fullmatch(name) is not None and not any(c in value for c in "\r\n")

    def show(self, line: str) -> str:
        """A line of build output with the instruction shown as written."""
        head, sep, instruction = line.partition(" : ")
        if sep and head.startswith("Step "):
            original = self.originals.get(instruction.strip())
            if original is not None:
                return f"{head} : {original}"
        return line


_LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")


def _plan(cache: ImageCache, spec: BuildSpec) -> tuple[_Source, list[Image], _Rewrite]:
    source = _Source.load(spec)
    text = source.dockerfile.decode("utf-8", errors="surrogateescape")
    instructions, escape = _instructions(_split_lines(text))
    bases = _find_bases(instructions, escape, spec)
    images = _resolve_bases(cache, spec, source, bases)
    return (
        source,
        images,
        _Rewrite(bases, images, escape=escape, label_after=_target_end(instructions, spec.target)),
    )


def _target_end(instructions: Sequence[_Instruction], target: str | None) -> int | None:
    """The last physical line of the target stage (``None``: the Dockerfile's end)."""
    if not target:
        return None
    inside = False
    last: int | None = None
    for instruction in instructions:
        if instruction.keyword == "from":
            if inside:
                return last
            words = instruction.text.split()
            inside = (
                len(words) >= 4
                and words[-2].lower() == "as"
                and words[-1].lower() == (target.lower())
            )
        last = instruction.last
    return None  # the last stage, or no such target (the builder says so)


# -- keys and tags ----------------------------------------------------------------------


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
    for _ in range(_ATTEMPTS):
        try:
            return _compute_key(_Source.load(spec), bases)
        except _ContextChanged:
            continue
    raise _keeps_changing(spec)


def _keeps_changing(spec: BuildSpec) -> ImageBuildError:
    return ImageBuildError(
        f"the build context of {spec.ref} ({spec.context}) changed each of {_ATTEMPTS} times "
        "it was read; stop whatever writes to it during the tests, or leave what it writes "
        "out with .dockerignore",
        image=spec.ref,
    )


def build_tag(spec: BuildSpec, key: str) -> str:
    """``pytest-containers/<context dir name>:<first 20 hex digits of key>``."""
    return f"{BUILD_REPOSITORY}/{_tag_name(spec.context.name)}:{key[:TAG_KEY_CHARS]}"


def _tag_name(name: str) -> str:
    # A repository path component: lowercase alphanumerics joined by single separators.
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:_NAME_MAX].strip("-")
    return slug or "context"


def _spec_digest(spec: BuildSpec, dockerfile_name: str) -> str:
    parts = [str(spec.context), dockerfile_name, spec.target, spec.buildargs, spec.platform]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


# -- building ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildProgress:
    """Where a build stands: ``image`` is the build as declared (``build:tests/app``),
    ``tag`` the image being built, ``step`` the current step as the builder numbers it
    (``"Step 3/7 : RUN make"``; ``FROM`` shows the base image as written), ``line`` the
    output line that prompted this report (``None`` for a new step). ``done`` is true
    once, at the end of a successful build."""

    image: str
    tag: str
    step: str | None = None
    step_number: int = 0
    steps_total: int = 0
    line: str | None = None
    done: bool = False


_STEP = re.compile(r"Step (\d+)/(\d+) : ")


def build_image(
    client: docker.DockerClient,
    cache: ImageCache,
    spec: BuildSpec,
    *,
    cache_dir: Path | None = None,
    lock_timeout: float = 900.0,
    on_progress: Callable[[BuildProgress], None] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Image:
    """Make the image of ``spec`` present in the engine, building it only if no image
    of the same key is there yet; returns it as :class:`Image` (``source`` ``"built"``
    or ``"present"``, ``resolved_ref`` the tag, ``digest`` ``None``).

    Base images are resolved through ``cache`` first. The build is done by one process
    at a time per key (the lock under ``cache_dir``, default the cache's, waited for up
    to ``lock_timeout`` seconds); whoever waited finds the image and does not build. A
    failure is re-raised to the rest of the same run (``cache.run_id``) without building
    again. ``on_progress`` receives every step and output line, in this thread.
    ``labels`` are added to the image's (they do not take part in the key: an image
    already built keeps the labels it was built with, so pass no per-run labels).

    Raises :class:`ImageBuildError` (with ``step`` and ``log_tail`` when the engine
    failed a step), or :class:`ContainerError` when the lock wait times out.
    """
    for _ in range(_ATTEMPTS):
        try:
            return _build_once(
                client,
                cache,
                spec,
                cache_dir=Path(cache_dir) if cache_dir is not None else cache.cache_dir,
                lock_timeout=lock_timeout,
                on_progress=on_progress,
                labels=labels or {},
            )
        except _ContextChanged:
            continue
    raise _keeps_changing(spec)


def _build_once(
    client: docker.DockerClient,
    cache: ImageCache,
    spec: BuildSpec,
    *,
    cache_dir: Path,
    lock_timeout: float,
    on_progress: Callable[[BuildProgress], None] | None,
    labels: Mapping[str, str],
) -> Image:
    started = time.monotonic()
    source, bases, rewrite = _plan(cache, spec)
    base_ids = [image.id for image in bases]
    key = _compute_key(source, base_ids)
    tag = build_tag(spec, key)

    def result(attrs: Mapping[str, Any], origin: str) -> Image:
        return Image(
            ref=spec.ref,
            resolved_ref=tag,
            id=str(attrs["Id"]),
            digest=None,
            platform=spec.platform,
            source=origin,
            seconds=time.monotonic() - started,
        )

    # Without the lock first: an image already built needs no wait.
    attrs = inspect_image(client, tag)
    if attrs is not None:
        return result(attrs, "present")
    builds = ensure_private_dir(cache_dir / "builds")
    engine = cache.engine_id
    lock_path = key_path(builds, engine, key, suffix=".lock")
    state_path = key_path(builds, engine, key, suffix=".json")
    with exclusive(lock_path, timeout=lock_timeout, what=f"the build of {spec.ref}"):
        # Whoever held the lock before may have built it, or failed, meanwhile.
        attrs = inspect_image(client, tag)
        if attrs is not None:
            return result(attrs, "present")
        record = read_json(state_path)
        if record is not None and record.get("run_id") == cache.run_id:
            error = _recorded_error(record, spec)
            if error is not None:
                raise error
        all_labels = {
            **labels,
            BUILD_KEY_LABEL: key,
            BUILD_CONTEXT_LABEL: str(spec.context),
            BUILD_SPEC_LABEL: _spec_digest(spec, source.dockerfile_name),
        }
        rewrite.labels = {k: v for k, v in all_labels.items() if rewrite.can_label(k, v)}
        api_labels = {k: v for k, v in all_labels.items() if k not in rewrite.labels}
        with tempfile.TemporaryFile(prefix="pytest-containers-context-") as context:
            if _write_context(source, base_ids, rewrite, context) != key:
                raise _ContextChanged(str(spec.context))  # changed since the key: again
            try:
                image_id = _run_build(
                    client, spec, source, context, tag, api_labels, rewrite, on_progress
                )
            except ImageBuildError as error:
                _record(state_path, cache.run_id, tag, error=error)
                raise
        _record(state_path, cache.run_id, tag, image_id=image_id)
        attrs = inspect_image(client, tag)
        if attrs is None:
            raise ImageBuildError(
                f"the engine built {spec.ref} but has no image {tag} right after",
                image=spec.ref,
            )
        return result(attrs, "built")


class _Log:
    """Follows the build output: the current step, the last lines, progress reports."""

    def __init__(
        self,
        spec: BuildSpec,
        tag: str,
        rewrite: _Rewrite,
        on_progress: Callable[[BuildProgress], None] | None,
    ) -> None:
        self.spec = spec
        self.tag = tag
        self.rewrite = rewrite
        self.on_progress = on_progress
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self.step: str | None = None
        self.step_number = 0
        self.steps_total = 0
        self._partial = ""

    def feed(self, text: str) -> None:
        # The engine sends "Step 1/3 : FROM x" and its newline as separate chunks.
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.rstrip("\r"))

    def flush(self) -> None:
        if self._partial:
            partial, self._partial = self._partial, ""
            self._line(partial)

    def _line(self, line: str) -> None:
        line = self.rewrite.show(line)
        self.tail.append(line)
        match = _STEP.match(line)
        if match is not None:
            self.step = line
            self.step_number, self.steps_total = int(match.group(1)), int(match.group(2))
            self._report(None)
        elif line.strip():
            self._report(line)

    def _report(self, line: str | None, *, done: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(
                BuildProgress(
                    image=self.spec.ref,
                    tag=self.tag,
                    step=self.step,
                    step_number=self.step_number,
                    steps_total=self.steps_total,
                    line=line,
                    done=done,
                )
            )

    def done(self) -> None:
        self._report(None, done=True)


def _run_build(
    client: docker.DockerClient,
    spec: BuildSpec,
    source: _Source,
    context: IO[bytes],
    tag: str,
    labels: Mapping[str, str],
    rewrite: _Rewrite,
    on_progress: Callable[[BuildProgress], None] | None,
) -> str:
    """Run the classic builder on the tarball; returns the image id."""
    log = _Log(spec, tag, rewrite, on_progress)
    image_id: str | None = None
    stream: Iterator[Any] | None = None
    finished = False
    try:
        stream = client.api.build(
            fileobj=context,
            custom_context=True,
            tag=tag,
            dockerfile=source.dockerfile_name,
            target=spec.target,
            buildargs=dict(spec.buildargs) or None,
            platform=spec.platform,
            labels=dict(labels) or None,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
            # A step may print nothing for longer than any client timeout (RUN sleep 300).
            timeout=None,
        )
        for entry in stream:
            if not isinstance(entry, Mapping):
                continue
            error = entry.get("error") or (entry.get("errorDetail") or {}).get("message")
            if error:
                log.flush()
                raise _step_failed(spec, log, str(error))
            if isinstance(entry.get("stream"), str):
                log.feed(entry["stream"])
            elif isinstance(entry.get("status"), str):
                log.feed(str(entry["status"]) + "\n")
            aux = entry.get("aux")
            if isinstance(aux, Mapping) and isinstance(aux.get("ID"), str):
                image_id = str(aux["ID"])
        log.flush()
        finished = True
    except docker.errors.APIError as error:
        log.flush()
        reason = str(error.explanation or error)
        raise _step_failed(spec, log, reason, rejected=True) from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as error:
        log.flush()
        raise _step_failed(
            spec, log, f"the connection to the Docker engine failed: {error}"
        ) from None
    finally:
        if not finished and stream is not None:
            _close_stream(stream)  # the engine cancels a build whose client went away
    if image_id is None:
        attrs = inspect_image(client, tag)
        if attrs is None:
            raise _step_failed(spec, log, "the engine ended the build without an image")
        image_id = str(attrs["Id"])
    log.done()
    return image_id


def _close_stream(stream: Iterator[Any]) -> None:
    # docker-py keeps the HTTP response only in its generator's frame.
    frame = getattr(stream, "gi_frame", None)
    response = frame.f_locals.get("response") if frame is not None else None
    if isinstance(response, requests.Response):
        with contextlib.suppress(Exception):
            response.close()
    with contextlib.suppress(Exception):
        stream.close()  # type: ignore[attr-defined]


def _step_failed(
    spec: BuildSpec, log: _Log, reason: str, *, rejected: bool = False
) -> ImageBuildError:
    tail = "\n".join(log.tail)
    head = f"building {spec.ref} ({spec.context}) failed"
    if log.step is not None:
        message = f"{head} at {log.step}: {reason}"
    elif rejected:
        message = (
            f"{head}: the engine rejected the build: {reason}; check the Dockerfile, the "
            "target and the build args"
        )
    else:
        message = f"{head}: {reason}"
    if tail:
        message += "\n--- last lines of the build log ---\n" + tail
    return ImageBuildError(message, image=spec.ref, step=log.step, log_tail=tail)


def _record(
    state_path: Path,
    run_id: str,
    tag: str,
    *,
    image_id: str | None = None,
    error: ImageBuildError | None = None,
) -> None:
    write_json_atomic(
        state_path,
        {
            "run_id": run_id,
            "tag": tag,
            "image_id": image_id,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "error": None
            if error is None
            else {"message": error.message, "step": error.step, "log_tail": error.log_tail},
        },
    )


def _recorded_error(record: Mapping[str, object], spec: BuildSpec) -> ImageBuildError | None:
    error = record.get("error")
    if not isinstance(error, dict):
        return None
    step = error.get("step")
    return ImageBuildError(
        str(error.get("message") or f"building {spec.ref} failed earlier in this run"),
        image=spec.ref,
        step=str(step) if step is not None else None,
        log_tail=str(error.get("log_tail") or ""),
    )


# -- pruning ----------------------------------------------------------------------------


@dataclass
class _Built:
    tag: str
    key: str
    group: str
    context: str
    created: float


def prune_stale_builds(
    client: docker.DockerClient,
    *,
    keep: Iterable[str] = (),
    keep_newest: int | None = None,
    older_than: float | None = None,
    under: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Remove built images (``pytest-containers/<name>:<key>``) that are out of date;
    returns the tags removed.

    ``keep`` holds the tags (or keys) current in this run. With only ``keep``, the
    stale builds are the other versions of the same builds: images built from the same
    context directory, Dockerfile, target, build args and platform as a kept one, but
    from other content. Builds of anything else are left alone, so a run never prunes
    what a concurrent run of another project (or another checkout) uses.

    Without context knowledge (``--container-prune``), give ``keep_newest`` and/or
    ``older_than`` instead: every build on the engine is then considered, grouped by
    what was built; the newest ``keep_newest`` of each group stay, and of the rest only
    those created more than ``older_than`` seconds ago go. :data:`PRUNE_KEEP_NEWEST` and
    :data:`PRUNE_OLDER_THAN` are the recommended values (the newest of each, and
    anything from the last day).

    ``under`` limits either mode to builds whose context directory is that directory or
    inside it (e.g. the project's rootdir), leaving other projects' builds alone.

    Kept images stay in any case, and an image a container (even a stopped one) uses is
    skipped rather than forced away.
    """
    keep_set = {item for item in keep if item}
    everything = keep_newest is not None or older_than is not None
    built = _list_builds(client)
    if under is not None:
        root = os.path.abspath(under)
        built = [
            item
            for item in built
            if item.context == root or item.context.startswith(root.rstrip(os.sep) + os.sep)
        ]

    def kept(item: _Built) -> bool:
        return item.tag in keep_set or any(
            item.key == k or item.tag.rpartition(":")[2] == k[:TAG_KEY_CHARS]
            for k in keep_set
            if ":" not in k
        )

    if everything:
        groups: dict[str, list[_Built]] = {}
        for item in built:
            groups.setdefault(item.group, []).append(item)
        now = time.time()
        candidates: list[_Built] = []
        for items in groups.values():
            items.sort(key=lambda item: item.created, reverse=True)
            for item in items[max(keep_newest or 0, 0) :]:
                if older_than is None or now - item.created >= older_than:
                    candidates.append(item)
    else:
        groups_kept = {item.group for item in built if kept(item)}
        candidates = [item for item in built if item.group in groups_kept]
    removed: list[str] = []
    for item in candidates:
        if kept(item):
            continue
        try:
            client.api.remove_image(item.tag, force=False, noprune=False)
        except docker.errors.NotFound:
            continue  # someone else pruned it
        except docker.errors.APIError as error:
            if error.status_code == 409:
                continue  # a container uses it: it is not stale to that container
            raise ContainerError(
                f"cannot remove the stale build {item.tag}: {error.explanation or error}"
            ) from None
        removed.append(item.tag)
    return removed


def _list_builds(client: docker.DockerClient) -> list[_Built]:
    """Every tag of every labelled build image, with when it was created."""
    found: list[_Built] = []
    for raw in client.api.images(filters={"label": BUILD_KEY_LABEL}) or []:
        labels = raw.get("Labels") or {}
        key = str(labels.get(BUILD_KEY_LABEL) or "")
        tags = [
            str(tag)
            for tag in raw.get("RepoTags") or ()
            if str(tag).startswith(BUILD_REPOSITORY + "/")
        ]
        if not tags:
            continue
        created = _created(client, str(raw["Id"]), float(raw.get("Created") or 0))
        for tag in tags:
            group = (
                labels.get(BUILD_SPEC_LABEL)
                or labels.get(BUILD_CONTEXT_LABEL)
                or tag.rpartition(":")[0]
            )
            context = str(labels.get(BUILD_CONTEXT_LABEL) or "")
            found.append(_Built(tag, key, str(group), context, created))
    return found


_CREATED = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _created(client: docker.DockerClient, image_id: str, fallback: float) -> float:
    """When the image was created, to the nanosecond the list call rounds to seconds."""
    attrs = inspect_image(client, image_id)
    text = str((attrs or {}).get("Created") or "")
    match = _CREATED.match(text)
    if match is None:
        return fallback
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    try:
        moment = datetime.datetime.fromisoformat(match.group(1) + zone)
    except ValueError:
        return fallback
    fraction = float("0." + match.group(2)) if match.group(2) else 0.0
    return moment.timestamp() + fraction
