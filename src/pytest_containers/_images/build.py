"""Images built from a Dockerfile: once per content, whoever asks, however often.

A build is named by its **key**, a SHA-256 of everything that decides what the builder
produces: every file of the context that ``.dockerignore`` lets through (path, content,
permission bits, symlink target; never mtimes), the Dockerfile, the target, the build
args, the platform, and the image ids its base images resolved to. The image is tagged
``pytest-containers/<context dir name>:<key prefix>``, so "is it built?" is one inspect,
and a context that did not change is not built again, in this run or a later one.

The build itself happens at most once per key across threads, xdist workers and
concurrent runs, by the recipe pulls follow too
(:class:`~pytest_containers._base.once.OncePerRun`): the builder takes
``<cache>/builds/<engine, key>.lock`` and looks for the tag again before building. A
failure is recorded next to the lock with the run id, so the other workers of the same
run re-raise it instead of building again, while a later run tries afresh.

Base images never come from the builder's own pulls: the ``FROM`` lines (and
``COPY --from=<image>``) are resolved through the :class:`ImageCache` (pull policy,
mirror and pins apply, and a pull is shared with everyone else), and the Dockerfile sent
to the engine names them by image id (``FROM sha256:…``), which the classic builder
takes from the engine's store without asking any registry.

This module builds and prunes; what it builds from lives next to it:
:mod:`~pytest_containers._images.context` (the spec, the key, the tarball, made from one
file list so the key and the build agree), :mod:`~pytest_containers._images.dockerignore` (which
files the builder sees) and :mod:`~pytest_containers._images.dockerfile` (the base images and
the Dockerfile as sent).

pytest-free: the plugin hands in the client and the image cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import docker.errors
import requests

from pytest_containers._base.image import Image
from pytest_containers._base.locks import key_path, private_subdir
from pytest_containers._base.once import OncePerRun
from pytest_containers._engine.connection import docker_time
from pytest_containers._engine.streams import EngineStream
from pytest_containers._images.context import (
    ATTEMPTS,
    BuildSpec,
    ContextChanged,
    Source,
    build_key,
    compute_key,
    keeps_changing,
    write_context,
)
from pytest_containers._images.dockerfile import (
    Base,
    Rewrite,
    find_bases,
    parse_instructions,
    split_lines,
    target_end,
)
from pytest_containers._images.pull import inspect_image
from pytest_containers.errors import (
    ContainerError,
    ImageBuildError,
    ImagePullError,
    ImageReferenceError,
)

if TYPE_CHECKING:
    import docker

    from pytest_containers._images.cache import ImageCache

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
_NAME_MAX = 64


# -- base images ------------------------------------------------------------------------


def _resolve_bases(
    cache: ImageCache, spec: BuildSpec, source: Source, bases: Sequence[Base]
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


def _plan(cache: ImageCache, spec: BuildSpec) -> tuple[Source, list[Image], Rewrite]:
    source = Source.load(spec)
    text = source.dockerfile.decode("utf-8", errors="surrogateescape")
    instructions, escape = parse_instructions(split_lines(text))
    bases = find_bases(instructions, escape, spec)
    images = _resolve_bases(cache, spec, source, bases)
    return (
        source,
        images,
        Rewrite(bases, images, escape=escape, label_after=target_end(instructions, spec.target)),
    )


# -- keys and tags ----------------------------------------------------------------------


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
    for _ in range(ATTEMPTS):
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
        except ContextChanged:
            continue
    raise keeps_changing(spec)


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
    key = compute_key(source, base_ids)
    job = _Job(client, spec, source, base_ids, rewrite, key, labels, on_progress)
    builds = private_subdir(cache_dir, "builds")
    once = OncePerRun(
        key_path(builds, cache.engine_id, key, suffix=".lock"),
        key_path(builds, cache.engine_id, key, suffix=".json"),
        run_id=cache.run_id,
        timeout=lock_timeout,
        what=f"the build of {spec.ref}",
        about={"tag": job.tag},
    )
    image_id, built = once.get(
        find=lambda: _image_id(client, job.tag),
        make=job.build,
        describe=lambda image_id: {"image_id": image_id},
        failure=_failure_fields,
        replay=lambda fields: _recorded_error(fields, spec),
    )
    if built:
        # Checked after the build's record: no failure of the build, the next asker builds.
        after = _image_id(client, job.tag)
        if after is None:
            raise ImageBuildError(
                f"the engine built {spec.ref} but has no image {job.tag} right after",
                image=spec.ref,
            )
        image_id = after
    return Image(
        ref=spec.ref,
        resolved_ref=job.tag,
        id=image_id,
        digest=None,
        platform=spec.platform,
        source="built" if built else "present",
        seconds=time.monotonic() - started,
    )


def _image_id(client: docker.DockerClient, tag: str) -> str | None:
    attrs = inspect_image(client, tag)
    return None if attrs is None else str(attrs["Id"])


@dataclass
class _Job:
    """One build of ``spec`` under its ``key``: what it is built from, with which labels,
    and who hears of its progress."""

    client: docker.DockerClient
    spec: BuildSpec
    source: Source
    base_ids: list[str]
    rewrite: Rewrite
    key: str
    labels: Mapping[str, str]
    on_progress: Callable[[BuildProgress], None] | None

    @property
    def tag(self) -> str:
        return build_tag(self.spec, self.key)

    def build(self) -> str:
        """Write the context and build it; the image id. Raises :class:`ContextChanged`
        when a file changed since the key was computed."""
        spec, rewrite = self.spec, self.rewrite
        labels = {
            **self.labels,
            BUILD_KEY_LABEL: self.key,
            BUILD_CONTEXT_LABEL: str(spec.context),
            BUILD_SPEC_LABEL: _spec_digest(spec, self.source.dockerfile_name),
        }
        rewrite.labels = {k: v for k, v in labels.items() if rewrite.can_label(k, v)}
        api_labels = {k: v for k, v in labels.items() if k not in rewrite.labels}
        with tempfile.TemporaryFile(prefix="pytest-containers-context-") as context:
            if write_context(self.source, self.base_ids, rewrite, context) != self.key:
                raise ContextChanged(str(spec.context))  # changed since the key: again
            return _run_build(self, context, api_labels)


class _Log:
    """Follows the build output: the current step, the last lines, progress reports."""

    def __init__(
        self,
        spec: BuildSpec,
        tag: str,
        rewrite: Rewrite,
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


def _run_build(job: _Job, context: IO[bytes], labels: Mapping[str, str]) -> str:
    """Run the classic builder on the tarball; returns the image id."""
    client, spec = job.client, job.spec
    log = _Log(spec, job.tag, job.rewrite, job.on_progress)
    stream = EngineStream(client)
    finished = False
    try:
        entries = stream.open(
            lambda: client.api.build(
                fileobj=context,
                custom_context=True,
                tag=job.tag,
                dockerfile=job.source.dockerfile_name,
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
        )
        image_id = _follow(entries, spec, log)
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
        if not finished:
            stream.abort()  # the engine cancels a build whose client went away
    if image_id is None:
        image_id = _image_id(client, job.tag)
        if image_id is None:
            raise _step_failed(spec, log, "the engine ended the build without an image")
    log.done()
    return image_id


def _follow(entries: Iterable[object], spec: BuildSpec, log: _Log) -> str | None:
    """Feed the builder's output to ``log``, raising at an error; the image id the
    builder announced, if it did."""
    image_id: str | None = None
    for entry in entries:
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
    return image_id


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


def _failure_fields(error: ContainerError) -> dict[str, object] | None:
    """What the state file keeps of a failed build for the rest of the run."""
    if not isinstance(error, ImageBuildError):
        return None
    return {"message": error.message, "step": error.step, "log_tail": error.log_tail}


def _recorded_error(error: Mapping[str, object], spec: BuildSpec) -> ImageBuildError:
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
    kept_out: list[tuple[str, str]] | None = None,
) -> list[str]:
    """Remove built images (``pytest-containers/<name>:<key>``) that are out of date;
    returns the tags removed, and appends ``(tag, why)`` to ``kept_out`` for each build
    considered but kept.

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
    built = _list_builds(client)
    if under is not None:
        root = os.path.abspath(under)
        built = [
            item
            for item in built
            if item.context == root or item.context.startswith(root.rstrip(os.sep) + os.sep)
        ]
    if keep_newest is not None or older_than is not None:
        candidates, spared = _by_age(built, keep_newest=keep_newest, older_than=older_than)
        if kept_out is not None:
            kept_out += spared
    else:
        groups_kept = {item.group for item in built if _kept(item, keep_set)}
        candidates = [item for item in built if item.group in groups_kept]
    removed: list[str] = []
    for item in candidates:
        if not _kept(item, keep_set) and _remove_build(client, item, kept_out):
            removed.append(item.tag)
    return removed


def _kept(item: _Built, keep: set[str]) -> bool:
    """Whether ``keep`` names the build, by its tag, its key or its tag's key prefix."""
    return item.tag in keep or any(
        item.key == k or item.tag.rpartition(":")[2] == k[:TAG_KEY_CHARS]
        for k in keep
        if ":" not in k
    )


def _by_age(
    built: Iterable[_Built], *, keep_newest: int | None, older_than: float | None
) -> tuple[list[_Built], list[tuple[str, str]]]:
    """The builds to prune by age, grouped by what was built, and ``(tag, why)`` of
    those spared."""
    groups: dict[str, list[_Built]] = {}
    for item in built:
        groups.setdefault(item.group, []).append(item)
    now = time.time()
    candidates: list[_Built] = []
    spared: list[tuple[str, str]] = []
    newest = max(keep_newest or 0, 0)
    for items in groups.values():
        items.sort(key=lambda item: item.created, reverse=True)
        spared += [(item.tag, "the newest build of its context") for item in items[:newest]]
        for item in items[newest:]:
            if older_than is None or now - item.created >= older_than:
                candidates.append(item)
            else:
                spared.append((item.tag, f"built less than {older_than / 3600:g} h ago"))
    return candidates, spared


def _remove_build(
    client: docker.DockerClient, item: _Built, kept_out: list[tuple[str, str]] | None
) -> bool:
    """Remove the build's tag; whether it was removed (by this call)."""
    try:
        client.api.remove_image(item.tag, force=False, noprune=False)
    except docker.errors.NotFound:
        return False  # someone else pruned it
    except docker.errors.APIError as error:
        if error.status_code == 409:
            # A container uses it: it is not stale to that container.
            if kept_out is not None:
                kept_out.append((item.tag, "used by a container"))
            return False
        raise ContainerError(
            f"cannot remove the stale build {item.tag}: {error.explanation or error}"
        ) from None
    return True


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


def _created(client: docker.DockerClient, image_id: str, fallback: float) -> float:
    """When the image was created, to the nanosecond the list call rounds to seconds."""
    attrs = inspect_image(client, image_id)
    created = docker_time((attrs or {}).get("Created"))
    return fallback if created is None else created
