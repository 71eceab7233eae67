"""Image references, parsed and normalized the way Docker's ``distribution/reference`` does.

``redis`` means ``docker.io/library/redis:latest`` to Docker, and the plugin has to agree
with it exactly: the cache keys pulls by the normalized name, mirrors rewrite only what
Docker would fetch from Docker Hub, and a reference Docker would reject should fail here,
before any call to the engine, with a message that says what to write instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pytest_containers.errors import ImageReferenceError

__all__ = [
    "DOCKER_HUB",
    "Reference",
    "default_name",
    "normalize_platform",
    "parse_mirror",
    "parse_reference",
]

#: The registry Docker uses for names without a registry host.
DOCKER_HUB = "docker.io"
_LEGACY_HUB = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_DEFAULT_TAG = "latest"
_NAME_TOTAL_LENGTH_MAX = 255

_EXAMPLES = (
    "'redis:7', 'user/app:1.0', 'registry.example.com:5000/team/app:tag' "
    "or 'redis@sha256:<64 hex digits>'"
)

_PINNED_EXAMPLE = "registry.example.com/team/app@sha256:<64 hex digits>"

# Go's \w is ASCII-only, hence the explicit classes rather than Python's unicode \w.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = re.compile(rf"(?P<host>{_HOST})(?::(?P<port>[0-9]+))?")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")
# go-digest only accepts the algorithms it can verify, each with its exact hex length.
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_PLATFORM_COMPONENT = re.compile(r"[a-z0-9_.-]+")
_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "i386": "386",
    "i686": "386",
}


@dataclass(frozen=True)
class Reference:
    """A normalized image reference.

    ``registry`` is the registry host (``docker.io``, ``localhost:5000``), ``repository``
    the path on it (``library/redis``), ``tag`` the tag (``None`` only when a digest was
    given without one) and ``digest`` the content digest (``sha256:…``) when pinned.
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        """The canonical full form, e.g. ``docker.io/library/redis:7``."""
        return self.name + self._suffix

    @property
    def _suffix(self) -> str:
        text = f":{self.tag}" if self.tag is not None else ""
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """Registry and repository without tag or digest: ``docker.io/library/redis``."""
        return f"{self.registry}/{self.repository}"

    @property
    def is_docker_hub(self) -> bool:
        """Whether Docker would fetch this image from Docker Hub."""
        return self.registry == DOCKER_HUB

    def with_mirror(self, mirror: str | None) -> Reference:
        """This reference fetched through a Docker Hub mirror ``HOST[:PORT][/PREFIX]``.

        Only Docker Hub references are rewritten (``docker.io/library/redis:7`` becomes
        ``MIRROR/library/redis:7``, or ``MIRROR/PREFIX/library/redis:7``); any other
        registry, and a ``None`` or empty mirror, leave the reference unchanged. Raises
        :class:`ValueError` when the mirror is malformed.
        """
        if not mirror or not self.is_docker_hub:
            return self
        host, prefix = parse_mirror(mirror)
        repository = f"{prefix}/{self.repository}" if prefix else self.repository
        return replace(self, registry=host, repository=repository)

    def with_digest(self, digest: str) -> Reference:
        """This reference pinned to ``digest`` (``sha256:…``), keeping its tag."""
        problem = _digest_problem(digest)
        if problem is not None:
            raise ImageReferenceError(
                f"cannot pin {self} to digest {digest!r}: {problem}", image=str(self)
            )
        return replace(self, digest=digest)


def parse_reference(text: str) -> Reference:
    """Parse and normalize an image reference as Docker does.

    ``redis`` becomes ``docker.io/library/redis:latest``; a first path component is a
    registry host only when it contains ``.`` or ``:``, is ``localhost`` or has uppercase
    letters (Docker's rule). Raises :class:`~pytest_containers.errors.ImageReferenceError`
    for anything Docker would reject.
    """
    if not isinstance(text, str):
        raise ImageReferenceError(
            f"invalid image reference {text!r}: expected a string, got {type(text).__name__}; "
            f"write e.g. {_EXAMPLES}",
            image=repr(text),
        )
    try:
        return _parse(text)
    except _Invalid as invalid:
        raise _reference_error(text, invalid.problem, invalid.suggestion) from None


class _Invalid(Exception):
    """Why Docker would reject a reference, and maybe a fix: raised by the checks below,
    turned into one :class:`ImageReferenceError` naming the whole reference."""

    def __init__(self, problem: str, suggestion: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.suggestion = suggestion


def _reference_error(text: str, problem: str, suggestion: str | None) -> ImageReferenceError:
    if suggestion and not _parses(suggestion, text):
        suggestion = None  # a fix that is still invalid would only send people round
    if suggestion:
        hint = f"write e.g. {suggestion!r} or {_PINNED_EXAMPLE!r}"
    else:
        hint = f"write e.g. {_EXAMPLES}"
    return ImageReferenceError(
        f"invalid image reference {text!r}: {problem}; {hint}", image=str(text)
    )


def _parse(text: str) -> Reference:
    """:func:`parse_reference` of a string; raises :class:`_Invalid`."""
    if not text:
        raise _Invalid("the reference is empty")
    if any(ch.isspace() for ch in text):
        raise _Invalid("it contains whitespace", "".join(text.split()) or None)
    if _IMAGE_ID.fullmatch(text):
        raise _Invalid("a 64-character hex string is an image ID, not a repository name")
    rest, at, digest = text.partition("@")
    if at:
        problem = _digest_problem(digest)
        if problem is not None:
            raise _Invalid(problem)
    rest, tag = _split_tag(rest)
    if not rest:
        raise _Invalid("the repository name is missing")
    registry, path = _split_registry(rest)
    _check_name(registry, path, _lowercased(rest, tag, digest if at else None))
    if registry == DOCKER_HUB and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    name_length = len(registry) + 1 + len(path)
    if name_length > _NAME_TOTAL_LENGTH_MAX:
        raise _Invalid(
            f"the full name {registry}/{path} is {name_length} characters long; Docker allows "
            f"at most {_NAME_TOTAL_LENGTH_MAX}"
        )
    if tag is None and not at:
        tag = _DEFAULT_TAG
    return Reference(registry=registry, repository=path, tag=tag, digest=digest if at else None)


def _split_tag(name: str) -> tuple[str, str | None]:
    """``name`` (no digest) without its tag, and the tag (None when there is none)."""
    # The tag separator is the last ':' after the last '/'; earlier ones belong to a port.
    colon = name.rfind(":")
    if colon <= name.rfind("/"):
        return name, None
    rest, tag = name[:colon], name[colon + 1 :]
    if not tag:
        raise _Invalid("the tag after ':' is empty", rest or None)
    if not _TAG.fullmatch(tag):
        raise _Invalid(
            f"tag {tag!r} is not valid: a tag is 1 to 128 letters, digits, '_', '.' or '-' "
            "and does not start with '.' or '-'"
        )
    return rest, tag


def _check_name(registry: str, path: str, lowercased: str) -> None:
    """Check the registry host and the repository path; ``lowercased`` is the whole
    reference in lowercase, the fix for uppercase letters in the path."""
    if registry != DOCKER_HUB and not _DOMAIN.fullmatch(registry):
        raise _Invalid(f"{registry!r} is not a valid registry host (HOST or HOST:PORT)")
    if path.lower() != path:
        raise _Invalid("repository names must be lowercase", lowercased)
    for component in path.split("/"):
        if not component:
            raise _Invalid(
                f"repository path {path!r} has an empty component "
                "(a leading, trailing or doubled '/')"
            )
        if not _PATH_COMPONENT.fullmatch(component):
            raise _Invalid(
                f"path component {component!r} is not valid: components are lowercase letters "
                "and digits, separated by '.', '_', '__' or dashes, and start and end with a "
                "letter or digit"
            )


def default_name(image: str) -> str:
    """The name a container of ``image`` goes by when none is given (the marker's and
    ``service()``'s): ``redis:7`` -> ``redis``; ``ghcr.io/org/app@sha256:…`` -> ``app``."""
    return parse_reference(image).repository.rsplit("/", 1)[-1]


def _split_registry(name: str) -> tuple[str, str]:
    # Docker's splitDockerDomain: the first component is a host only if it looks like one.
    first, slash, remainder = name.partition("/")
    is_host = bool(slash) and (
        any(ch in first for ch in ".:") or first == "localhost" or first.lower() != first
    )
    if not is_host:
        return DOCKER_HUB, name
    if first == _LEGACY_HUB:
        first = DOCKER_HUB
    return first, remainder


def _parses(suggestion: str, original: str) -> bool:
    if suggestion == original:
        return False
    try:
        parse_reference(suggestion)
    except ImageReferenceError:
        return False
    return True


def _lowercased(name: str, tag: str | None, digest: str | None) -> str:
    # Lowercasing the whole name also turns an uppercase "host" back into a Hub namespace.
    text = name.lower()
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    return text


def _digest_problem(digest: str) -> str | None:
    if not digest:
        return "the digest after '@' is empty"
    if not _DIGEST.fullmatch(digest):
        return f"digest {digest!r} is not ALGORITHM:HEX (e.g. 'sha256:<64 hex digits>')"
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        supported = ", ".join(_DIGEST_HEX_LENGTHS)
        return f"digest algorithm {algorithm!r} is not supported (use one of {supported})"
    if len(encoded) != length or encoded.lower() != encoded:
        return f"a {algorithm} digest needs exactly {length} lowercase hex digits, got {digest!r}"
    return None


def parse_mirror(text: str) -> tuple[str, str]:
    """Split a Docker Hub mirror ``HOST[:PORT][/PREFIX]`` into ``(host, prefix)``.

    ``prefix`` is ``""`` when none is given. Raises :class:`ValueError` with a message
    saying what is wrong (a scheme, whitespace, a malformed host, port or prefix).
    """
    form = (
        "give the mirror as HOST[:PORT][/PREFIX], e.g. '127.0.0.1:5555' or 'mirror.local:5000/hub'"
    )
    if not text:
        raise ValueError(f"the registry mirror is empty; {form}")
    if any(ch.isspace() for ch in text):
        raise ValueError(f"registry mirror {text!r} contains whitespace; {form}")
    if "://" in text:
        scheme, _, bare = text.partition("://")
        raise ValueError(
            f"registry mirror {text!r} has a scheme ({scheme}://); Docker picks the protocol "
            f"itself, so write {bare.rstrip('/')!r}; {form}"
        )
    host, _, prefix = text.rstrip("/").partition("/")
    match = _DOMAIN.fullmatch(host)
    if not match:
        raise ValueError(
            f"registry mirror {text!r} does not start with a valid HOST[:PORT]; {form}"
        )
    port = match.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        raise ValueError(f"registry mirror {text!r} has port {port}, outside 1-65535; {form}")
    # Docker would read a dotless, portless host as a Docker Hub user name.
    if "." not in host and ":" not in host and host != "localhost":
        raise ValueError(
            f"registry mirror host {host!r} would be read as a Docker Hub namespace; give a "
            f"host with a dot or a port (e.g. '{host}:5000' or '{host}.local'); {form}"
        )
    if prefix:
        for component in prefix.split("/"):
            if not _PATH_COMPONENT.fullmatch(component):
                raise ValueError(
                    f"registry mirror {text!r} has an invalid path prefix {prefix!r} (lowercase "
                    f"letters and digits separated by '.', '_', '-' or '/'); {form}"
                )
    return host, prefix


def normalize_platform(text: str | None) -> str | None:
    """Normalize a platform ``OS/ARCH[/VARIANT]``: ``"Linux/AMD64"`` -> ``"linux/amd64"``.

    Common architecture aliases are mapped to Docker's names (``x86_64`` -> ``amd64``,
    ``aarch64`` -> ``arm64``); a variant is kept as given. ``None`` stays ``None``;
    anything else malformed raises :class:`ValueError`.
    """
    if text is None:
        return None
    form = "give a platform as OS/ARCH[/VARIANT], e.g. 'linux/amd64' or 'linux/arm64/v8'"
    parts = text.strip().lower().split("/")
    if not 2 <= len(parts) <= 3 or not all(_PLATFORM_COMPONENT.fullmatch(p) for p in parts):
        raise ValueError(f"invalid platform {text!r}; {form}")
    parts[1] = _ARCH_ALIASES.get(parts[1], parts[1])
    return "/".join(parts)
