"""The Dockerfile as far as the plugin reads it: its instructions, the base images it
takes from outside (``FROM``, ``COPY --from=``), and the rewrite that names them by image
id and adds the image's labels.

Parsed like the classic builder (parser directives, continuations, comments, global
``ARG`` substitution); whatever this cannot settle is left to the builder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_containers._base.image import Image
    from pytest_containers._images.context import BuildSpec


@dataclass(frozen=True)
class Instruction:
    first: int  # index of its first physical line
    last: int  # and of its last
    keyword: str  # lowercased
    text: str  # the logical line, continuations joined, as the builder reads it


@dataclass(frozen=True)
class Base:
    """An image the Dockerfile takes from outside: ``FROM`` or ``COPY --from=``."""

    instruction: Instruction
    word: str  # the word to replace, as written
    image: str  # after ARG substitution
    platform: str | None


_KNOWN_DIRECTIVES = frozenset({"escape", "syntax", "check"})
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_VARIABLE = re.compile(
    r"\$(?:(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-+])(?P<word>[^{}$]*))?\})"
)


def split_lines(text: str) -> list[str]:
    return text.split("\n")


def parse_instructions(lines: Sequence[str]) -> tuple[list[Instruction], str]:
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
    found: list[Instruction] = []
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
        found.append(Instruction(first, index, keyword, text.strip()))
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


def find_bases(instructions: Sequence[Instruction], escape: str, spec: BuildSpec) -> list[Base]:
    """The external images the build needs, up to the target stage.

    ``FROM scratch``, ``FROM <earlier stage>`` and ``COPY --from=<stage or index>`` are
    not images; names the global ARGs cannot settle are left to the builder.
    """
    buildargs = dict(spec.buildargs)
    env: dict[str, str | None] = {}
    stages: set[str] = set()
    bases: list[Base] = []
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
                bases.append(Base(instruction, rest[0], image, platform))
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
                    bases.append(Base(instruction, word, source, spec.platform))
    return bases


class Rewrite:
    """The Dockerfile as sent: base images named by id, and the image's labels in one
    ``LABEL`` at the end of the stage built. Line numbers up to there are kept, so the
    builder's messages point at the user's lines."""

    def __init__(
        self,
        bases: Sequence[Base],
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
        self._by_line: dict[int, tuple[Instruction, list[tuple[str, str]]]] = {}
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
    def _replace(instruction: Instruction, swaps: Sequence[tuple[str, str]]) -> str:
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
        lines = split_lines(data.decode("utf-8", errors="surrogateescape"))
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


def target_end(instructions: Sequence[Instruction], target: str | None) -> int | None:
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
