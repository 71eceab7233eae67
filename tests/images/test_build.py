"""Images built from a Dockerfile: keyed by content, built once, bases through the cache.

The parsing tests (.dockerignore, FROM lines) need no engine. The others build for real
on the classic builder, offline: the base images come from the test registry through
the image cache's mirror, never from Docker Hub, so a build that tried Hub would fail.
Every image a test builds has its context under the test's tmp_path, and the
``built_images`` fixture removes exactly those.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from pytest_containers._images import build as _build
from pytest_containers._images import context as _build_context
from pytest_containers._images.build import (
    BUILD_CONTEXT_LABEL,
    BUILD_KEY_LABEL,
    BuildProgress,
    BuildSpec,
    build_image,
    build_key,
    build_tag,
    prune_stale_builds,
)
from pytest_containers._images.cache import ImageCache
from pytest_containers._images.context import Source
from pytest_containers._images.dockerfile import find_bases, parse_instructions
from pytest_containers._images.dockerignore import Ignore, parse_dockerignore
from pytest_containers._images.pull import inspect_image
from pytest_containers.errors import ImageBuildError
from tests.testenv import BUSYBOX, REGISTRY, RegistryLog, run_together

docker_test = pytest.mark.docker

SIMPLE_DOCKERFILE = f'FROM {BUSYBOX}\nCOPY app.txt /app.txt\nCMD ["sh"]\n'


def _context(directory: Path, dockerfile: str = SIMPLE_DOCKERFILE, **files: str) -> Path:
    """A build context: the Dockerfile, an app.txt unique to this call, and ``files``
    (names with "__" for "/")."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    files.setdefault("app_txt", f"hello {uuid.uuid4().hex}\n")
    for name, content in files.items():
        path = directory / name.replace("__", "/").replace("_txt", ".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return directory


def _cache(client: docker.DockerClient, tmp_path: Path, run_id: str = "run-1") -> ImageCache:
    return ImageCache(client, cache_dir=tmp_path / "cache", run_id=run_id, mirror=REGISTRY)


class _CountingBuilds:
    """Wraps ``client.api.build`` to count the builds actually asked of the engine."""

    def __init__(self, client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = client.api.build

        def build(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(client.api, "build", build)


@pytest.fixture
def builds(docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch) -> _CountingBuilds:
    return _CountingBuilds(docker_client, monkeypatch)


@pytest.fixture
def built_images(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[None]:
    """Removes, afterwards, every image built from a context under this test's tmp_path."""
    yield
    root = str(tmp_path)
    for raw in docker_client.api.images(filters={"label": BUILD_KEY_LABEL}):
        context = str((raw.get("Labels") or {}).get(BUILD_CONTEXT_LABEL) or "")
        if context != root and not context.startswith(root + os.sep):
            continue
        for tag in raw.get("RepoTags") or []:
            if tag.startswith("pytest-containers/"):
                with contextlib.suppress(docker.errors.NotFound):
                    docker_client.api.remove_image(tag, force=True)


@pytest.fixture
def failed_build_progress(docker_client: docker.DockerClient) -> Iterator[list[BuildProgress]]:
    """Collects build progress; afterwards removes the step images those builds made.

    The classic builder keeps the steps before a failure as cache, untagged: nothing
    else would remove them."""
    progress: list[BuildProgress] = []
    yield progress
    for layer in reversed(_layers_made(progress)):
        with contextlib.suppress(docker.errors.APIError):
            docker_client.api.remove_image(layer, noprune=True)


def _inspect(client: docker.DockerClient, target: str) -> dict[str, Any]:
    attrs = inspect_image(client, target)
    assert attrs is not None
    return attrs


def _layers_made(progress: list[BuildProgress]) -> list[str]:
    """The image ids a build's steps made (not the base, not the cached ones)."""
    made: list[str] = []
    reused = False
    for report in progress:
        line = (report.line or "").strip()
        if line == "---> Using cache":
            reused = True
        elif line.startswith("---> ") and " " not in line[5:]:
            if not reused and not (report.step or "").partition(" : ")[2].startswith("FROM "):
                made.append(line[5:])
            reused = False
    return made


def _run(client: docker.DockerClient, image: str, script: str) -> str:
    # exec into a running container: the logs of one that has just exited can come back
    # empty (containers.run(remove=True) read them so, now and then, on this engine).
    container = client.containers.run(image, ["sleep", "60"], detach=True)
    try:
        output = container.exec_run(["sh", "-c", script]).output
    finally:
        container.remove(force=True)
    assert isinstance(output, bytes)
    return output.decode()


# -- .dockerignore, without an engine -----------------------------------------------------


def _excluded(patterns: str, path: str) -> bool:
    return Ignore(parse_dockerignore(patterns.encode(), "build:test")).excludes(path)


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        ("*.log", "a.log", True),
        ("*.log", "sub/a.log", False),  # "*" does not cross directories
        ("**/*.log", "sub/deep/a.log", True),
        ("**/*.log", "a.log", True),  # "**/" matches no directory too
        ("sub/**", "sub/x/y", True),
        ("sub", "sub/x/y", True),  # a directory takes what is under it
        ("/sub", "sub", True),  # a leading "/" means the context root
        ("./sub/", "sub/file", True),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("[a-c]x", "bx", True),
        ("[^a-c]x", "bx", False),
        ("\\*", "*", True),
        ("\\*", "x", False),
        ("*.log\n!keep.log", "keep.log", False),  # the last matching pattern wins
        ("!keep.log\n*.log", "keep.log", True),
        ("# *.log", "a.log", False),  # a comment
        ("  *.log  ", "a.log", True),  # surrounding blanks do not count
        ("\ufeff*.log", "a.log", True),  # a byte order mark is not part of the pattern
        ("*.log\r\n", "a.log", True),
        ("sub\n!sub/keep", "sub/keep", False),
        ("sub\n!sub/keep", "sub/other", True),
        ("a.b", "axb", False),  # regex characters are literal
    ],
)
def test_dockerignore_matches_as_docker_does(patterns: str, path: str, excluded: bool) -> None:
    assert _excluded(patterns, path) is excluded


def test_a_lone_exclamation_mark_is_an_error() -> None:
    with pytest.raises(ImageBuildError, match=r'lone "!"'):
        parse_dockerignore(b"!\n", "build:test")


def test_the_context_seen_honours_dockerignore(tmp_path: Path) -> None:
    context = _context(
        tmp_path / "ctx",
        a_txt="a",
        debug__log="x",
        secret__key="k",
        secret__keep_txt="keep",
        deep__a__b_txt="b",
        node_modules__x__y="y",
    )
    (context / "trace.log").write_text("t")
    (context / ".dockerignore").write_text(
        "# comment\n*.log\nsecret\n!secret/keep.txt\nnode_modules\nDockerfile\n.dockerignore\n"
    )
    source = Source.load(BuildSpec(context))
    seen = [entry.rel for entry in source.entries()]
    # The Dockerfile and .dockerignore always go; the re-included file comes without its
    # ignored directory; node_modules is not even walked.
    assert seen == [
        ".dockerignore",
        "Dockerfile",
        "a.txt",
        "app.txt",
        "debug",
        "debug/log",
        "deep",
        "deep/a",
        "deep/a/b.txt",
        "secret/keep.txt",
    ]


# -- the Dockerfile's base images, without an engine ----------------------------------------


def _bases(dockerfile: str, **spec: Any) -> list[tuple[str, str | None]]:
    instructions, escape = parse_instructions(dockerfile.split("\n"))
    found = find_bases(instructions, escape, BuildSpec(Path("/nonexistent"), **spec))
    return [(base.image, base.platform) for base in found]


def test_from_lines_are_resolved_unless_they_name_a_stage_or_scratch() -> None:
    dockerfile = (
        "# syntax=docker/dockerfile:1\n"
        "ARG TAG=1.35\n"
        "ARG UNSET\n"
        "FROM busybox:${TAG} AS Base\n"
        "RUN true\n"
        "FROM --platform=linux/arm64 redis:7 as other\n"
        "FROM base\n"
        "COPY --from=other /a /a\n"
        "COPY --from=0 /a /b\n"
        "COPY --chown=1:1 --from=alpine:3 /c /c\n"
        "FROM scratch\n"
        "FROM \\\n"
        "  registry.example.com/team/app@sha256:" + "a" * 64 + "\n"
        "FROM $NOT_DECLARED\n"
        "FROM busybox:${UNSET:-latest}\n"
    )
    assert _bases(dockerfile, platform="linux/amd64") == [
        ("busybox:1.35", "linux/amd64"),
        ("redis:7", "linux/arm64"),
        ("alpine:3", "linux/amd64"),
        ("registry.example.com/team/app@sha256:" + "a" * 64, "linux/amd64"),
        ("busybox:latest", "linux/amd64"),
    ]


def test_build_args_override_arg_defaults_in_from() -> None:
    dockerfile = "ARG TAG=1.35\nFROM busybox:$TAG\n"
    assert _bases(dockerfile, buildargs=(("TAG", "latest"),)) == [("busybox:latest", None)]


def test_stages_after_the_target_are_not_resolved() -> None:
    dockerfile = "FROM busybox:1.35 AS test\nRUN true\nFROM redis:7 AS prod\n"
    assert _bases(dockerfile, target="test") == [("busybox:1.35", None)]
    assert _bases(dockerfile) == [("busybox:1.35", None), ("redis:7", None)]


def test_escape_directive_changes_the_continuation_character() -> None:
    dockerfile = "# escape=`\nFROM `\n  busybox:1.35\nRUN echo a \\\n"
    assert _bases(dockerfile) == [("busybox:1.35", None)]


# -- the spec --------------------------------------------------------------------------


def test_from_kwargs_resolves_relative_paths_against_base_dir(tmp_path: Path) -> None:
    _context(tmp_path / "app")
    spec = BuildSpec.from_kwargs(
        "app", base_dir=tmp_path, buildargs={"B": "2", "A": "1"}, platform="Linux/x86_64"
    )
    assert spec.context == tmp_path / "app"
    assert spec.buildargs == (("A", "1"), ("B", "2"))
    assert spec.platform == "linux/amd64"
    assert spec.ref == "build:app"
    other = BuildSpec.from_kwargs(
        "./app/", base_dir=tmp_path, dockerfile="./Dockerfile", target="t"
    )
    assert other.ref == "build:app#t"
    assert other.dockerfile == "Dockerfile"
    assert spec == BuildSpec(
        tmp_path / "app", buildargs=(("B", "2"), ("A", "1")), platform=spec.platform
    )


def test_from_kwargs_names_a_missing_context(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="does not exist") as info:
        BuildSpec.from_kwargs("nowhere", base_dir=tmp_path)
    assert str(tmp_path / "nowhere") in info.value.message


def test_from_kwargs_names_a_missing_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    with pytest.raises(ImageBuildError, match="Dockerfile") as info:
        BuildSpec.from_kwargs(tmp_path / "app")
    assert "dockerfile=" in info.value.message
    _context(tmp_path / "app")
    with pytest.raises(ImageBuildError, match=r"Dockerfile\.test does not exist"):
        BuildSpec.from_kwargs(tmp_path / "app", dockerfile="Dockerfile.test")


def test_build_tag_is_a_valid_reference(tmp_path: Path) -> None:
    spec = BuildSpec(tmp_path / "My App_Dir!!")
    assert build_tag(spec, "ab" * 32) == "pytest-containers/my-app-dir:" + ("ab" * 10)
    assert build_tag(BuildSpec(tmp_path / "__"), "0" * 64).startswith("pytest-containers/context:")


# -- the key ---------------------------------------------------------------------------


def test_build_key_follows_what_the_builder_sees(tmp_path: Path) -> None:
    context = _context(tmp_path / "ctx", ignored__log="1")
    (context / ".dockerignore").write_text("*.log\nignored\n")
    spec = BuildSpec(context)
    key = build_key(spec)
    assert len(key) == 64
    assert build_key(spec) == key

    # Not: ignored files, mtimes.
    (context / "ignored" / "log").write_text("2")
    (context / "x.log").write_text("new")
    os.utime(context / "app.txt", (1_000_000, 1_000_000))
    assert build_key(spec) == key

    # Yes: the content, the Dockerfile, the executable bit, a symlink's target, a new
    # empty directory, the options, and the resolved base images.
    changes: list[Callable[[], object]] = [
        lambda: (context / "app.txt").write_text("changed"),
        lambda: (context / "Dockerfile").write_text(SIMPLE_DOCKERFILE + "ENV A=1\n"),
        lambda: (context / "app.txt").chmod(0o755),
        lambda: (context / "link").symlink_to("app.txt"),
        lambda: _relink(context / "link", "Dockerfile"),
        lambda: (context / "empty").mkdir(),
        lambda: (context / ".dockerignore").write_text("*.log\n"),
    ]
    seen = {key}
    for change in changes:
        change()
        new = build_key(spec)
        assert new not in seen
        seen.add(new)
    current = build_key(spec)
    for variant in (
        BuildSpec(context, target="base"),
        BuildSpec(context, buildargs=(("A", "1"),)),
        BuildSpec(context, buildargs=(("A", "2"),)),
        BuildSpec(context, platform="linux/arm64"),
    ):
        assert build_key(variant) not in seen
        seen.add(build_key(variant))
    assert build_key(spec, bases=["sha256:" + "1" * 64]) != current
    assert build_key(spec, bases=["sha256:" + "1" * 64]) != build_key(
        spec, bases=["sha256:" + "2" * 64]
    )


def _relink(link: Path, target: str) -> None:
    link.unlink()
    link.symlink_to(target)


def test_build_key_does_not_depend_on_where_the_context_is(tmp_path: Path) -> None:
    one = _context(tmp_path / "one", app_txt="same")
    two = _context(tmp_path / "two", app_txt="same")
    assert build_key(BuildSpec(one)) == build_key(BuildSpec(two))


# -- building --------------------------------------------------------------------------


@docker_test
@pytest.mark.usefixtures("built_images")
def test_builds_once_then_finds_the_image(
    docker_client: docker.DockerClient, tmp_path: Path, builds: _CountingBuilds
) -> None:
    context = _context(tmp_path / "app")
    spec = BuildSpec.from_kwargs(context)
    cache = _cache(docker_client, tmp_path)
    progress: list[BuildProgress] = []

    first = build_image(docker_client, cache, spec, on_progress=progress.append)
    assert first.source == "built"
    assert first.ref == "build:app"
    assert first.resolved_ref.startswith("pytest-containers/app:")
    assert first.digest is None
    assert builds.calls == 1
    content = (context / "app.txt").read_text()
    assert _run(docker_client, first.resolved_ref, "cat /app.txt") == content
    labels = _inspect(docker_client, first.id)["Config"]["Labels"]
    assert labels[BUILD_CONTEXT_LABEL] == str(context)
    assert first.resolved_ref.endswith(":" + labels[BUILD_KEY_LABEL][:20])

    steps = [p.step or "" for p in progress if p.line is None and not p.done]
    # FROM is shown as written, not as the image id the builder was given; the labels
    # are one step at the end.
    assert steps[:3] == [
        f"Step 1/4 : FROM {BUSYBOX}",
        "Step 2/4 : COPY app.txt /app.txt",
        'Step 3/4 : CMD ["sh"]',
    ]
    assert steps[3].startswith(f"Step 4/4 : LABEL {BUILD_KEY_LABEL}=")
    assert len(steps) == 4
    assert progress[-1].done

    again = build_image(docker_client, cache, spec)
    assert (again.source, again.id, again.resolved_ref) == ("present", first.id, first.resolved_ref)
    # A later run finds it too.
    later = build_image(docker_client, _cache(docker_client, tmp_path, run_id="run-2"), spec)
    assert (later.source, later.id) == ("present", first.id)
    assert builds.calls == 1

    (context / "app.txt").write_text("changed\n")
    changed = build_image(docker_client, cache, spec)
    assert changed.source == "built"
    assert changed.resolved_ref != first.resolved_ref
    assert builds.calls == 2
    assert _run(docker_client, changed.id, "cat /app.txt") == "changed\n"


@docker_test
@pytest.mark.usefixtures("built_images")
def test_the_image_holds_what_dockerignore_lets_through(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    context = _context(
        tmp_path / "ctx",
        f'FROM {BUSYBOX}\nCOPY . /ctx\nCMD ["sh"]\n',
        secret__key="k",
        secret__keep_txt="keep",
        debug_txt="d",
    )
    (context / "run.sh").write_text("#!/bin/sh\n")
    (context / "run.sh").chmod(0o755)
    (context / "link").symlink_to("app.txt")
    (context / ".dockerignore").write_text("secret\n!secret/keep.txt\ndebug.txt\nDockerfile\n")
    image = build_image(docker_client, _cache(docker_client, tmp_path), BuildSpec(context))
    listing = _run(
        docker_client, image.id, "cd /ctx && find . | sort && stat -c '%a' run.sh && readlink link"
    )
    # The engine drops an ignored Dockerfile from the context itself (as with the CLI).
    assert listing.split() == [
        ".",
        "./.dockerignore",
        "./app.txt",
        "./link",
        "./run.sh",
        "./secret",
        "./secret/keep.txt",
        "755",
        "app.txt",
    ]


@docker_test
def test_base_images_come_through_the_cache_only(
    docker_client: docker.DockerClient,
    tmp_path: Path,
    registry_log: RegistryLog,
    unique_image: Callable[[], str],
    built_images: None,  # after unique_image: the build goes before its base
) -> None:
    base = unique_image()  # in the registry, not in the engine
    context = _context(tmp_path / "ctx", f"FROM {base}\nCOPY app.txt /app.txt\n")
    progress: list[BuildProgress] = []
    spec = BuildSpec(context)
    image = build_image(
        docker_client,
        _cache(docker_client, tmp_path),
        spec,
        on_progress=progress.append,
    )
    lines = [p.line for p in progress if p.line]
    assert image.source == "built"
    # One pull, the cache's; the builder asked no registry at all (Docker Hub is not
    # reachable here: had it tried, the build would have failed).
    assert registry_log.manifest_requests(base) == 1
    assert not [line for line in lines if "Pulling" in line or "docker.io" in line]
    assert progress[0].step == f"Step 1/3 : FROM {base}"
    name = base.partition(":")[0]
    assert _run(docker_client, image.id, "cat /etc/image-id") == name
    cached = build_image(docker_client, _cache(docker_client, tmp_path), spec)
    assert cached.id == image.id


@docker_test
@pytest.mark.usefixtures("built_images")
def test_a_new_base_image_means_a_new_build(
    docker_client: docker.DockerClient, tmp_path: Path, builds: _CountingBuilds
) -> None:
    context = _context(tmp_path / "ctx", "ARG TAG\nFROM busybox:$TAG\nCOPY app.txt /\n")
    cache = _cache(docker_client, tmp_path)
    one = build_image(docker_client, cache, BuildSpec(context, buildargs=(("TAG", "1.35"),)))
    # The seed tags name the same image: same base id, so only the build arg differs.
    two = build_image(docker_client, cache, BuildSpec(context, buildargs=(("TAG", "latest"),)))
    assert one.resolved_ref != two.resolved_ref
    assert builds.calls == 2
    spec = BuildSpec(context, buildargs=(("TAG", "1.35"),))
    base_id = _inspect(docker_client, f"{REGISTRY}/library/{BUSYBOX}")["Id"]
    assert one.resolved_ref == build_tag(spec, build_key(spec, bases=[base_id]))
    assert build_key(spec, bases=[base_id]) != build_key(spec, bases=["sha256:" + "0" * 64])


@docker_test
@pytest.mark.usefixtures("built_images")
def test_multi_stage_and_external_copy_from(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    dockerfile = (
        f"FROM {BUSYBOX} AS base\n"
        "COPY app.txt /app.txt\n"
        "FROM base AS test\n"
        f"COPY --from={BUSYBOX} /bin/busybox /copied-busybox\n"
        "RUN echo test > /stage\n"
        "FROM base\n"
        "RUN echo final > /stage\n"
    )
    context = _context(tmp_path / "ctx", dockerfile)
    cache = _cache(docker_client, tmp_path)
    final = build_image(docker_client, cache, BuildSpec(context), labels={"team": "qa $x"})
    assert _inspect(docker_client, final.id)["Config"]["Labels"]["team"] == "qa $x"
    assert _run(docker_client, final.id, "cat /stage /app.txt").startswith("final\nhello ")
    test = build_image(docker_client, cache, BuildSpec(context, target="test"))
    assert test.ref == "build:ctx#test"
    assert _run(docker_client, test.id, "cat /stage; test -f /copied-busybox && echo ok") == (
        "test\nok\n"
    )
    labels = _inspect(docker_client, test.id)["Config"]["Labels"]
    assert labels[BUILD_CONTEXT_LABEL] == str(context)


@docker_test
@pytest.mark.usefixtures("built_images")
def test_a_dockerfile_outside_the_context(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    context = _context(tmp_path / "ctx")
    (tmp_path / "Dockerfile.other").write_text(f"FROM {BUSYBOX}\nCOPY . /ctx\n")
    spec = BuildSpec.from_kwargs(context, dockerfile="../Dockerfile.other")
    image = build_image(docker_client, _cache(docker_client, tmp_path), spec)
    assert _run(docker_client, image.id, "ls -A /ctx").split() == ["Dockerfile", "app.txt"]


@docker_test
@pytest.mark.usefixtures("built_images")
def test_a_context_changing_while_read_is_read_again(
    docker_client: docker.DockerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = _context(tmp_path / "ctx")
    original = _build_context.compute_key
    calls = 0

    def compute_then_edit(*args: Any) -> str:
        # The file changes between the key and the tarball, once.
        nonlocal calls
        calls += 1
        key = original(*args)
        if calls == 1:
            (context / "app.txt").write_text("edited meanwhile\n")
        return key

    monkeypatch.setattr(_build, "compute_key", compute_then_edit)
    image = build_image(docker_client, _cache(docker_client, tmp_path), BuildSpec(context))
    assert calls == 2
    assert _run(docker_client, image.id, "cat /app.txt") == "edited meanwhile\n"
    assert image.resolved_ref == build_tag(
        BuildSpec(context), _inspect(docker_client, image.id)["Config"]["Labels"][BUILD_KEY_LABEL]
    )


@docker_test
def test_a_context_that_keeps_changing_is_an_error(
    docker_client: docker.DockerClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    builds: _CountingBuilds,
) -> None:
    context = _context(tmp_path / "ctx")
    original = _build_context.compute_key

    def compute_then_edit(*args: Any) -> str:
        key = original(*args)
        (context / "app.txt").write_text(uuid.uuid4().hex)
        return key

    monkeypatch.setattr(_build, "compute_key", compute_then_edit)
    with pytest.raises(ImageBuildError, match="changed each of 3 times"):
        build_image(docker_client, _cache(docker_client, tmp_path), BuildSpec(context))
    assert builds.calls == 0


@docker_test
@pytest.mark.usefixtures("built_images")
def test_a_failing_step_raises_with_the_step_and_the_log(
    docker_client: docker.DockerClient,
    tmp_path: Path,
    builds: _CountingBuilds,
    failed_build_progress: list[BuildProgress],
) -> None:
    dockerfile = f"FROM {BUSYBOX}\nCOPY app.txt /\nRUN echo doomed-line; false\nCMD sh\n"
    context = _context(tmp_path / "ctx", dockerfile)
    spec = BuildSpec(context)
    cache = _cache(docker_client, tmp_path)
    report = failed_build_progress.append
    with pytest.raises(ImageBuildError) as info:
        build_image(docker_client, cache, spec, on_progress=report)
    error = info.value
    assert error.step == "Step 3/5 : RUN echo doomed-line; false"
    assert "returned a non-zero code: 1" in error.message
    assert "doomed-line" in error.log_tail
    assert error.image == "build:ctx"
    assert len(error.log_tail.splitlines()) <= 20
    # No chained traceback under it.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    # The rest of the run gets the same error without building again; a new run retries.
    with pytest.raises(ImageBuildError) as again:
        build_image(docker_client, cache, spec, on_progress=report)
    assert again.value.step == error.step
    assert builds.calls == 1
    other_run = _cache(docker_client, tmp_path, run_id="run-2")
    with pytest.raises(ImageBuildError):
        build_image(docker_client, other_run, spec, on_progress=report)
    assert builds.calls == 2


@docker_test
@pytest.mark.usefixtures("built_images")
def test_a_dockerfile_syntax_error_raises(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    context = _context(tmp_path / "ctx", f"FROM {BUSYBOX}\nCOPPY app.txt /\n")
    with pytest.raises(ImageBuildError, match="unknown instruction: COPPY") as info:
        build_image(docker_client, _cache(docker_client, tmp_path), BuildSpec(context))
    assert "line 2" in info.value.message  # the line numbers are the user's
    missing = BuildSpec(context, target="nope")
    (context / "Dockerfile").write_text(SIMPLE_DOCKERFILE)
    with pytest.raises(ImageBuildError, match="target nope"):
        build_image(docker_client, _cache(docker_client, tmp_path), missing)


@docker_test
def test_an_invalid_base_reference_raises_before_building(
    docker_client: docker.DockerClient, tmp_path: Path, builds: _CountingBuilds
) -> None:
    context = _context(tmp_path / "ctx", "FROM BusyBox:1\n")
    with pytest.raises(ImageBuildError, match="lowercase") as info:
        build_image(docker_client, _cache(docker_client, tmp_path), BuildSpec(context))
    assert "line 1" in info.value.message
    assert builds.calls == 0


# Each child is an xdist worker (or another run) in miniature: its own client and cache,
# the shared cache directory; all wait for a "go" file so that their builds coincide.
_CHILD = """
import json, sys, time
from pathlib import Path
import docker
from pytest_containers._images.build import BuildSpec, build_image
from pytest_containers._images.cache import ImageCache

cfg = json.loads(sys.argv[1])
client = docker.from_env(timeout=120)
cache = ImageCache(client, cache_dir=Path(cfg["cache_dir"]), run_id=cfg["run_id"],
                   mirror=cfg["mirror"])
cache.engine_id
print("ready", flush=True)
go = Path(cfg["go"])
while not go.exists():
    time.sleep(0.002)
image = build_image(client, cache, BuildSpec(Path(cfg["context"])))
print(json.dumps({"source": image.source, "id": image.id}), flush=True)
"""


@docker_test
@pytest.mark.usefixtures("built_images")
def test_concurrent_processes_build_once(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    context = _context(tmp_path / "ctx", SIMPLE_DOCKERFILE + "RUN sleep 1\n")
    configs = [
        {
            "cache_dir": str(tmp_path / "cache"),
            "run_id": f"run-{index % 2}",  # two runs, two workers each
            "mirror": REGISTRY,
            "context": str(context),
        }
        for index in range(4)
    ]
    results = run_together(_CHILD, configs, tmp_path / "go", timeout=120)
    assert sorted(result["source"] for result in results) == [
        "built",
        "present",
        "present",
        "present",
    ]
    assert len({result["id"] for result in results}) == 1


# -- pruning ---------------------------------------------------------------------------


@docker_test
@pytest.mark.usefixtures("built_images")
def test_prune_removes_other_versions_of_the_kept_builds(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    cache = _cache(docker_client, tmp_path)
    context = _context(tmp_path / "ctx")
    other = _context(tmp_path / "other")
    old = build_image(docker_client, cache, BuildSpec(context))
    unrelated = build_image(docker_client, cache, BuildSpec(other))
    (context / "app.txt").write_text("new\n")
    new = build_image(docker_client, cache, BuildSpec(context))

    removed = prune_stale_builds(docker_client, keep=[new.resolved_ref])
    assert removed == [old.resolved_ref]
    assert _tags(docker_client) >= {new.resolved_ref, unrelated.resolved_ref}
    assert old.resolved_ref not in _tags(docker_client)
    assert prune_stale_builds(docker_client, keep=[new.resolved_ref]) == []


@docker_test
@pytest.mark.usefixtures("built_images")
def test_prune_without_context_knowledge_keeps_the_newest(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    cache = _cache(docker_client, tmp_path)
    context = _context(tmp_path / "ctx")
    versions = []
    for content in ("1", "2", "3"):
        (context / "app.txt").write_text(content)
        versions.append(build_image(docker_client, cache, BuildSpec(context)))
    # Everything under tmp_path only: other runs' builds are not this test's to remove.
    assert prune_stale_builds(docker_client, keep_newest=1, older_than=3600, under=tmp_path) == []
    # A container holds the oldest: it is skipped, not forced away.
    holder = docker_client.containers.create(versions[0].resolved_ref, ["true"])
    try:
        removed = prune_stale_builds(docker_client, keep_newest=1, under=tmp_path)
    finally:
        holder.remove(force=True)
    assert removed == [versions[1].resolved_ref]
    tags = _tags(docker_client)
    assert {versions[0].resolved_ref, versions[2].resolved_ref} <= tags


def _tags(client: docker.DockerClient) -> set[str]:
    return {
        tag
        for raw in client.api.images(filters={"label": BUILD_KEY_LABEL})
        for tag in raw.get("RepoTags") or []
    }
