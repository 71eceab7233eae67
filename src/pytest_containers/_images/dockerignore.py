"""``.dockerignore``, read and matched the way the docker CLI does it.

The patterns decide which files of a build context the builder sees, and so which
files take part in the build key (:mod:`pytest_containers._images.context`).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from pytest_containers.errors import ImageBuildError

DOCKERIGNORE = ".dockerignore"


@dataclass(frozen=True)
class Pattern:
    text: str  # cleaned, without the leading "!"
    exclusion: bool
    regex: re.Pattern[str]


def parse_dockerignore(data: bytes, ref: str) -> list[Pattern]:
    """The patterns of a .dockerignore, read the way the docker CLI reads them."""
    patterns: list[Pattern] = []
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
            regex = re.compile(translate(cleaned))
        except (re.error, ValueError) as error:
            raise ImageBuildError(
                f"{ref}: .dockerignore pattern {raw.strip()!r} is not valid ({error}); "
                "patterns use *, **, ?, [classes] and \\ escapes",
                image=ref,
            ) from None
        patterns.append(Pattern(cleaned, exclusion, regex))
    return patterns


def _clean(pattern: str) -> str:
    # Go's filepath.Clean, then relative to the context: "/a/./b/" is "a/b".
    cleaned = posixpath.normpath(pattern)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if len(cleaned) > 1 and cleaned.startswith("/"):
        cleaned = cleaned[1:]
    return cleaned


def translate(pattern: str) -> str:
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


class Ignore:
    """Decides what of the context the builder sees, as ``docker build`` does."""

    def __init__(self, patterns: list[Pattern]) -> None:
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


def escape_glob(name: str) -> str:
    """``name`` as a pattern that matches exactly it."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", name)
