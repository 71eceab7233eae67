"""The build context and the Dockerfile as sent, without an engine: what from_kwargs
refuses, the tarball holding exactly what the key covers, ARG expansion in FROM lines and
the labels the rewrite adds."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_containers._images import context as _build_context
from pytest_containers._images.context import (
    BuildSpec,
    ContextChanged,
    Source,
    build_key,
    write_context,
)
from pytest_containers._images.dockerfile import (
    Rewrite,
    find_bases,
    parse_instructions,
    split_lines,
    target_end,
)
from pytest_containers._images.dockerignore import Ignore, parse_dockerignore
from pytest_containers.errors import ImageBuildError


def _context(directory: Path, dockerfile: str = "FROM busybox\nCOPY . /ctx\n") -> Path:
    directory.mkdir(parents=True)
    (directory / "Dockerfile").write_text(dockerfile)
    (directory / "app.txt").write_text("hello\n")
    return directory


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"build": ""}, r"build='' is not a directory; pass the build context directory"),
        ({"dockerfile": ""}, r"dockerfile='' is not a file name"),
        ({"target": "  "}, r"target='  ' is not a stage name; pass the name given in"),
        ({"platform": "linux/"}, r"build:ctx: .*platform"),
        ({"buildargs": {"A": None}}, r"build arg 'A'=None is not NAME=VALUE"),
        ({"buildargs": {"A": ["1"]}}, r"build arg A must be a string, got list"),
        ({"buildargs": {"A": True}}, r"build arg A must be a string, got bool"),
    ],
    ids=["build", "dockerfile", "target", "platform", "none-arg", "list-arg", "bool-arg"],
)
def test_from_kwargs_refuses_a_malformed_argument_saying_what_to_write(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    _context(tmp_path / "ctx")
    given: dict[str, Any] = {"build": "ctx", "base_dir": tmp_path, **kwargs}
    with pytest.raises(ImageBuildError, match=message):
        BuildSpec.from_kwargs(**given)


def test_numbers_are_build_args_too(tmp_path: Path) -> None:
    _context(tmp_path / "ctx")
    numbers: dict[str, Any] = {"V": 3, "F": 1.5}  # typed as str, yet common and accepted
    spec = BuildSpec.from_kwargs("ctx", base_dir=tmp_path, buildargs=numbers)
    assert spec.buildargs == (("F", "1.5"), ("V", "3"))


def test_a_spec_outside_the_working_directory_is_named_by_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = _context(tmp_path / "app")
    monkeypatch.chdir("/")
    assert BuildSpec(context).ref == f"build:{context.relative_to('/').as_posix()}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert BuildSpec(context, dockerfile="Dockerfile", target="t").ref == "build:app#t"
    monkeypatch.chdir(context)
    assert BuildSpec(context).ref == "build:app"


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {member.name: member for member in tar.getmembers()}


def test_the_tarball_holds_what_the_key_covers(tmp_path: Path) -> None:
    context = _context(tmp_path / "ctx")
    (context / "sub").mkdir()
    (context / "sub" / "data.bin").write_bytes(b"\0" * 3000)
    os.symlink("sub/data.bin", context / "link")
    (context / ".dockerignore").write_text("*.log\n")
    (context / "trace.log").write_text("left out")
    spec = BuildSpec(context)
    out = io.BytesIO()
    key = write_context(Source.load(spec), [], lambda data: data, out)
    assert key == build_key(spec)
    members = _members(out.getvalue())
    assert sorted(members) == [
        ".dockerignore",
        "Dockerfile",
        "app.txt",
        "link",
        "sub",
        "sub/data.bin",
    ]
    assert members["sub"].isdir()
    assert members["link"].issym()
    assert members["link"].linkname == "sub/data.bin"
    assert members["sub/data.bin"].size == 3000
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())


def test_a_dockerfile_outside_the_context_is_sent_under_its_own_name(tmp_path: Path) -> None:
    context = _context(tmp_path / "ctx")
    (tmp_path / "Other.Dockerfile").write_text("FROM busybox\n")
    spec = BuildSpec(context, dockerfile="../Other.Dockerfile")
    source = Source.load(spec)
    out = io.BytesIO()
    write_context(source, [], lambda data: data + b"# rewritten\n", out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        sent = tar.extractfile(source.dockerfile_name)
        ignore = tar.extractfile(".dockerignore")
        assert sent is not None
        assert ignore is not None
        assert sent.read() == b"FROM busybox\n# rewritten\n"
        # The engine drops both from the context after reading them.
        assert ignore.read().split() == [source.dockerfile_name.encode(), b".dockerignore"]


def test_a_context_that_changes_on_every_read_is_an_error_saying_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = BuildSpec(_context(tmp_path / "ctx"))
    reads = []

    def changing(source: Source, bases: Sequence[str]) -> str:
        reads.append(source)
        raise ContextChanged(str(spec.context))

    monkeypatch.setattr(_build_context, "compute_key", changing)
    with pytest.raises(ImageBuildError, match="changed each of 3 times it was read; stop"):
        build_key(spec)
    assert len(reads) == 3


# -- the Dockerfile ---------------------------------------------------------------------


def _bases(dockerfile: str, **buildargs: str) -> list[str]:
    instructions, escape = parse_instructions(split_lines(dockerfile))
    spec = BuildSpec(Path("/nonexistent"), buildargs=tuple(buildargs.items()))
    return [base.image for base in find_bases(instructions, escape, spec)]


@pytest.mark.parametrize(
    ("dockerfile", "buildargs", "bases"),
    [
        ("ARG V\nFROM ${V:-busybox}:1\n", {}, ["busybox:1"]),
        ("ARG V=redis\nFROM ${V:-busybox}\n", {}, ["redis"]),
        ("ARG V=''\nFROM ${V:-busybox}\n", {}, ["busybox"]),
        ("ARG V=x\nFROM busybox${V:+-extra}\n", {}, ["busybox-extra"]),
        ("ARG V\nFROM busybox${V:+-extra}\n", {}, ["busybox"]),
        ("ARG V\nFROM $V\n", {"V": "redis:7"}, ["redis:7"]),
        ('ARG V="redis"\nFROM $V\n', {}, ["redis"]),
        ("FROM $UNKNOWN\n", {}, []),  # left to the builder
        ("ARG V\nFROM ${V:-$W}\n", {}, []),
        ("FROM 'busybox'\n", {}, []),
        ("FROM $\n", {}, []),
        ("FROM busy\\box\n", {}, ["busybox"]),
        ("# escape=`\nFROM busy`box\n", {}, ["busybox"]),
        ("FROM busybox AS\n", {}, []),  # malformed: the builder says how
        ("FROM \\\n  # a comment\n\n  busybox\n", {}, ["busybox"]),
        ("\\\n\nFROM busybox\n", {}, ["busybox"]),
        ("FROM --platform=$P busybox\n", {}, []),
    ],
)
def test_from_lines_expand_the_global_args_as_the_builder_does(
    dockerfile: str, buildargs: dict[str, str], bases: list[str]
) -> None:
    assert _bases(dockerfile, **buildargs) == bases


def test_the_labels_go_at_the_end_of_the_target_stage_quoted(tmp_path: Path) -> None:
    text = "FROM busybox AS app\nRUN true\nFROM busybox AS other\nRUN false"
    instructions, escape = parse_instructions(split_lines(text))
    rewrite = Rewrite([], [], escape=escape, label_after=target_end(instructions, "app"))
    rewrite.labels = {"b": 'say "$x"', "a": "1"}
    assert rewrite(text.encode()).decode().split("\n") == [
        "FROM busybox AS app",
        "RUN true",
        'LABEL a="1" b="say \\"\\$x\\""',
        "FROM busybox AS other",
        "RUN false",
    ]
    at_end = Rewrite([], [], escape=escape)
    at_end.labels = {"a": "1"}
    assert at_end(b"FROM busybox").decode() == 'FROM busybox\nLABEL a="1"'
    assert at_end(b"FROM busybox\n").decode() == 'FROM busybox\nLABEL a="1"\n'
    assert not at_end.can_label("-bad", "x")
    assert not at_end.can_label("good", "two\nlines")
    assert Rewrite([], [])(b"unchanged") == b"unchanged"


# -- .dockerignore edge cases ------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "excluded"),
    [
        ("//a", "a", True),  # several leading slashes are one: the context root
        ("a\\", "a\\", True),  # a trailing backslash is itself
        ("[\\]]x", "]x", True),  # an escaped "]" inside a class
        ("[a\\-c]x", "-x", True),
        ("[a\\-c]x", "bx", False),
    ],
)
def test_dockerignore_edge_cases_match_as_docker_does(
    pattern: str, path: str, excluded: bool
) -> None:
    ignore = Ignore(parse_dockerignore(pattern.encode(), "build:test"))
    assert ignore.excludes(path) is excluded


@pytest.mark.parametrize("pattern", ["[", "a[]b", "[^"])
def test_an_invalid_dockerignore_pattern_is_an_error_naming_it(pattern: str) -> None:
    with pytest.raises(ImageBuildError, match=r"\.dockerignore pattern .* is not valid"):
        parse_dockerignore(pattern.encode() + b"\n", "build:test")
